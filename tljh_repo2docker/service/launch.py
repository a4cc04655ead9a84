"""Binder-style launch links with logins and persistent servers.

- ``<prefix>v2/<provider>/<spec>``: the page a launch badge points at. After
  the hub login it shows the phases and the build log, then opens the user's
  named server for that repository (the same one every time), at ``urlpath``.
- ``<prefix>build/<provider>/<spec>``: Server-Sent Events with BinderHub's
  phases (waiting, fetching, building, built, launching, ready, failed) and
  fields (``message``, ``image``, ``url``, ``token``); ``build_only=true``
  stops after the image. The page above uses it; so can Binder clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
from urllib.parse import quote, urlencode, urljoin, urlsplit

from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError

from .. import gitref, providers
from .._version import __version__
from ..buildjob import archive_id, built_labels
from ..labels import image_tag
from ..validation import InvalidInput
from . import consent, fetchsite, launchenvs, store
from .api import APIHandler
from .builds import Conflict, QuotaExceeded
from .handlers import BUILD_SCOPE, READ_SCOPE
from .metrics import LaunchRecord
from .pages import PageHandler

log = logging.getLogger(__name__)


def raw_spec(handler, marker: str) -> tuple[str, str]:
    """(provider, spec) from the raw request path: tornado would unescape
    %2F inside a git URL, which Binder's scheme keeps escaped."""
    path = handler.request.path
    rest = path[path.index(marker) + len(marker) :]
    provider, _, spec = rest.partition("/")
    return provider, spec


def parse_build_request(handler, marker: str):
    """(provider, raw spec, LaunchSpec) of a /build/ or /v2/ request."""
    provider, spec = raw_spec(handler, marker)
    settings = handler.service.settings
    parsed = providers.parse(
        provider,
        spec,
        schemes=settings.allowed_schemes,
        # file:// repositories are for administrators only
        allow_local=settings.allow_local_repos and handler.can_manage,
    )
    return provider, spec, parsed


def parse_request(handler, marker: str):
    provider, spec, parsed = parse_build_request(handler, marker)
    path = providers.launch_path(
        handler.get_argument("urlpath", None),
        handler.get_argument("labpath", None),
        handler.get_argument("filepath", None),
    )
    return provider, spec, parsed, path


def launch_decision(handler, spec: providers.LaunchSpec, token_authenticated: bool = False):
    """consent.decide for this user and repository (trusted? confirmed once?)."""
    trusted = consent.is_trusted(spec, handler.service.settings.trusted_launch_sources)
    with handler.service.sessions() as db:
        found = store.find_consent(db, handler.username, consent.key_hash(spec.key))
    return consent.decide(
        token_authenticated=token_authenticated, trusted=trusted, remembered=found is not None
    )


