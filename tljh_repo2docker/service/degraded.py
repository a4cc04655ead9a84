"""What the service says when a part it needs is missing, and the service it
runs when it cannot start at all.

A managed service that exits at start takes JupyterHub down with it (the hub
exits, and its proxy then answers 404 to every user, even those whose
servers run). So every start-up failure becomes this degraded service: it
listens where the hub expects it, answers 503 with the reason, and keeps
trying to start for real when the cause may go away by itself.

The service stays in the hub's life cycle (rather than a systemd unit of its
own): the hub gives it its URL, API token and OAuth client, routes the proxy
to it and restarts it; a degraded service keeps those benefits and tells
people why instead of taking the hub down or answering a bare 502.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiodocker
from sqlalchemy import exc as sa_exc
from tornado import web
from tornado.httpserver import HTTPServer

from ..catalogue import DockerUnavailable

log = logging.getLogger("tljh_repo2docker.service")

NO_DOCKER = (
    "the Docker engine is not available ({detail}); environments cannot be listed, "
    "built or removed until it runs (is Docker installed and started?)"
)
DB_LOCKED = (
    "the service's database is locked by another process; nothing was changed, "
    "try again in a moment"
)
DB_UNAVAILABLE = "the service's database is not available; an administrator should see its log"


class Unavailable(RuntimeError):
    """A part the service needs (Docker, the database) is missing: HTTP 503."""


def docker_missing(detail: str) -> Unavailable:
    return Unavailable(NO_DOCKER.format(detail=detail))


def is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.OperationalError) and "locked" in str(exc.orig).lower()


def reason(exc: BaseException | None) -> str | None:
    """The message for people when ``exc`` means 'a part is unavailable'
    (answer 503), else None (a real error: 500)."""
    if isinstance(exc, Unavailable):
        return str(exc)
    if isinstance(exc, DockerUnavailable):
        return NO_DOCKER.format(detail=str(exc)[:300])
    if isinstance(exc, aiodocker.DockerError) and exc.status == 900:
        # aiodocker's status for "could not connect"
        return NO_DOCKER.format(detail=str(exc.message)[:300])
    if isinstance(exc, asyncio.TimeoutError):
        return NO_DOCKER.format(detail="it did not answer in time")
    if is_locked(exc):
        return DB_LOCKED
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return DB_UNAVAILABLE
    return None


def describe_startup_failure(exc: BaseException) -> str:
    """One line for the 503 of a service that could not start."""
    if isinstance(exc, sa_exc.SQLAlchemyError) and not is_locked(exc):
        orig = getattr(exc, "orig", None) or exc
        detail = str(orig).strip().splitlines()[0][:200] if str(orig).strip() else "unknown"
        return (
            f"the service's database cannot be opened or migrated ({detail}); an administrator "
            "must repair or move it (see db_url); the service then starts by itself"
        )
    known = reason(exc)
    if known:
        return known
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return f"the environments service could not start: {text}"


# --- the degraded service ------------------------------------------------------------
class DegradedHandler(web.RequestHandler):
    """Every path: 503 with the reason (JSON for the API and health, else a page)."""

    def initialize(self, state: dict):
        self.state = state

    def check_xsrf_cookie(self):
        return None  # nothing here changes anything

    def _answer(self, *args, **kwargs):
        message = self.state["reason"]
        self.set_status(503)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Retry-After", "30")
        path = self.request.path[len(self.state["prefix"]) :]
        if path.startswith("api/"):
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"status": 503, "message": message}))
        elif path.rstrip("/") == "health":
            self.set_header("Content-Type", "application/json; charset=utf-8")
            check = {"ok": False, "message": message}
            self.finish(json.dumps({"ok": False, "checks": {"startup": check}}))
        else:
            if path == "" and self.request.method in ("GET", "HEAD"):
                # JupyterHub checks that a managed service is up by a GET of
                # its prefix, and exits when it answers 5xx for a while; so
                # this page answers 200 (it says what is wrong all the same)
                self.set_status(200)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Content-Security-Policy", "default-src 'none'")
            self.finish(
                "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                "<title>Environments unavailable</title></head><body>"
                "<h1>Environments are unavailable</h1>"
                f"<p role='alert'>{html.escape(message)}</p>"
                "<p>The hub and running servers are not affected.</p></body></html>"
            )

    get = post = put = patch = delete = head = _answer


async def serve(
    bind_url: str,
    prefix: str,
    message: str,
    retry: Callable[[], Awaitable[bool]] | None = None,
    retry_every: float = 10.0,
    stop: asyncio.Event | None = None,
) -> bool:
    """Answer 503 with ``message`` until stopped (False) or until ``retry()``
    starts the real service (True; the port is free again by then)."""
    state = {"reason": message, "prefix": prefix}
    app = web.Application([(r"/.*", DegradedHandler, {"state": state})])
    url = urlsplit(bind_url)
    server = HTTPServer(app, xheaders=True)
    server.listen(url.port or 80, url.hostname or "127.0.0.1")
    log.error("environments service degraded (answering 503): %s", message)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), retry_every if retry else None)
            except asyncio.TimeoutError:
                pass
            if retry is None or stop.is_set():
                continue
            try:
                ready = await retry()
            except Exception as e:  # still failing: say the newest reason
                state["reason"] = describe_startup_failure(e)
                log.warning("still degraded: %s", state["reason"])
                continue
            if ready:
                return True
        return False
    finally:
        server.stop()
        await server.close_all_connections()
