"""Environments that launch links make: who they belong to, quotas, cleanup.

A launch link builds one environment per repository, shared by everyone who
launches it (one image per commit, not one per user). The user whose launch
created it owns it: it counts toward their ``max_environments_per_user``,
they see it in their list and may delete it; its builds count toward the
build quotas of whoever caused each one. It is labelled ``launch``
(``access.LAUNCH``): in nobody's picker until an admin promotes it.

An environment a launch made but never built (the build failed, was
cancelled or interrupted, or never started) is removed: it would otherwise
take a place in its owner's quota and a row in every admin's list.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

from sqlalchemy import func, select

from .. import access, providers
from . import dockerops, store
from .builds import QuotaExceeded

log = logging.getLogger("tljh_repo2docker.service")

# An environment with no build at all is left alone this long: the launch
# that created it is still resolving its ref or starting its build.
NO_BUILD_GRACE = datetime.timedelta(minutes=2)
# How long a watcher waits for the first build of a new launch environment.
FIRST_BUILD_WAIT = 120.0


def owned_count(db, user: str) -> int:
    return db.scalar(
        select(func.count(store.Environment.id)).where(store.Environment.owner == user)
    )


def check_room(service, db, user: str, admin: bool):
    """QuotaExceeded unless ``user`` may cause one more environment (and its
    first build) now. Admins have no quota."""
    if admin:
        return
    owned = owned_count(db, user)
    if owned >= service.max_environments_per_user:
        raise QuotaExceeded(
            f"you have {owned} environments (launch links included), the most allowed "
            "here; delete one on the Environments page, or ask an administrator"
        )
    service.builds.check_quota(db, user)


def reusable(env: store.Environment, spec: providers.LaunchSpec) -> bool:
    """May a launch of ``spec`` use the existing environment ``env``?

    Only one of this repository that is the hub's or launch-made: a user's own
    environment that happens to have the launch name is never taken over.
    """
    return env.repo == spec.repo and (not env.owner or bool(env.launched_by))


def new_environment(spec: providers.LaunchSpec, user: str) -> store.Environment:
    return store.Environment(
        name=spec.environment_name,
        display_name=spec.label[:100],
        repo=spec.repo,
        ref=spec.ref,
        created_by=user,
        owner=user,
        launched_by=user,
        visibility=access.LAUNCH,
    )


def create(service, db, spec: providers.LaunchSpec, user: str, admin: bool) -> store.Environment:
    """Store the environment a launch of ``spec`` by ``user`` makes (commits);
    QuotaExceeded when it would go beyond their quota. Starts a watcher that
    removes it again if its first build fails."""
    check_room(service, db, user, admin)
    env = new_environment(spec, user)
    db.add(env)
    db.commit()
    watch(service, env.id)
    return env


def watch(service, env_id: int):
    task = asyncio.ensure_future(clean_after_first_build(service, env_id))
    # keep a reference: a task nobody holds may be garbage-collected
    watchers = service.__dict__.setdefault("_launch_watchers", set())
    watchers.add(task)
    task.add_done_callback(watchers.discard)


async def clean_after_first_build(service, env_id: int, poll: float = 0.2):
    """Wait for the first build of a new launch environment; remove the
    environment if nothing was built."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_BUILD_WAIT
    try:
        while loop.time() < deadline:
            with service.sessions() as db:
                env = db.get(store.Environment, env_id)
                if env is None:
                    return
                build = store.active_build(db, env)
                finished = env.builds
            if build is not None:
                await service.builds.wait(build.id)
                break
            if finished:
                break
            await asyncio.sleep(poll)
        await sweep(service, only=env_id, grace=datetime.timedelta(0))
    except Exception:  # cleanup must never take the service down
        log.exception("cleaning up launch environment %s failed", env_id)


def unbuilt(db, now: datetime.datetime, grace: datetime.timedelta, only: int | None = None):
    """Launch-made environments without a successful or running build: those
    with finished builds at once, those without any after ``grace``."""
    query = select(store.Environment).where(store.Environment.launched_by != "")
    if only is not None:
        query = query.where(store.Environment.id == only)
    doomed = []
    for env in db.scalars(query):
        statuses = {b.status for b in env.builds}
        if store.SUCCEEDED in statuses or statuses & set(store.ACTIVE_STATES):
            continue
        if not statuses and env.created_at > now - grace:
            continue
        doomed.append(env)
    return doomed


async def sweep(service, only: int | None = None, grace: datetime.timedelta = NO_BUILD_GRACE):
    """Remove launch-made environments that were never built (and any image
    they left). One with an image (built before its history was lost) stays."""
    removed = []
    with service.sessions() as db:
        for env in unbuilt(db, store.utcnow(), grace, only):
            images = await dockerops.environment_images(
                service.docker, service.settings.hub_name, env.name
            )
            if images:
                continue
            log.info("removing launch environment %s: it was never built", env.name)
            removed.append(env.name)
            db.delete(env)
        db.commit()
    if removed:
        service.catalogue.invalidate()
    return removed