class LaunchPage(PageHandler):
    """The page a launch link opens. It never builds or starts anything
    itself: for a repository this user has not confirmed (and no admin
    trusts) it shows what would run and what it could reach, and a form
    that POSTs the consent (XSRF-checked by tornado) back to the same URL.
    Once confirmed, the page follows the build stream (``BuildEvents``)."""

    def parse(self):
        try:
            return parse_request(self, "/v2/")
        except InvalidInput as e:
            raise web.HTTPError(400, "This launch link is not valid: %s", str(e)) from None

    async def check_room(self, spec: providers.LaunchSpec):
        """429 before anything is asked or built when this launch would make
        an environment beyond the user's quota."""
        svc = self.service
        try:
            await launchenvs.sweep(svc)  # never-built launch environments free their place
        except Exception:  # noqa: BLE001 (a cleanup that failed must not block the page)
            log.exception("cleaning up never-built launch environments failed")
        with svc.sessions() as db:
            env = store.find_environment(db, spec.environment_name)
            if env is not None or not self.can_build:
                return  # no new environment (or the stream says who may build)
            try:
                launchenvs.check_room(svc, db, self.username, admin=self.can_manage)
            except QuotaExceeded as e:
                raise web.HTTPError(429, "This launch needs a new environment: %s", e) from None

    def provenance(self, spec: providers.LaunchSpec) -> dict:
        """What this hub already knows of the image (no network on a GET)."""
        with self.service.sessions() as db:
            env = store.find_environment(db, spec.environment_name)
            if env is None or not launchenvs.reusable(env, spec):
                return {}
            latest = store.latest_success(db, env)
            if latest is None:
                return {}
            built_at = latest.finished_at
            return {
                "commit": latest.commit,
                "built_by": latest.requested_by,
                "built_at": built_at.strftime("%Y-%m-%d %H:%M UTC") if built_at else "",
            }

    @web.authenticated
    async def post(self):
        """The user confirms: remember it, then show the launch page."""
        self.require_read()
        _, _, parsed, _ = self.parse()
        await self.check_room(parsed)
        whole_home = self.get_body_argument("whole_home", "") == "on"
        with self.service.sessions() as db:
            store.remember_consent(
                db, self.username, parsed.key, consent.key_hash(parsed.key), whole_home
            )
        self.redirect(self.request.uri, status=303)

    @web.authenticated
    async def get(self):
        self.require_read()
        provider, spec, parsed, path = self.parse()
        await self.check_room(parsed)
        token = bool(getattr(self, "_token_authenticated", False))
        if not launch_decision(self, parsed, token_authenticated=token).allowed:
            self.render_page(
                "service/launch-confirm.html",
                spec=parsed,
                server_name=parsed.server_name,
                provenance=self.provenance(parsed),
                reach=consent.reach(
                    self.whole_home_by_default(),
                    parsed.server_name,
                    self.service.settings.user_name,
                ),
                project_folders=self.service.settings.project_folders,
                action=self.request.uri,
            )
            return
        # the page opens the server as BinderHub's page does: ready.url (the
        # server's root) + this path (validated above) + ?token=
        query = urlencode({"_xsrf": self.xsrf_token.decode()})
        events = f"{self.service.service_prefix}build/{provider}/{spec}?{query}"
        with self.service.sessions() as db:
            found = store.find_consent(db, self.username, consent.key_hash(parsed.key))
        whole = self.whole_home_by_default() or bool(found is not None and found.whole_home)
        self.render_page(
            "service/launch.html",
            spec=parsed,
            events_url=events,
            landing_path=path,
            server_name=parsed.server_name,
            reach=consent.reach(whole, parsed.server_name, self.service.settings.user_name),
        )

    def whole_home_by_default(self) -> bool:
        """An admin's choice: no project folders, or launches see the whole home."""
        settings = self.service.settings
        return not settings.project_folders or settings.launch_home_access == "home"


