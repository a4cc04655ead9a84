"""Shared handler logic: who is asking, what they may do, and the JSON models."""

from __future__ import annotations

import json
import time

from jupyterhub.services.auth import HubOAuthenticated
from sqlalchemy import func, select
from tornado import web

from .. import validation
from . import store

READ_SCOPE = "custom:environments:read"
MANAGE_SCOPE = "custom:environments:manage"


def iso(value) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


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
        return {READ_SCOPE, MANAGE_SCOPE}

    def user_scopes(self) -> set[str]:
        user = self.current_user
        return set(user.get("scopes", [])) if user else set()

    @property
    def can_manage(self) -> bool:
        return MANAGE_SCOPE in self.user_scopes()

    @property
    def can_read(self) -> bool:
        return bool(self.user_scopes() & {READ_SCOPE, MANAGE_SCOPE})

    @property
    def username(self) -> str:
        user = self.current_user or {}
        return user.get("name", "")

    def db(self):
        return self.service.sessions()

    # --- models ---------------------------------------------------------------
    def build_model(self, build: store.Build, environment_name: str) -> dict:
        prefix = self.service.service_prefix
        return {
            "id": build.id,
            "environment": environment_name,
            "status": build.status,
            "queue_position": self.service.builds.position(build.id),
            "ref": build.ref,
            "commit": build.commit or None,
            "image": build.image or None,
            "cached": build.cached,
            "requested_by": build.requested_by,
            "created_at": iso(build.created_at),
            "started_at": iso(build.started_at),
            "finished_at": iso(build.finished_at),
            "duration": build.duration,
            "error": build.error or None,
            "log_lines": build.log_lines
            if build.status in store.FINAL_STATES
            else self.service.builds.log_for(build).count,
            "log_url": f"{prefix}api/v1/environments/{environment_name}/builds/{build.id}/log",
        }

    def environment_model(
        self, env: store.Environment, latest: store.Build | None, current, servers
    ) -> dict:
        return {
            "name": env.name,
            "display_name": env.display_name,
            "repo": env.repo,
            "ref": env.ref,
            "mem_limit": validation.format_bytes(env.mem_limit) or None,
            "cpu_limit": env.cpu_limit,
            "build_args": json.loads(env.build_args or "{}"),
            "created_by": env.created_by,
            "created_at": iso(env.created_at),
            "updated_at": iso(env.updated_at),
            "status": latest.status if latest else "new",
            "image": current.image if current else None,
            "commit": current.commit if current else None,
            "size": current.size if current else None,
            "servers": [{"user": s["user"], "server_name": s["server_name"]} for s in servers],
            "latest_build": self.build_model(latest, env.name) if latest else None,
        }

    async def environment_models(self, db, envs: list[store.Environment]) -> list[dict]:
        """Models for many environments with three queries and two cached Docker reads."""
        ids = [e.id for e in envs]
        latest_ids = (
            db.execute(
                select(func.max(store.Build.id))
                .where(store.Build.environment_id.in_(ids))
                .group_by(store.Build.environment_id)
            )
            .scalars()
            .all()
            if ids
            else []
        )
        latest = {
            b.environment_id: b
            for b in db.scalars(select(store.Build).where(store.Build.id.in_(latest_ids)))
        }
        images = await self.service.current_images()
        servers = await self.service.server_usage()
        return [
            self.environment_model(e, latest.get(e.id), images.get(e.name), servers.get(e.name, []))
            for e in envs
        ]


class ServiceState:
    """Docker reads shared by all requests, cached for a moment."""

    def __init__(self, max_age: float = 1.0):
        self.max_age = max_age
        self._usage = (0.0, {})

    async def server_usage(self, docker, hub_name: str) -> dict[str, list[dict]]:
        from .dockerops import servers_by_environment

        fetched, value = self._usage
        if time.monotonic() - fetched > self.max_age:
            value = await servers_by_environment(docker, hub_name)
            self._usage = (time.monotonic(), value)
        return value

    def invalidate(self):
        self._usage = (0.0, {})
