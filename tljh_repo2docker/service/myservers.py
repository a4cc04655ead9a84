"""My servers: the logged-in user's own servers, and start, stop, delete.

- ``GET <prefix>servers``: the current user's servers (never anyone else's:
  the name comes from the login, not from the request), with the environment
  and version each one runs (or will run when started again), its status and
  last activity.
- ``POST <prefix>servers`` with ``action`` (start, stop, delete) and
  ``server``: asks the hub with the service's own token (``admin:servers``),
  then redirects back (the outcome travels in a signed cookie); an error is
  shown on the page instead.

Stopped servers are listed too (``?include_stopped_servers``): JupyterHub
keeps a stopped named server, with its last ``user_options``, until it is
deleted. That is also what the idle culler TLJH runs leaves behind (unless
``services.cull.remove_named_servers`` is set): a culled server shows as
stopped and Start brings it back in the same environment. Deleting a server
removes it from the hub only; the spawner keeps nothing else, and the home
directory is a bind mount that stays.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone

import aiodocker
import yaml
from tornado import web

from .. import labels, tljhconfig
from .pages import PageHandler

log = logging.getLogger(__name__)

FLASH_COOKIE = "tljh-r2d-servers-flash"
ACTIONS = ("start", "stop", "delete")
_COMMIT12_RE = re.compile(r"[0-9a-f]{7,64}")
# TLJH's defaults for its idle culler (tljh/configurer.py)
CULL_DEFAULTS = {"enabled": True, "timeout": 600, "remove_named_servers": False}


class ActionError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def server_label(name: str) -> str:
    return name or "default"


def quoted(name: str) -> str:
    return f"\u201c{server_label(name)[:100]}\u201d"


def status_of(model: dict) -> str:
    """running, starting, stopping or stopped (from the hub's server model)."""
    if model.get("ready"):
        return "running"
    pending = model.get("pending")
    if pending == "spawn":
        return "starting"
    if pending == "stop":
        return "stopping"
    if pending:
        return str(pending)
    return "stopped"


def parse_time(value) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """'just now', '5 minutes ago', '3 hours ago', '2 days ago'."""
    if when is None:
        return ""
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - when).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def start_options(environment: str, pinned: str) -> dict:
    """The hub's /spawn query that starts a server as it was, without the form
    (the picker's field names: environment, version-<environment>)."""
    if not environment:
        return {}
    return {"environment": environment, **({f"version-{environment}": pinned} if pinned else {})}


def tag_parts(tag: str) -> tuple[str, str]:
    """(repository, commit) of an image tag such as ``prefix/env:0123456789ab``;
    commit is '' when the tag does not end with one."""
    repo, sep, version = tag.rpartition(":")
    if not sep or "/" in version or not _COMMIT12_RE.fullmatch(version):
        return tag, ""
    return repo, version