class BuildEvents(APIHandler):
    """BinderHub's build API: build (or reuse) the image, then launch.

    Everything a client can be told goes into the event stream, errors before
    the stream included (HTTP 200 and one ``failed`` event with ``status_code``),
    because an EventSource cannot read an HTTP error's body.
    """

    KEEPALIVE_SECONDS = 15
    # After ready/failed the stream stays open for a while: browser EventSource
    # clients reconnect (and launch again) when the server closes first.
    HOLD_SECONDS = 60
    TOKEN_LIFETIME = 600  # seconds; opens this one server only

    _closed = None
    _stream_started = False
    _launch_record = None

    # --- the stream --------------------------------------------------------------
    def set_default_headers(self):
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        cors_headers(self)

    def options(self, *args):
        self.set_status(204)
        self.finish()

    def emit(self, phase: str, message: str, **fields):
        self._stream_started = True
        self.write(f"data: {json.dumps({'phase': phase, 'message': message, **fields})}\n\n")

    async def send(self, phase: str, message: str, **fields):
        self.emit(phase, message, **fields)
        await self.flush()

    def send_error(self, status_code=500, **kwargs):
        """Errors become BinderHub's ``failed`` event with ``status_code``."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = ""
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, InvalidInput):
            status_code, message = 400, str(exc)
        if self.request.method == "GET":  # (before the stream: no login, no scope, a bad spec)
            self.launch_record.end("refused" if 400 <= status_code < 500 else "failed")
        if not message:
            message = httputil.responses.get(status_code, "Unknown error")
        if not self._headers_written:
            self.set_status(200)
        self.emit("failed", message.rstrip("\n") + "\n", status_code=status_code)
        if not self._finished:
            self.finish()

    def redirect(self, *args, **kwargs):
        # an event stream cannot follow a redirect to the login page
        raise web.HTTPError(403, "authentication required: log in to the hub or send a hub token")

    def on_connection_close(self):
        if self._closed is not None:
            self._closed.set()

    async def keep_alive(self):
        """Comment lines while anything runs, so that proxies keep the stream."""
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), self.KEEPALIVE_SECONDS)
                return
            except asyncio.TimeoutError:
                pass
            try:
                self.write(":keepalive\n\n")
                await self.flush()
            except (StreamClosedError, RuntimeError):
                return

    async def hold(self):
        """Wait for the client to close first (at most HOLD_SECONDS)."""
        try:
            await asyncio.wait_for(self._closed.wait(), self.HOLD_SECONDS)
        except asyncio.TimeoutError:
            pass

    @property
    def launch_record(self):
        """This request's launch for the metrics (outcome and phase times)."""
        if self._launch_record is None:
            try:
                # as get() reads it, without the decoding that can raise
                asked = self.request.query_arguments.get("build_only", [b""])[-1]
                build_only = asked.strip().lower() in (b"1", b"true", b"yes")
            except Exception:  # noqa: BLE001 (metrics never fail a launch)
                build_only = False
            metrics = getattr(self.service, "metrics", None)
            self._launch_record = LaunchRecord(metrics, build_only)
        return self._launch_record

    # --- who may do what -------------------------------------------------------------
    def may_build(self) -> bool:
        return self.can_build

    # A build-only request builds an image that only this user sees and starts
    # nothing: the user still picks it and starts it with the spawn form's own
    # XSRF-checked POST. So a build-only request by the login cookie alone
    # needs no consent page, only proof that one of this hub's pages made it
    # (jupyterhub-fancy-profiles on /hub/spawn; fetchsite says how) and not
    # another site sending the victim's browser here to spend their quota.
    LOGIN_GUARD = "_binder_login"  # on the URL the OAuth login comes back to

    def build_only_requested(self) -> bool:
        return self.get_argument("build_only", "").lower() in ("1", "true", "yes")

    def cookie_build_only(self) -> fetchsite.Verdict:
        """May this be a build-only request by the login cookie, without XSRF?"""
        if self.request.method != "GET" or not self.build_only_requested():
            return fetchsite.Verdict(False, "not a build-only GET")
        if self.request.headers.get("Authorization"):
            return fetchsite.Verdict(False, "has a token")
        return fetchsite.same_origin_fetch(self.request.headers, self.request.host)

    def check_xsrf_cookie(self):
        # HubOAuth asks this before it accepts the login cookie of a script's
        # request. BinderHub's client sends the hub's XSRF value, which is not
        # ours: a same-origin build-only fetch is let in without it (above).
        if self.cookie_build_only().allowed:
            return None
        return super().check_xsrf_cookie()

    def login_by_redirect(self) -> bool:
        """No login cookie under this prefix yet (the user never came here):
        a same-origin build-only fetch follows the hub's OAuth redirects (no
        confirmation page: oauth_no_confirm) and comes back with the cookie.
        Once only: the login comes back with LOGIN_GUARD on the URL."""
        if self.get_argument(self.LOGIN_GUARD, None) is not None:
            return False
        if not self.cookie_build_only().allowed:
            return False
        params = {}
        auth = self.hub_auth
        verifier = None
        if getattr(auth, "pkce_enabled", False):
            verifier, challenge, method = auth.generate_pkce_code_challenge()
            params.update(code_challenge=challenge, code_challenge_method=method)
        back = httputil.url_concat(self.request.uri, {self.LOGIN_GUARD: "1"})
        params["state"] = auth.set_state_cookie(self, next_url=back, code_verifier=verifier)
        web.RequestHandler.redirect(self, httputil.url_concat(auth.login_url, params))
        return True

    def check_consent(self, spec: providers.LaunchSpec) -> str | None:
        """Launch consent (issue 8): None to go on, or why this launch may not
        build or start anything. Called before anything is created.

        A request with the user's hub token in its Authorization header (a
        Binder client) is deliberate: no other site can send that header, so it
        needs no confirmation page. A request authenticated by the login
        cookie alone could come from any site (a link, a redirect): it must
        carry the XSRF value the launch page handed out, tied to this user's
        cookie, whatever its Sec-Fetch headers say, and the repository must be
        one this user confirmed once, or a source the admin trusts. Only a
        build-only fetch from one of this hub's own pages, which starts
        nothing, goes ahead without these (``cookie_build_only``).
        """
        token = bool(getattr(self, "_token_authenticated", False))
        if not token and self.cookie_build_only().allowed:
            return None  # builds, starts nothing (see cookie_build_only)
        if not token and not consent.xsrf_matches(
            self.get_argument("_xsrf", None), self.xsrf_token
        ):
            return (
                "This launch did not come from this hub's launch page; open the launch "
                "link itself to see what it runs and confirm it."
            )
        decision = launch_decision(self, spec, token_authenticated=token)
        if not decision.allowed:
            return (
                f"You have not confirmed launching {spec.label} yet; open its launch link "
                "to see what it runs and confirm it."
            )
        return None

    def consent_options(self, spec: providers.LaunchSpec) -> dict:
        """Spawn options the user chose when confirming (``whole_home``)."""
        with self.service.sessions() as db:
            found = store.find_consent(db, self.username, consent.key_hash(spec.key))
            return {"whole_home": True} if found is not None and found.whole_home else {}

    # --- the request -------------------------------------------------------------------
    async def get(self):
        self.launch_record.phase("resolve")  # from the request on, to the commit
        if self.current_user is None:
            if self.login_by_redirect():
                return
            raise web.HTTPError(
                403, "authentication required: log in to the hub or send a hub token"
            )
        self.require(READ_SCOPE)
        _, _, spec = parse_build_request(self, self.marker)
        build_only = self.get_argument("build_only", "").lower() in ("1", "true", "yes")
        self._closed = asyncio.Event()
        keepalive = asyncio.ensure_future(self.keep_alive())
        hold = False  # a client that went away before run() answered: nothing to hold
        try:
            hold = await self.run(spec, build_only)
        except StreamClosedError:
            self.launch_record.end("cancelled")  # the client left first
            return
        except Exception as e:  # the client gets the reason as BinderHub's "failed"
            log.exception("launch of %s failed", spec.repo)
            self.launch_record.end("failed")
            hold = True
            try:
                await self.send("failed", f"{e}\n")
            except StreamClosedError:
                return
        finally:
            if not hold:
                keepalive.cancel()
        if hold:
            await self.hold()
        keepalive.cancel()

    @property
    def marker(self) -> str:
        return "/build/"

    async def archive_fetch(self, url: str) -> tuple[str, bytes]:
        """How archives are asked for their current version."""
        return await public_fetch(url)

    async def fail(self, message: str, outcome: str = "failed") -> bool:
        self.launch_record.end(outcome)
        await self.send("failed", message.rstrip("\n") + "\n")
        return True  # hold the stream, as after every in-stream failure

    async def refuse(self, message: str) -> bool:
        """A failure before anything ran (consent, permission, quota, name)."""
        return await self.fail(message, outcome="refused")

    async def run(self, spec: providers.LaunchSpec, build_only: bool) -> bool:
        """The phases; returns whether to hold the stream open afterwards."""
        svc = self.service
        user = self.username
        await self.send("waiting", f"Looking for {spec.label}\n")
        refusal = self.check_consent(spec)
        if refusal:
            return await self.refuse(refusal)
        with svc.sessions() as db:
            env = store.find_environment(db, spec.environment_name)
            if env is not None and not launchenvs.reusable(env, spec):
                # the name a launch link uses, taken by another environment
                return await self.refuse(f"The environment {env.name} is not this repository's.")
            if env is None and not self.may_build():
                return await self.refuse(self.no_build_message())

        # a commit for git refs (old badges' master/main fall back to HEAD),
        # the current version for archives (DOIs, HydroShare)
        version = ""
        if spec.ref:
            try:
                commit = await gitref.resolve_ref(
                    spec.repo,
                    spec.ref,
                    timeout=svc.settings.git_timeout,
                    guard=svc.settings.net_guard(),
                )
            except gitref.RefNotFound as e:
                if spec.provider != "gh" or spec.ref not in providers.DEFAULT_BRANCH_ALIASES:
                    return await self.fail(f"Cannot resolve {spec.ref}: {e}")
                old = spec.ref
                spec = spec.with_ref("HEAD")
                await self.send(
                    "waiting",
                    f"There is no branch {old!r}; trying HEAD (the default branch) instead. "
                    "Please update your links.\n",
                )
                try:
                    commit = await gitref.resolve_ref(
                        spec.repo,
                        "HEAD",
                        timeout=svc.settings.git_timeout,
                        guard=svc.settings.net_guard(),
                    )
                except gitref.RefNotFound as e2:
                    return await self.fail(f"Cannot resolve {old} or HEAD: {e2}")
        else:
            try:
                version = await providers.current_version(spec, self.archive_fetch)
            except (providers.ArchiveError, OSError) as e:
                log.warning("no current version of %s: %s", spec.repo, e)
                return await self.fail(f"Cannot find the current version of {spec.label}: {e}")
            await self.send("fetching", f"{spec.label}: current version {version}\n")
            # a new version of the record, a new image
            commit = archive_id(spec.repo, version)

        with svc.sessions() as db:
            env = store.find_environment(db, spec.environment_name)
            if env is None:
                if not self.may_build():
                    return await self.refuse(self.no_build_message())
                try:
                    # owned by this user, counted in their quota, in no picker
                    env = launchenvs.create(svc, db, spec, user, admin=self.can_manage)
                except QuotaExceeded as e:
                    self.launch_record.end("refused")
                    await self.send("failed", f"{e}\n", status_code=429)
                    return True
            elif not launchenvs.reusable(env, spec):
                # the name a launch link uses, taken by another environment
                return await self.refuse(f"The environment {env.name} is not this repository's.")
            env_id = env.id

        tag = image_tag(svc.settings.image_prefix, spec.environment_name, commit)
        self.launch_record.phase("build")
        await self.send("fetching", f"{spec.ref or spec.repo} is {commit[:12]}\n")

        # build unless this commit has an image; follow a build already running
        built_now = False
        for _attempt in range(3):
            if await built_labels(svc.docker, svc.settings, tag) is not None:
                break
            if not self.may_build():
                return await self.refuse(self.no_build_message(version_only=True))
            with svc.sessions() as db:
                env = db.get(store.Environment, env_id)
                try:
                    build = svc.builds.start(
                        db, env, user, ref=spec.ref, exempt=self.can_manage, archive_version=version
                    )
                except Conflict:
                    build = store.active_build(db, env)
                except QuotaExceeded as e:
                    return await self.refuse(str(e))
            if build is None:
                continue
            async for item in svc.builds.log_for(build).follow():
                if item is not None:  # None: nothing new (the keep-alive task covers it)
                    await self.send("building", item[1]["message"])
            with svc.sessions() as db:
                finished = db.get(store.Build, build.id)
                if finished.status != store.SUCCEEDED and finished.commit == commit:
                    return await self.fail(f"Build {finished.status}: {finished.error}")
            built_now = True
        else:
            return await self.fail("The image could not be built.")
        svc.catalogue.invalidate()
        if build_only:
            # as BinderHub: "ready" (with imageName) takes the place of "built"
            done = "Done! Image built" if built_now else "Done! Found built image"
            self.launch_record.end("ready")
            await self.send("ready", f"{done}\n", imageName=tag, image=tag)
            return False
        self.launch_record.phase("start")
        await self.send("built", f"Found built image {tag}, launching...\n", imageName=tag)
        await self.launch(spec, tag)
        return True

    def no_build_message(self, version_only: bool = False) -> str:
        what = "this version" if version_only else "a new environment for this repository"
        who = "Your account may not"
        if self.request.headers.get("Authorization"):
            return (
                f"{who} build {what}. The token sent with this request lacks the scope "
                f"{BUILD_SCOPE}; use a token made with it (or log in) and try again."
            )
        return f"{who} build {what}; ask an administrator to build it."

    async def launch(self, spec: providers.LaunchSpec, tag: str):
        svc = self.service
        user = self.username
        name = spec.server_name
        await self.send("launching", "Launching server...\n")
        options = {"image": tag, **self.consent_options(spec)}
        if svc.settings.project_folders:
            # the repository's files in ~/<project>, which is the server's root:
            # paths relative to the repository work from the server's root URL
            options["project"] = name
        async for message in start_with_progress(svc.hub, user, name, options):
            await self.send("launching", message.rstrip("\n") + "\n")
        token = await server_token(svc.hub, user, name, self.TOKEN_LIFETIME)
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/")
        server_path = f"{base}/user/{quote(user, safe='')}/{quote(name, safe='')}/"
        url = f"{self.request.protocol}://{self.request.host}{server_path}"
        self.launch_record.end("ready")
        await self.send(
            "ready",
            f"server running at {url}\n",
            url=url,
            token=token,
            image=tag,
            repo_url=spec.repo,
            binder_request=f"v2/{spec.provider}/{self.raw_spec}",
        )

    @property
    def raw_spec(self) -> str:
        return raw_spec(self, self.marker)[1].rstrip("/")


