"""Shared handler logic: who is asking, what they may do, and the JSON models."""

from __future__ import annotations

import time

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web
from tornado.log import app_log

from .. import access
from . import models, store

READ_SCOPE = "custom:environments:read"
BUILD_SCOPE = "custom:environments:build"
MANAGE_SCOPE = "custom:environments:manage"
SCOPES = {READ_SCOPE, BUILD_SCOPE, MANAGE_SCOPE}


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    @property
    def service(self):
        return self.settings["service"]

    @property
    def hub_scopes(self):
        # A token (or OAuth cookie) needs one of our scopes to be let in at all.
        return SCOPES

    def user_scopes(self) -> set[str]:
        user = self.current_user
        return set(user.get("scopes", [])) if user else set()

    @property
    def can_manage(self) -> bool:
        return MANAGE_SCOPE in self.user_scopes()

    @property
    def can_read(self) -> bool:
        return bool(self.user_scopes() & SCOPES)

    @property
    def can_build(self) -> bool:
        return bool(self.user_scopes() & {BUILD_SCOPE, MANAGE_SCOPE})

    def viewer(self) -> access.Viewer:
        user = self.current_user or {}
        return access.Viewer(
            name=user.get("name", ""),
            groups=frozenset(user.get("groups") or []),
            admin=self.can_manage,
        )

    def can_edit(self, env: store.Environment) -> bool:
        return self.can_manage or (self.can_build and env.owner == self.username != "")

    @property
    def username(self) -> str:
        user = self.current_user or {}
        return user.get("name", "")

    def db(self):
        return self.service.sessions()

    async def prepare(self):
        """An environment named in the URL that is not in the database yet
        may have been built a moment ago by the command line or another
        service process: adopt it from its image labels first, as listing
        does, so that its own URLs answer at once. Only for a signed-in
        user: strangers cannot make the service ask Docker."""
        name = (self.path_kwargs or {}).get("name")
        if not name or self.service.sessions is None or not self.current_user:
            return
        with self.db() as db:
            if store.find_environment(db, name) is not None:
                return
        try:
            await self.service.adopt_images()
        except Exception as e:  # Docker or the registry away: the lookup says 404
            app_log.debug("could not adopt images before looking up %s: %s", name[:100], e)

    # --- models (see models.py) ----------------------------------------------
    def build_model(self, build: store.Build, environment_name: str) -> dict:
        return models.build_model(self.service, build, environment_name)

    async def environment_models(self, db, envs: list[store.Environment]) -> list[dict]:
        return await models.environment_models(self.service, db, envs)


class ServiceState:
    """Docker reads shared by all requests, cached for a moment."""

    def __init__(self, max_age: float = 1.0):
        self.max_age = max_age
        self._usage = (0.0, {})

    async def server_usage(self, servers) -> dict[str, list[dict]]:
        fetched, value = self._usage
        if time.monotonic() - fetched > self.max_age:
            value = await servers.by_environment()
            self._usage = (time.monotonic(), value)
        return value

    def invalidate(self):
        self._usage = (0.0, {})
