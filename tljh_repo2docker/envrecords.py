"""What changes about an environment, read from the service's database.

An image carries what never changes (hub, environment, repository, commit,
build time) and, as labels, what an admin may change later: display name,
limits, owner, visibility, the course-copy switch. On one host the service
rewrites those labels on every change; an image pushed to a registry
(issue 12) cannot be rewritten, so the database is where they are true.
The catalogue lays the database's values over the labels (``overlay``),
in the hub as in the service.

The hub reads the database file itself, not the service's API: pickers and
spawns keep working while the service is down or restarting. An environment
the database does not know (built by the CLI, not adopted yet) keeps its
labels. A database that cannot be read (missing, not migrated yet, locked)
means labels only, never a failed picker.

Going back to an older commit is a build that finds the image already
built (``cached``); on one host it relabels the image's build time, in a
registry it cannot, so such a build's end time counts as the image's
``built_at`` when it is newer: the newest wins, as everywhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import time
from dataclasses import dataclass, field

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .labels import ImageInfo, built_at_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvironmentRecord:
    """One environment's changeable facts as the database holds them."""

    display_name: str
    mem_limit: int | None
    cpu_limit: float | None
    owner: str
    visibility: str
    copy_files: bool
    # commit -> when a build last made it current again (ISO, UTC)
    made_current: dict[str, str] = field(default_factory=dict)


def iso(moment: datetime.datetime) -> str:
    """A database time (naive UTC) as a ``built_at`` label would say it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def overlay(images: list[ImageInfo], records: dict[str, EnvironmentRecord]) -> list[ImageInfo]:
    """``images`` with the database's values where it has a record (pure)."""
    if not records:
        return images
    result = []
    for info in images:
        record = records.get(info.environment)
        if record is None:
            result.append(info)
            continue
        built_at = info.built_at
        current = record.made_current.get(info.commit)
        if current and built_at_key(current) > built_at_key(built_at):
            built_at = current
        result.append(
            dataclasses.replace(
                info,
                display_name=record.display_name or info.display_name,
                mem_limit=record.mem_limit,
                cpu_limit=record.cpu_limit,
                owner=record.owner,
                visibility=record.visibility,
                copy_files=record.copy_files,
                built_at=built_at,
            )
        )
    return result


def read_records(engine: Engine) -> dict[str, EnvironmentRecord]:
    """Every environment's record (one query each for environments and
    cached builds; an index-backed scan even with many builds)."""
    from .service import store  # the models; no service code runs here

    made_current: dict[str, dict[str, str]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                store.Environment.name,
                store.Build.commit,
                func.max(store.Build.finished_at),
            )
            .join(store.Build, store.Build.environment_id == store.Environment.id)
            .where(
                store.Build.status == store.SUCCEEDED,
                store.Build.cached.is_(True),
                store.Build.finished_at.is_not(None),
            )
            .group_by(store.Environment.name, store.Build.commit)
        )
        for name, commit, finished in rows:
            if commit and finished is not None:
                made_current.setdefault(name, {})[commit] = iso(finished)
        envs = conn.execute(
            select(
                store.Environment.name,
                store.Environment.display_name,
                store.Environment.mem_limit,
                store.Environment.cpu_limit,
                store.Environment.owner,
                store.Environment.visibility,
                store.Environment.copy_files,
            )
        )
        return {
            name: EnvironmentRecord(
                display_name=display_name or "",
                mem_limit=mem_limit,
                cpu_limit=cpu_limit,
                owner=owner or "",
                visibility=visibility or "public",
                copy_files=bool(copy_files),
                made_current=made_current.get(name, {}),
            )
            for name, display_name, mem_limit, cpu_limit, owner, visibility, copy_files in envs
        }


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///path`` URL (None for other databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return path or None


class EnvironmentRecords:
    """The database's records, cached for ``max_age`` seconds.

    Made from a URL (the hub: its own read-only use of the service's
    database, which it never creates or migrates) or an engine (the
    service: its own).
    """

    def __init__(
        self, url: str = "", engine: Engine | None = None, max_age: float = 0.5, timeout=2.0
    ):
        self.url = url
        self._engine = engine
        self.max_age = max_age
        self.timeout = timeout
        self._records: dict[str, EnvironmentRecord] = {}
        self._read_at = float("-inf")
        self._warned = False

    def _connect(self) -> Engine | None:
        if self._engine is None:
            path = sqlite_path(self.url)
            if path is not None and not os.path.exists(path):
                return None  # not made yet: the service creates it
            kwargs = {"connect_args": {"timeout": self.timeout}} if path else {}
            self._engine = create_engine(self.url, **kwargs)
        return self._engine

    def invalidate(self):
        self._read_at = float("-inf")

    def read(self) -> dict[str, EnvironmentRecord]:
        """The records now (blocking: call from a thread in a server)."""
        try:
            engine = self._connect()
            records = {} if engine is None else read_records(engine)
        except SQLAlchemyError as e:
            # not migrated yet (the hub starts before the service), locked,
            # or gone: the labels hold the values of the last change too
            if not self._warned:
                log.warning("environment records unreadable, using image labels: %s", e)
                self._warned = True
            records = {}
        else:
            self._warned = False
        self._records = records
        self._read_at = time.monotonic()
        return records

    async def get(self) -> dict[str, EnvironmentRecord]:
        if time.monotonic() - self._read_at <= self.max_age:
            return self._records
        return await asyncio.to_thread(self.read)

    def close(self):
        if self._engine is not None and self.url:
            self._engine.dispose()
            self._engine = None