class BinderBuildEvents(BuildEvents):
    """The same API under another service's prefix (``/services/binder/``),
    where jupyterhub-fancy-profiles looks for BinderHub."""

    def get_login_url(self):
        raise web.HTTPError(403, "authentication required: send a hub token")


class VersionsHandler(APIHandler):
    """BinderHub's ``/versions``: who answers (clients check it exists)."""

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Access-Control-Allow-Origin", cors_origin(self) or "*")

    def options(self, *args):
        self.set_status(204)
        self.finish()

    def get(self):
        self.finish(
            json.dumps(
                {
                    "binderhub": f"tljh-repo2docker {__version__}",
                    "builder_info": {"repo2docker-version": repo2docker_version()},
                }
            )
        )


def cors_origin(handler) -> str:
    return getattr(handler.service, "cors_allow_origin", "") or ""


def cors_headers(handler):
    """BinderHub's ``cors_allow_origin``: which other sites may call the API."""
    origin = cors_origin(handler)
    if origin:
        handler.set_header("Access-Control-Allow-Origin", origin)
        handler.set_header("Access-Control-Allow-Headers", "cache-control, authorization")
        handler.set_header("Access-Control-Allow-Methods", "GET, OPTIONS")


def repo2docker_version() -> str:
    try:
        from importlib.metadata import version

        return version("jupyter-repo2docker")
    except Exception:  # noqa: BLE001 (not installed where the service runs)
        return ""


