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

from .. import labels, validation
from ..builder import validate_request
from . import dockerops, store
from .builds import Conflict, Credentials
from .handlers import MANAGE_SCOPE, READ_SCOPE, BaseHandler

MAX_BODY = 64 * 1024
MAX_CREDENTIAL_LENGTH = 1024
KEEPALIVE_SECONDS = 15


class APIHandler(BaseHandler):
    def check_xsrf_cookie(self):
        # Tornado checks XSRF before authenticating; authenticate first so that
        # HubAuth knows a request came with a token (no XSRF needed) rather
        # than a cookie (XSRF needed).
        self.current_user  # noqa: B018
        return super().check_xsrf_cookie()

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal error; see the service's log"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def require(self, scope: str):
        if self.current_user is None:
            raise web.HTTPError(403, "authentication required: send a hub API token")
        allowed = self.can_manage if scope == MANAGE_SCOPE else self.can_read
        if not allowed:
            raise web.HTTPError(403, "this requires the scope %s", scope)

    def json_body(self) -> dict:
        body = self.request.body
        if len(body) > MAX_BODY:
            raise web.HTTPError(413, "request body too large")
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

    def find(self, db, name: str) -> store.Environment:
        env = store.find_environment(db, name)
        if env is None:
            raise web.HTTPError(404, "no environment named %s", name[:100])
        return env

    def find_build(self, db, env: store.Environment, build_id: str) -> store.Build:
        build = db.get(store.Build, int(build_id))
        if build is None or build.environment_id != env.id:
            raise web.HTTPError(404, "environment %s has no build %s", env.name, build_id)
        return build


def credentials_from(data: dict) -> Credentials | None:
    username, token = data.get("username"), data.get("token")
    if username in (None, "") and token in (None, ""):
        return None
    for field, value in (("username", username), ("token", token)):
        if not isinstance(value, str) or not value or len(value) > MAX_CREDENTIAL_LENGTH:
            raise web.HTTPError(
                400,
                "%s: private repositories need both a username and a token (strings)",
                field,
            )
        if any(c in value for c in "\r\n\x00"):
            raise web.HTTPError(400, "%s: must not contain line breaks", field)
    return Credentials(username, token)


def invalid(e: validation.InvalidInput) -> web.HTTPError:
    return web.HTTPError(400, "%s", str(e))


class EnvironmentsHandler(APIHandler):
    async def get(self):
        self.require(READ_SCOPE)
        with self.db() as db:
            envs = db.scalars(select(store.Environment).order_by(store.Environment.name)).all()
            self.reply({"environments": await self.environment_models(db, envs)})

    async def post(self):
        self.require(MANAGE_SCOPE)
        data = self.json_body()
        unknown = set(data) - {
            "name",
            "repo",
            "ref",
            "display_name",
            "mem_limit",
            "cpu_limit",
            "username",
            "token",
        }
        if unknown:
            raise web.HTTPError(400, "unknown fields: %s", ", ".join(sorted(unknown))[:200])
        try:
            request = validate_request(
                self.service.settings,
                name=data.get("name"),
                repo=data.get("repo"),
                ref=data.get("ref") or "HEAD",
                display_name=data.get("display_name"),
                mem_limit=data.get("mem_limit"),
                cpu_limit=data.get("cpu_limit"),
            )
        except validation.InvalidInput as e:
            raise invalid(e) from None
        credentials = credentials_from(data)
        with self.db() as db:
            if store.find_environment(db, request.name) is not None:
                raise web.HTTPError(409, "an environment named %s exists already", request.name)
            env = store.Environment(
                name=request.name,
                display_name=request.display_name,
                repo=request.repo,
                ref=request.ref,
                mem_limit=request.mem_limit,
                cpu_limit=request.cpu_limit,
                created_by=self.username,
            )
            db.add(env)
            db.commit()
            build = self.service.builds.start(db, env, self.username, credentials)
            (model,) = await self.environment_models(db, [env])
            model["latest_build"] = self.build_model(build, env.name)
            self.reply(model, 201)


