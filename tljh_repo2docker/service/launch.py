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

import json
import os
from urllib.parse import quote, urlencode

from tornado import web
from tornado.iostream import StreamClosedError

from .. import gitref, projects, providers
from ..buildjob import archive_id, image_labels
from ..labels import image_tag
from ..validation import InvalidInput
from . import store
from .api import APIHandler
from .builds import Conflict, QuotaExceeded
from .handlers import READ_SCOPE
from .pages import PageHandler


def raw_spec(handler, marker: str) -> tuple[str, str]:
    """(provider, spec) from the raw request path: tornado would unescape
    %2F inside a git URL, which Binder's scheme keeps escaped."""
    path = handler.request.path
    rest = path[path.index(marker) + len(marker) :]
    provider, _, spec = rest.partition("/")
    return provider, spec


def parse_request(handler, marker: str):
    provider, spec = raw_spec(handler, marker)
    settings = handler.service.settings
    parsed = providers.parse(
        provider, spec, schemes=settings.allowed_schemes, allow_local=settings.allow_local_repos
    )
    path = providers.lab_path(
        handler.get_argument("urlpath", None),
        handler.get_argument("labpath", None),
        handler.get_argument("filepath", None),
    )
    return provider, spec, parsed, path


class LaunchPage(PageHandler):
    @web.authenticated
    async def get(self):
        self.require_read()
        try:
            provider, spec, parsed, path = parse_request(self, "/v2/")
        except InvalidInput as e:
            raise web.HTTPError(400, "This launch link is not valid: %s", str(e)) from None
        query = {"_xsrf": self.xsrf_token.decode()}
        if path:
            query["urlpath"] = path
        events = f"{self.service.service_prefix}build/{provider}/{spec}?{urlencode(query)}"
        self.render_page(
            "service/launch.html",
            spec=parsed,
            events_url=events,
            server_name=parsed.server_name,
        )


class BuildEvents(APIHandler):
    """BinderHub's build API: build (or reuse) the image, then launch."""

    def emit(self, phase: str, message: str, **fields):
        self.write(f"data: {json.dumps({'phase': phase, 'message': message, **fields})}\n\n")

    def may_build(self) -> bool:
        return self.can_build

    async def get(self):
        self.require(READ_SCOPE)
        try:
            _, _, spec, path = parse_request(self, "/build/")
        except InvalidInput as e:
            raise web.HTTPError(400, "%s", str(e)) from None
        build_only = self.get_argument("build_only", "").lower() in ("1", "true", "yes")
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self.run(spec, path, build_only)
        except StreamClosedError:
            return
        except Exception as e:  # the client gets the reason as BinderHub's "failed"
            self.log.exception("launch of %s failed", spec.repo)
            self.emit("failed", f"{e}\n")
        await self.flush()

    async def run(self, spec: providers.LaunchSpec, path: str, build_only: bool):
        svc = self.service
        user = self.username
        self.emit("waiting", f"Looking for {spec.label}\n")
        await self.flush()
        with svc.sessions() as db:
            env = store.find_environment(db, spec.environment_name)
            if env is None:
                if not self.may_build():
                    return self.emit("failed", "Only administrators may build new environments.\n")
                env = store.Environment(
                    name=spec.environment_name,
                    display_name=spec.label[:100],
                    repo=spec.repo,
                    ref=spec.ref,
                    created_by=user,
                )
                db.add(env)
                db.commit()
            elif env.repo != spec.repo or env.owner:
                # the name a launch link uses, taken by another environment
                return self.emit(
                    "failed", f"The environment {env.name} is not this repository's.\n"
                )
            env_id = env.id

        if spec.ref:
            try:
                commit = await gitref.resolve_ref(
                    spec.repo, spec.ref, timeout=svc.settings.git_timeout
                )
            except gitref.RefNotFound as e:
                return self.emit("failed", f"Cannot resolve {spec.ref}: {e}\n")
        else:
            commit = archive_id(spec.repo)
        tag = image_tag(svc.settings.image_prefix, spec.environment_name, commit)
        self.emit("fetching", f"{spec.ref or spec.repo} is {commit[:12]}\n")
        await self.flush()

        # build unless this commit has an image; follow a build already running
        for _attempt in range(3):
            if await image_labels(svc.docker, tag) is not None:
                break
            if not self.may_build():
                return self.emit("failed", "This version is not built; ask an administrator.\n")
            with svc.sessions() as db:
                env = db.get(store.Environment, env_id)
                try:
                    build = svc.builds.start(db, env, user, ref=spec.ref, exempt=self.can_manage)
                except Conflict:
                    build = store.active_build(db, env)
                except QuotaExceeded as e:
                    return self.emit("failed", f"{e}\n")
            if build is None:
                continue
            async for item in svc.builds.log_for(build).follow():
                if item is None:
                    self.write(": keepalive\n\n")
                else:
                    self.emit("building", item[1]["message"])
                await self.flush()
            with svc.sessions() as db:
                finished = db.get(store.Build, build.id)
                if finished.status != store.SUCCEEDED and finished.commit == commit:
                    return self.emit("failed", f"Build {finished.status}: {finished.error}\n")
        else:
            return self.emit("failed", "The image could not be built.\n")
        svc.catalogue.invalidate()
        self.emit("built", f"Found built image {tag}\n", imageName=tag)
        await self.flush()
        if build_only:
            return self.emit("ready", "Done! Built image, as asked (build_only).\n", image=tag)

        self.emit("launching", "Starting your server\n")
        await self.flush()
        options = {"image": tag}
        if svc.settings.project_folders:
            # the repository's files in ~/<project>, seeded once; paths are relative to it
            options["project"] = spec.server_name
            path = projects.landing_path(path, spec.server_name)
        await svc.hub.start_server(user, spec.server_name, options)
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/")
        server_path = f"{base}/user/{quote(user, safe='')}/{spec.server_name}/{path}"
        url = f"{self.request.protocol}://{self.request.host}{server_path}"
        self.emit("ready", f"Server ready at {server_path}\n", url=url, token="", image=tag)


def routes(prefix: str) -> list:
    return [
        (prefix + r"v2/.+", LaunchPage),
        (prefix + r"build/.+", BuildEvents),
    ]