# --- the hub: start with progress, a token for one server ------------------------------
async def start_with_progress(hub, user: str, name: str, options: dict, timeout: float = 300):
    """Start ``user``'s server ``name`` (unless it runs) and yield the spawner's
    progress messages until it is ready; RuntimeError with the hub's reason
    when it fails."""
    path = hub.server_path(user, name)
    current = await hub.server(user, name)
    if current and current.get("ready"):
        return
    if current is None or not current.get("pending"):
        code, body = await hub.request("POST", path, options)
        message = (body or {}).get("message") if isinstance(body, dict) else None
        if code not in (201, 202) and not (code == 400 and "already" in (message or "")):
            raise RuntimeError(message or f"the hub answered {code}")
    queue: asyncio.Queue = asyncio.Queue()
    buffer = bytearray()

    def on_chunk(chunk: bytes):
        buffer.extend(chunk)
        while b"\n\n" in buffer:
            block, _, rest = bytes(buffer).partition(b"\n\n")
            buffer[:] = rest
            for line in block.decode("utf-8", "replace").splitlines():
                if line.startswith("data:"):
                    try:
                        queue.put_nowait(json.loads(line[5:]))
                    except ValueError:
                        pass

    request = HTTPRequest(
        hub.api_url + path + "/progress",
        headers={"Authorization": f"token {hub.token}"},
        streaming_callback=on_chunk,
        request_timeout=timeout,
    )
    fetch = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, fetch}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break  # the progress stream ended
            event = getter.result()
            if event.get("failed"):
                raise RuntimeError(event.get("message") or "the server failed to start")
            if event.get("message"):
                yield str(event["message"])
            if event.get("ready"):
                break
    finally:
        if not fetch.done():
            fetch.cancel()
    # the stream can end without a verdict (e.g. an older hub): ask
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.2
    while asyncio.get_running_loop().time() < deadline:
        current = await hub.server(user, name)
        if current is None:
            raise RuntimeError("the server failed to start; see the hub's home page")
        if current.get("ready"):
            return
        await asyncio.sleep(delay)
        # back off: many waiting launches must not flood the hub's API
        delay = min(delay * 1.5, 2.0)
    raise RuntimeError(f"the server did not start within {timeout:g} s")