class EnvironmentHandler(APIHandler):
    async def get(self, name):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = self.find(db, name)
            (model,) = await self.environment_models(db, [env])
            self.reply(model)

    async def patch(self, name):
        self.require(MANAGE_SCOPE)
        data = self.json_body()
        unknown = set(data) - {"display_name", "mem_limit", "cpu_limit", "ref"}
        if unknown:
            raise web.HTTPError(400, "unknown fields: %s", ", ".join(sorted(unknown))[:200])
        with self.db() as db:
            env = self.find(db, name)
            if store.active_build(db, env) is not None:
                raise web.HTTPError(409, "wait for the running build to finish or cancel it")
            try:
                if "display_name" in data:
                    env.display_name = validation.display_name(data["display_name"])
                if "mem_limit" in data:
                    env.mem_limit = validation.mem_limit(data["mem_limit"])
                if "cpu_limit" in data:
                    env.cpu_limit = validation.cpu_limit(data["cpu_limit"])
                if "ref" in data:
                    env.ref = validation.ref(data["ref"])
            except validation.InvalidInput as e:
                db.rollback()
                raise invalid(e) from None
            env.updated_at = store.utcnow()
            await self.relabel_images(env)
            db.commit()
            (model,) = await self.environment_models(db, [env])
            self.reply(model)

    async def relabel_images(self, env: store.Environment):
        """Built images carry display name and limits: give them the new values."""
        new = {
            labels.DISPLAY_NAME: env.display_name,
            labels.MEM_LIMIT: validation.format_bytes(env.mem_limit),
            labels.CPU_LIMIT: "" if env.cpu_limit is None else f"{env.cpu_limit:g}",
        }
        docker = self.service.docker
        hub = self.service.settings.hub_name
        for summary in await dockerops.environment_images(docker, hub, env.name):
            for tag in summary.get("RepoTags") or []:
                if tag and tag != "<none>:<none>":
                    await dockerops.relabel(docker, tag, new)
        self.service.catalogue.invalidate()

    async def delete(self, name):
        self.require(MANAGE_SCOPE)
        stop = self.get_argument("stop_servers", "false").lower() in ("1", "true", "yes")
        with self.db() as db:
            env = self.find(db, name)
            if store.active_build(db, env) is not None:
                raise web.HTTPError(409, "cancel the running build of %s first", env.name)
            self.service.state.invalidate()
            servers = (await self.service.server_usage()).get(env.name, [])
            if servers and not stop:
                users = ", ".join(sorted({s["user"] for s in servers}))[:500]
                raise web.HTTPError(
                    409,
                    "%d servers use %s (users: %s); repeat with stop_servers=true to stop them",
                    len(servers),
                    env.name,
                    users,
                )
            await self.service.stop_servers(servers)
            await self.service.remove_images(env.name)
            db.delete(env)
            db.commit()
        self.set_status(204)
        self.finish()


class BuildsHandler(APIHandler):
    async def get(self, name):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = self.find(db, name)
            builds = db.scalars(
                select(store.Build)
                .where(store.Build.environment_id == env.id)
                .order_by(store.Build.id.desc())
                .limit(100)
            ).all()
            self.reply({"builds": [self.build_model(b, env.name) for b in builds]})

    async def post(self, name):
        self.require(MANAGE_SCOPE)
        data = self.json_body()
        unknown = set(data) - {"username", "token"}
        if unknown:
            raise web.HTTPError(400, "unknown fields: %s", ", ".join(sorted(unknown))[:200])
        credentials = credentials_from(data)
        with self.db() as db:
            env = self.find(db, name)
            try:
                build = self.service.builds.start(db, env, self.username, credentials)
            except Conflict as e:
                raise web.HTTPError(409, "%s", str(e)) from None
            self.reply(self.build_model(build, env.name), 202)


class BuildHandler(APIHandler):
    async def get(self, name, build_id):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = self.find(db, name)
            self.reply(self.build_model(self.find_build(db, env, build_id), env.name))


class CancelHandler(APIHandler):
    async def post(self, name, build_id):
        self.require(MANAGE_SCOPE)
        with self.db() as db:
            env = self.find(db, name)
            build = self.find_build(db, env, build_id)
            if build.status in store.FINAL_STATES or not self.service.builds.cancel(build.id):
                raise web.HTTPError(409, "build %s is already %s", build.id, build.status)
        await self.service.builds.wait(build.id)
        with self.db() as db:
            self.reply(self.build_model(db.get(store.Build, build.id), env.name), 202)


class LogHandler(APIHandler):
    """Server-Sent Events: one event per log line (``id`` = lines seen so far,
    so a reconnect with ``Last-Event-ID`` resumes), then an ``event: status``."""

    async def get(self, name, build_id):
        self.require(READ_SCOPE)
        with self.db() as db:
            env = self.find(db, name)
            build = self.find_build(db, env, build_id)
            env_name = env.name
        last = self.request.headers.get("Last-Event-ID") or self.get_argument("last_event_id", "0")
        try:
            next_line = max(0, int(last))
        except ValueError:
            raise web.HTTPError(400, "Last-Event-ID must be a line number") from None
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        buildlog = self.service.builds.log_for(build)
        try:
            while True:
                for number, entry in buildlog.entries_from(next_line):
                    self.write(f"id: {number + 1}\ndata: {json.dumps(entry)}\n\n")
                    next_line = number + 1
                await self.flush()
                if buildlog.finished:
                    break
                before = buildlog.count
                await buildlog.wait(KEEPALIVE_SECONDS)
                if buildlog.count == before and not buildlog.finished:
                    self.write(": keepalive\n\n")
            with self.db() as db:
                model = self.build_model(db.get(store.Build, build.id), env_name)
            self.write(f"event: status\ndata: {json.dumps(model)}\n\n")
            await self.flush()
        except StreamClosedError:
            return
        except asyncio.CancelledError:
            return


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
        (prefix + r"/.*", NotFoundHandler),
    ]


class NotFoundHandler(APIHandler):
    def prepare(self):
        raise web.HTTPError(404, "no such API endpoint")
