"""REST API (JSON) under ``<service prefix>api/v1``; see openapi.yaml.

Errors are JSON ``{"status": N, "message": "..."}``: 400 invalid input,
403 missing scope (or not authenticated), 404 unknown, 409 conflict.
"""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from . import degraded, store
from . import operations as ops
from .handlers import BUILD_SCOPE, MANAGE_SCOPE, READ_SCOPE, BaseHandler

MAX_BODY = 64 * 1024
KEEPALIVE_SECONDS = 15
STATUS_OF = {
    ops.InvalidInput: 400,
    ops.Forbidden: 403,
    ops.NotFound: 404,
    ops.Conflict: 409,
    ops.QuotaExceeded: 429,
}


class APIHandler(BaseHandler):
    def check_xsrf_cookie(self):
        # Tornado checks XSRF before authenticating. A request with a token
        # header is authenticated first, so that HubAuth knows it needs no
        # XSRF token. (Only then: cookie authentication itself calls this
        # method, and must not recurse.)
        if self.request.headers.get("Authorization"):
            self.current_user  # noqa: B018
        elif not self.get_cookie(self.hub_auth.cookie_name):
            # neither token nor login cookie: nothing to forge, and require()
            # answers 403 "authentication required" rather than "_xsrf missing"
            return None
        return super().check_xsrf_cookie()

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def log_exception(self, typ, value, tb):
        if typ in STATUS_OF:
            return  # a refusal, already answered with its message
        if degraded.reason(value):
            # a missing part (Docker, a locked database): answered 503 with why
            app_log.warning("503 %s: %s", self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if type(exc) in STATUS_OF:
            status_code = STATUS_OF[type(exc)]
            message = str(exc)
            self.set_status(status_code)
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif degraded.reason(exc):
            message = degraded.reason(exc)
            self.set_header("Retry-After", "10")
        elif status_code >= 500:
            message = "internal error; see the service's log"
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def send_error(self, status_code=500, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if type(exc) in STATUS_OF:
            status_code = STATUS_OF[type(exc)]
        elif degraded.reason(exc):
            status_code = 503  # Docker or the database is unavailable: say why
        super().send_error(status_code, **kwargs)

    def require(self, scope: str):
        if self.current_user is None:
            # no token, an invalid one, or one without any of our scopes
            raise web.HTTPError(
                403, "authentication required: send a hub API token with the scope %s", scope
            )
        allowed = {MANAGE_SCOPE: self.can_manage, BUILD_SCOPE: self.can_build}.get(
            scope, self.can_read
        )
        if not allowed:
            raise web.HTTPError(403, "this requires the scope %s", scope)

    def editable(self, db, name: str) -> store.Environment:
        """The environment, if this user may change it (owner or admin)."""
        env = ops.find(db, name, self.viewer())
        ops.check_edit(env, self.can_edit(env))
        return env

    def json_body(self) -> dict:
        body = self.request.body
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except ValueError:
            raise web.HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "request body must be a JSON object")
        return data

    def reply(self, data, status: int = 200):
        self.set_status(status)
        self.finish(json.dumps(data))


class EnvironmentsHandler(APIHandler):
    async def get(self):
        self.require(READ_SCOPE)
        await self.service.adopt_images()
        self.finish(await self.service.list_cache.render(self.service, self.viewer()))

    async def post(self):
        self.require(BUILD_SCOPE)
        data = self.json_body()
        await self.service.require_docker()  # all or nothing: refuse before saving
        with self.db() as db:
            env, build = ops.create_environment(
                self.service, db, data, self.username, admin=self.can_manage
            )
            (model,) = await self.environment_models(db, [env])
            model["latest_build"] = self.build_model(build, env.name)
            self.reply(model, 201)


class EnvironmentHandler(APIHandler):
    async def get(self, name):
        self.require(READ_SCOPE)
        with self.db() as db:
            (model,) = await self.environment_models(db, [ops.find(db, name, self.viewer())])
            self.reply(model)

    async def patch(self, name):
        self.require(BUILD_SCOPE)
        data = self.json_body()
        with self.db() as db:
            env = self.editable(db, name)
            env = await ops.update_environment(self.service, db, env, data, admin=self.can_manage)
            (model,) = await self.environment_models(db, [env])
            self.reply(model)

    async def delete(self, name):
        self.require(BUILD_SCOPE)
        stop = self.get_argument("stop_servers", "false").lower() in ("1", "true", "yes")
        with self.db() as db:
            await ops.delete_environment(self.service, db, self.editable(db, name), stop)
        self.set_status(204)
        self.finish()


class BuildsHandler(APIHandler):
    async def get(self, name):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            builds = db.scalars(
                select(store.Build)
                .where(store.Build.environment_id == env.id)
                .order_by(store.Build.id.desc())
                .limit(100)
            ).all()
            self.reply({"builds": [self.build_model(b, env.name) for b in builds]})

    async def post(self, name):
        self.require(BUILD_SCOPE)
        data = self.json_body()
        await self.service.require_docker()
        with self.db() as db:
            env = self.editable(db, name)
            build = ops.start_build(
                self.service, db, env, data, self.username, admin=self.can_manage
            )
            self.reply(self.build_model(build, env.name), 202)


class BuildHandler(APIHandler):
    async def get(self, name, build_id):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            self.reply(self.build_model(ops.find_build(db, env, build_id), env.name))


class CancelHandler(APIHandler):
    async def post(self, name, build_id):
        self.require(BUILD_SCOPE)
        with self.db() as db:
            env = self.editable(db, name)
            build = await ops.cancel_build(self.service, db, env, ops.find_build(db, env, build_id))
            self.reply(self.build_model(build, env.name), 202)


class LogHandler(APIHandler):
    """Server-Sent Events: one event per log line (``id`` = lines seen so far,
    so a reconnect with ``Last-Event-ID`` resumes), then an ``event: status``
    with the build's final model. Comments keep idle connections alive."""

    async def get(self, name, build_id):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            build = ops.find_build(db, env, build_id)
            env_name = env.name
        last = self.request.headers.get("Last-Event-ID") or self.get_argument("last_event_id", "0")
        try:
            next_line = max(0, int(last))
        except ValueError:
            raise web.HTTPError(400, "Last-Event-ID must be a line number") from None
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        builds = self.service.builds
        buildlog = builds.log_for(build)
        shown_position = None
        try:
            while True:
                for number, entry in buildlog.entries_from(next_line):
                    self.write(f"id: {number + 1}\ndata: {json.dumps(entry)}\n\n")
                    next_line = number + 1
                position = builds.position(build.id)
                if position != shown_position:
                    # queue position changes (and the start) as status events
                    self.write_status(build.id, env_name)
                    shown_position = position
                await self.flush()
                if buildlog.finished:
                    break
                before = buildlog.count
                await buildlog.wait(2 if position else KEEPALIVE_SECONDS)
                if buildlog.count == before and not buildlog.finished and not position:
                    self.write(": keepalive\n\n")
            self.write_status(build.id, env_name)
            await self.flush()
        except (StreamClosedError, asyncio.CancelledError):
            return

    def write_status(self, build_id: int, env_name: str):
        with self.db() as db:
            model = self.build_model(db.get(store.Build, build_id), env_name)
        self.write(f"event: status\ndata: {json.dumps(model)}\n\n")


class VersionsHandler(APIHandler):
    async def get(self, name):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            self.reply({"versions": await ops.list_versions(self.service, env)})


class VersionHandler(APIHandler):
    async def delete(self, name, commit):
        self.require(BUILD_SCOPE)
        with self.db() as db:
            env = self.editable(db, name)
            await ops.delete_version(self.service, env, commit)
        self.set_status(204)
        self.finish()


class NotFoundHandler(APIHandler):
    def prepare(self):
        raise web.HTTPError(404, "no such API endpoint")


def routes(prefix: str) -> list:
    name = r"(?P<name>[a-z0-9][a-z0-9._-]{0,62})"
    build = r"(?P<build_id>[0-9]{1,12})"
    return [
        (prefix + r"/environments", EnvironmentsHandler),
        (prefix + rf"/environments/{name}", EnvironmentHandler),
        (prefix + rf"/environments/{name}/builds", BuildsHandler),
        (prefix + rf"/environments/{name}/builds/{build}", BuildHandler),
        (prefix + rf"/environments/{name}/builds/{build}/cancel", CancelHandler),
        (prefix + rf"/environments/{name}/builds/{build}/log", LogHandler),
        (prefix + rf"/environments/{name}/versions", VersionsHandler),
        (prefix + rf"/environments/{name}/versions/(?P<commit>[0-9a-f]{{7,64}})", VersionHandler),
        (prefix + r"/.*", NotFoundHandler),
    ]