async def server_token(hub, user: str, name: str, lifetime: int) -> str:
    """A short-lived token of ``user`` that opens server ``name`` only (as
    BinderHub's ``token``). The service needs the ``tokens`` scope."""
    code, body = await hub.request(
        "POST",
        f"/users/{quote(user, safe='')}/tokens",
        {
            "note": f"launch of server {name}",
            "scopes": [f"access:servers!server={user}/{name}"],
            "expires_in": lifetime,
        },
    )
    if code != 201 or not isinstance(body, dict) or not body.get("token"):
        message = body.get("message") if isinstance(body, dict) else None
        raise RuntimeError(f"the hub gave no token for the server: {message or code}")
    return body["token"]


# --- asking archives for their current version -------------------------------------------
MAX_REDIRECTS = 5


async def _public_host(host: str):
    """Refuse hosts that resolve to this machine's or a private network."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise OSError(f"{host} is not a public host")


async def public_fetch(url: str) -> tuple[str, bytes]:
    """GET over https from public hosts only, following redirects by hand
    (each hop checked). Returns (final URL, body)."""
    client = AsyncHTTPClient()
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise OSError("archives are fetched over https only")
        await _public_host(parts.hostname)
        try:
            resp = await client.fetch(
                HTTPRequest(
                    url,
                    follow_redirects=False,
                    request_timeout=30,
                    user_agent=f"tljh-repo2docker/{__version__}",
                    headers={"Accept": "application/json"},
                ),
                raise_error=False,
            )
        except HTTPClientError as e:  # pragma: no cover (raise_error=False)
            raise OSError(str(e)) from None
        if resp.code in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
            url = urljoin(url, resp.headers["Location"])
            continue
        if resp.code != 200:
            raise OSError(f"the archive answered {resp.code}")
        return url, resp.body or b""
    raise OSError("too many redirects")


def routes(prefix: str, binder_prefix: str = "") -> list:
    """The launch page and BinderHub's API, here and, for clients that look
    for BinderHub at ``/services/binder/``, also under ``binder_prefix``."""
    handlers = [
        (prefix + r"v2/.+", LaunchPage),
        (prefix + r"build/.+", BuildEvents),
        (prefix + r"versions", VersionsHandler),
    ]
    if binder_prefix and binder_prefix != prefix:
        handlers += [
            (binder_prefix + r"build/.+", BinderBuildEvents),
            (binder_prefix + r"versions", VersionsHandler),
        ]
    return handlers