def culler_settings(path: str | None = None) -> dict | None:
    """TLJH's idle culler settings (``services.cull`` in config.yaml, with
    TLJH's defaults), or None when it is disabled."""
    settings = dict(CULL_DEFAULTS)
    try:
        with open(path or tljhconfig.config_file(), encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        cull = (data.get("services") or {}).get("cull") or {}
        if isinstance(cull, dict):
            settings.update(cull)
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    if not settings.get("enabled"):
        return None
    try:
        minutes = max(1, round(int(settings.get("timeout") or 600) / 60))
    except (TypeError, ValueError):
        minutes = 10
    return {"minutes": minutes, "removes_named": bool(settings.get("remove_named_servers"))}


class MyServersPage(PageHandler):
    """The current user's servers. Only a login is needed (every user may
    read environments); everything acts on ``self.username`` alone."""

    @web.authenticated
    async def get(self):
        self.require_read()
        await self.show()

    @web.authenticated
    async def post(self):
        self.require_read()
        action = self.get_body_argument("action", "")
        name = self.get_body_argument("server", "")
        try:
            if action not in ACTIONS:
                raise ActionError(400, "Unknown action.")
            message = await self.act(action, name)
        except ActionError as e:
            await self.show(error=str(e), status=e.status)
            return
        self.set_secure_cookie(  # set_signed_cookie in tornado >= 6.3
            FLASH_COOKIE, message, expires_days=None, path=self.service.service_prefix
        )
        self.redirect(self.service.service_prefix + "servers")

    # --- reading ----------------------------------------------------------------
    def pop_flash(self) -> str | None:
        raw = self.get_secure_cookie(FLASH_COOKIE, max_age_days=1)
        if raw is None:
            return None
        self.clear_cookie(FLASH_COOKIE, path=self.service.service_prefix)
        return raw.decode("utf-8", errors="replace")

    async def containers(self) -> dict[str, dict]:
        """This user's server containers by server name (labels and image)."""
        settings = self.service.settings
        filters = {
            "label": [
                f"{labels.HUB}={settings.hub_name}",
                f"{labels.SERVER}=true",
                f"{labels.USER}={self.username}",
            ]
        }
        try:
            found = await self.service.docker.containers.list(all=True, filters=filters)
        except (aiodocker.DockerError, OSError) as e:
            log.warning("cannot list %s's containers: %s", self.username, e)
            return {}
        by_name = {}
        for c in found:
            c_labels = c._container.get("Labels") or {}
            if c_labels.get(labels.USER) != self.username:
                continue
            by_name[c_labels.get(labels.SERVER_NAME, "")] = {
                "environment": c_labels.get(labels.ENVIRONMENT, ""),
                "image": c._container.get("Image", ""),
            }
        return by_name

    async def list_servers(self) -> list[dict]:
        servers = await self.service.hub.user_servers(self.username)
        try:
            images = await self.service.catalogue.images()
        except Exception as e:  # Docker down: the hub's view is still worth showing
            log.warning("cannot list images: %s", e)
            images = []
        by_tag = {info.image: info for info in images}
        newest = {info.environment: info for info in labels.latest_per_environment(images)}
        containers = await self.containers()
        now = datetime.now(timezone.utc)
        models = [
            self.server_model(name, model, containers.get(name), by_tag, newest, now)
            for name, model in servers.items()
            if isinstance(model, dict)
        ]
        models = [m for m in models if m is not None]
        # the default server first, then by name
        return sorted(models, key=lambda m: (not m["default"], m["name"]))

    def server_model(self, name, model, container, by_tag, newest, now) -> dict | None:
        status = status_of(model)
        options = model.get("user_options")
        options = options if isinstance(options, dict) else {}
        if not name and status == "stopped" and not options:
            # the hub's placeholder for a default server never started
            return None
        environment = options.get("environment")
        environment = environment if isinstance(environment, str) else ""
        pinned = options.get("version")
        pinned = pinned if isinstance(pinned, str) else ""
        image = options.get("image")
        image = image if isinstance(image, str) else ""
        if container and status != "stopped":
            # what really runs wins over what was asked for
            environment = container["environment"] or environment
            image = container["image"] or image
            pinned = ""
        info = by_tag.get(image) if image else None
        if info is not None:
            environment = environment or info.environment
        commit = info.commit if info else tag_parts(image)[1] if image else ""
        if not environment and image:
            # an image tag of ours: <image_prefix><environment>:<commit12>
            repo = tag_parts(image)[0]
            prefix = self.service.settings.image_prefix
            environment = repo[len(prefix) :] if prefix and repo.startswith(prefix) else ""
        current = newest.get(environment)
        if commit:
            version = commit[:12]
            if current is None:
                note = ""
            elif current.commit.startswith(commit):
                note = "newest"
            else:
                note = "older build"
        elif pinned:
            version, note = pinned[:12], "pinned"
        elif current is not None:
            version, note = current.short_commit, "newest"
        else:
            version, note = "", ""
        last = parse_time(model.get("last_activity"))
        title = model.get("display_name")
        # a launch link's server: named after its repository's slug, shown
        # by the repository's own name (the environment's display name)
        project = options.get("project")
        launched = isinstance(project, str) and bool(project)
        return {
            "name": name,
            "label": server_label(name),
            "title": title if isinstance(title, str) and title not in ("", name) else "",
            "default": not name,
            "launched": launched,
            "status": status,
            "url": model.get("url") or "",
            "environment": environment,
            "display_name": current.display_name if current else "",
            "environment_gone": bool(environment) and current is None,
            "image": image,
            "version": version,
            "version_note": note,
            "last_activity": last.strftime("%Y-%m-%d %H:%M UTC") if last else "",
            "last_activity_iso": last.isoformat(timespec="seconds") if last else "",
            "last_activity_ago": ago(last, now),
            "can_open": status == "running",
            "can_stop": status in ("running", "starting"),
            "can_start": status == "stopped",
            # query of the hub's /spawn URL that starts it as it was (no form)
            "start_options": start_options(environment, pinned) if current is not None else {},
            "can_delete": bool(name) and status in ("running", "stopped"),
        }

    async def show(self, error: str | None = None, status: int = 200):
        servers = []
        try:
            servers = await self.list_servers()
        except Exception as e:
            log.warning("cannot list %s's servers: %s", self.username, e)
            error = error or f"Cannot ask the hub for your servers: {e}"
            status = 502 if status == 200 else status
        # "Delete..." links here: a confirmation of one of *this user's* servers
        asked = self.get_query_argument("delete", None)
        confirm = next((s for s in servers if s["name"] == asked and s["can_delete"]), None)
        if confirm is None and any(s["status"] in ("starting", "stopping") for s in servers):
            self.set_header("Refresh", "3")  # no script needed to follow a change
        self.render_page(
            "service/servers.html",
            status=status,
            servers=servers,
            error=error,
            flash=self.pop_flash() if error is None else None,
            culler=culler_settings(),
            confirm_delete=confirm,
            active_page="servers",
        )

    # --- acting -------------------------------------------------------------------
    async def act(self, action: str, name: str) -> str:
        hub = self.service.hub
        user = self.username
        if not user:
            raise ActionError(403, "Not logged in.")
        label = quoted(name)
        try:
            servers = await hub.user_servers(user)
        except Exception as e:
            raise ActionError(502, f"Cannot ask the hub for your servers: {e}") from e
        model = servers.get(name)
        if not isinstance(model, dict):
            raise ActionError(404, f"You have no server named {label}.")
        status = status_of(model)
        if action == "stop":
            if status == "stopped":
                return f"Server {label} is already stopped."
            code, body = await self.call(hub.request_stop(user, name))
            self.check(code, body, (202, 204), f"stop server {label}")
            if code == 202:
                return f"Stopping server {label}. Your files stay in your home directory."
            return f"Stopped server {label}. Your files stay in your home directory."
        if action == "start":
            if status != "stopped":
                raise ActionError(409, f"Server {label} is {status}.")
            code, body = await self.call(hub.request_start(user, name))
            self.check(code, body, (201, 202), f"start server {label}")
            if code == 202:
                return f"Starting server {label}."
            return f"Started server {label}."
        # delete
        if not name:
            raise ActionError(400, "The default server cannot be deleted; stop it instead.")
        if self.get_body_argument("confirm", "") != "yes":
            raise ActionError(400, f"Tick the box to confirm deleting server {label}.")
        if status not in ("running", "stopped"):
            raise ActionError(409, f"Server {label} is {status}; try again in a moment.")
        code, body = await self.call(hub.request_stop(user, name, remove=True))
        self.check(code, body, (202, 204), f"delete server {label}")
        return f"Deleted server {label}. Your home directory and its files are kept."

    @staticmethod
    async def call(coro) -> tuple[int, dict | None]:
        try:
            return await coro
        except Exception as e:
            raise ActionError(502, f"The hub did not answer: {e}") from e

    @staticmethod
    def check(code: int, body, ok: tuple[int, ...], what: str):
        if code in ok:
            return
        message = body.get("message") if isinstance(body, dict) else None
        status = code if 400 <= code < 500 else 502
        raise ActionError(status, f"Could not {what}: {message or f'the hub answered {code}'}")


def routes(prefix: str) -> list:
    return [(prefix + "servers", MyServersPage)]
