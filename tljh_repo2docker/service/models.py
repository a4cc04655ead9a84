"""The JSON models of environments and builds, and a cache of the list.

The environments list is the API's hot path (every page load of a client
that polls it): its per-environment JSON is kept until the database or the
Docker facts it shows change, so a request at 500 environments filters and
joins strings instead of loading and encoding every row.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import defer

from .. import access, validation
from . import store


def iso(value) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def build_model(service, build: store.Build, environment_name: str) -> dict:
    prefix = service.service_prefix
    final = build.status in store.FINAL_STATES
    return {
        "id": build.id,
        "environment": environment_name,
        "status": build.status,
        "queue_position": service.builds.position(build.id),
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
        "log_lines": build.log_lines if final else service.builds.log_for(build).count,
        "log_url": f"{prefix}api/v1/environments/{environment_name}/builds/{build.id}/log",
    }


NEEDS_REBUILD = "needs_rebuild"


def environment_status(latest, current) -> str:
    """The latest build's status, reconciled with Docker: a build that
    succeeded but whose image is gone (``docker rmi`` by hand, a prune)
    leaves an environment nobody can start, which "needs a rebuild"."""
    if latest is None:
        return "new"
    if latest.status == store.SUCCEEDED and current is None:
        return NEEDS_REBUILD
    return latest.status


def environment_model(service, env, latest, current, servers) -> dict:
    return {
        "name": env.name,
        "display_name": env.display_name,
        "repo": env.repo,
        "ref": env.ref,
        "mem_limit": validation.format_bytes(env.mem_limit) or None,
        "cpu_limit": env.cpu_limit,
        "build_args": json.loads(env.build_args or "{}"),
        "owner": env.owner or None,
        "visibility": env.visibility,
        "copy_files": bool(env.copy_files),
        "created_by": env.created_by,
        # launch-made: who caused it (it counts in their quota); promoted: in pickers
        "launched_by": env.launched_by or None,
        "promoted": bool(env.launched_by) and env.visibility != access.LAUNCH,
        "created_at": iso(env.created_at),
        "updated_at": iso(env.updated_at),
        "status": environment_status(latest, current),
        "image": current.image if current else None,
        "commit": current.commit if current else None,
        "size": current.size if current else None,
        "servers": [{"user": s["user"], "server_name": s["server_name"]} for s in servers],
        "latest_build": build_model(service, latest, env.name) if latest else None,
    }


def latest_builds(db, env_ids: list[int]) -> dict[int, store.Build]:
    """The newest build of each environment, without the (large) logs."""
    if not env_ids:
        return {}
    newest = (
        select(func.max(store.Build.id))
        .where(store.Build.environment_id.in_(env_ids))
        .group_by(store.Build.environment_id)
    )
    query = (
        select(store.Build)
        .where(store.Build.id.in_(newest))
        .options(defer(store.Build.log_head), defer(store.Build.log_tail))
    )
    return {b.environment_id: b for b in db.scalars(query)}


async def environment_models(service, db, envs: list[store.Environment]) -> list[dict]:
    """Models for many environments: two queries and two cached Docker reads."""
    latest = latest_builds(db, [e.id for e in envs])
    images = await service.current_images()
    servers = await service.server_usage()
    return [
        environment_model(service, e, latest.get(e.id), images.get(e.name), servers.get(e.name, []))
        for e in envs
    ]


def _fingerprint(images: dict, usage: dict) -> tuple:
    return (
        tuple(sorted((name, i.image, i.size) for name, i in images.items())),
        tuple(
            sorted(
                (name, tuple((s["user"], s["server_name"]) for s in v)) for name, v in usage.items()
            )
        ),
    )


class ListCache:
    """The environments list as JSON strings, one per environment."""

    def __init__(self):
        self._key = None
        self._entries: list[tuple[str, str, bool, str, str]] = []

    async def render(self, service, viewer: access.Viewer) -> str:
        images = await service.current_images()
        usage = await service.server_usage()
        with service.sessions() as db:
            # commits by this process, and a cheap look at what others wrote
            outside = db.execute(
                select(
                    select(func.count(store.Environment.id)).scalar_subquery(),
                    select(func.max(store.Environment.updated_at)).scalar_subquery(),
                    select(func.max(store.Build.id)).scalar_subquery(),
                )
            ).one()
        key = (service.sessions.generation(), tuple(outside), _fingerprint(images, usage))
        if key != self._key:
            with service.sessions() as db:
                envs = db.scalars(select(store.Environment).order_by(store.Environment.name)).all()
                latest = latest_builds(db, [e.id for e in envs])
                entries = []
                for env in envs:
                    build = latest.get(env.id)
                    model = environment_model(
                        service, env, build, images.get(env.name), usage.get(env.name, [])
                    )
                    active = build is not None and build.status in store.ACTIVE_STATES
                    entries.append((env.owner, env.visibility, active, env.name, json.dumps(model)))
            self._entries, self._key = entries, key
        parts = []
        for owner, visibility, active, name, cached in self._entries:
            if not access.can_see(owner, visibility, viewer):
                continue
            if active:
                # queue position and log length move without a database write
                with service.sessions() as db:
                    env = store.find_environment(db, name)
                    if env is not None:
                        (model,) = await environment_models(service, db, [env])
                        cached = json.dumps(model)
            parts.append(cached)
        return '{"environments": [' + ", ".join(parts) + "]}"
