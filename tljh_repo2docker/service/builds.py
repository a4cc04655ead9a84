"""The build queue: repo2docker runs with a concurrency cap, cancel, restart recovery.

- at most ``concurrency`` repo2docker processes at once; queued builds know
  their position;
- an environment has at most one queued or running build (the API says 409);
- a commit that already has an image finishes at once, without a slot;
- cancel kills repo2docker's process group and removes a partial image;
- at start, builds a previous service process left queued or running are
  marked ``interrupted``, their processes killed, their partial images removed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import os
import signal
from dataclasses import dataclass

import aiodocker
from sqlalchemy import func, select

from .. import gitref, versions
from ..builder import BuildRequest, BuildSettings
from ..buildjob import BuildFailed, run_build
from ..catalogue import Catalogue
from ..labels import image_tag
from . import dockerops, store
from .buildlog import BuildLog

log = logging.getLogger("tljh_repo2docker.service")


class Conflict(RuntimeError):
    pass


class QuotaExceeded(RuntimeError):
    """A user's limit (builds at once, builds a day, environments) is reached."""


@dataclass(frozen=True)
class Credentials:
    """Username and token for a private repository: held in memory for one
    build, never stored, logged, labelled or shown back."""

    username: str
    token: str

    def git_env(self) -> dict[str, str]:
        basic = base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
        # Passed to git through the environment (never argv, never a URL).
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    def secrets(self) -> list[str]:
        basic = base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
        return [s for s in (self.token, basic) if len(s) >= 4]


def redactor(secrets: list[str]):
    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "********")
        return text

    return redact


class BuildManager:
    def __init__(
        self,
        sessions,
        settings: BuildSettings,
        docker: aiodocker.Docker,
        catalogue: Catalogue,
        concurrency: int = 1,
        log_head: int = 1000,
        log_tail: int = 2000,
        max_concurrent_per_user: int = 1,
        max_daily_per_user: int = 20,
        max_versions: int = 5,
        max_image_disk: int | None = None,
    ):
        self.max_versions = max_versions
        self.max_image_disk = max_image_disk
        self.max_concurrent_per_user = max_concurrent_per_user
        self.max_daily_per_user = max_daily_per_user
        self.log_head = log_head
        self.log_tail = log_tail
        self.shutting_down = False
        self.sessions = sessions
        self.settings = settings
        self.docker = docker
        self.catalogue = catalogue
        self.slots = asyncio.Semaphore(concurrency)
        self.waiting: list[int] = []
        self.tasks: dict[int, asyncio.Task] = {}
        self.logs: dict[int, BuildLog] = {}

    # --- queries ----------------------------------------------------------------
    def position(self, build_id: int) -> int | None:
        """1-based place in the queue of a build waiting for a slot."""
        try:
            return self.waiting.index(build_id) + 1
        except ValueError:
            return None

    def log_for(self, build: store.Build) -> BuildLog:
        live = self.logs.get(build.id)
        if live is not None:
            return live
        return BuildLog.from_stored(build.log_head, build.log_tail, build.log_lines)

    # --- starting ---------------------------------------------------------------
    def start(
        self,
        db,
        environment: store.Environment,
        requested_by: str,
        credentials: Credentials | None = None,
        ref: str | None = None,
        exempt: bool = True,
    ) -> store.Build:
        """Queue a build of ``environment`` at its ref (or ``ref``); Conflict if
        one is active."""
        ref = environment.ref if ref is None else ref
        active = store.active_build(db, environment)
        if active is not None:
            raise Conflict(f"build {active.id} of {environment.name} is already {active.status}")
        if not exempt:
            self.check_quota(db, requested_by)
        build = store.Build(
            environment_id=environment.id,
            ref=ref,
            requested_by=requested_by,
            status=store.QUEUED,
        )
        db.add(build)
        db.commit()
        request = BuildRequest(
            name=environment.name,
            repo=environment.repo,
            ref=ref,
            display_name=environment.display_name,
            mem_limit=environment.mem_limit,
            cpu_limit=environment.cpu_limit,
            built_by=requested_by,
            build_args=tuple(sorted(json.loads(environment.build_args or "{}").items())),
            owner=environment.owner,
            visibility=environment.visibility,
        )
        self.logs[build.id] = BuildLog(
            head_size=self.log_head,
            tail_size=self.log_tail,
            redact=redactor(credentials.secrets() if credentials else []),
        )
        self.waiting.append(build.id)
        task = asyncio.ensure_future(self._run(build.id, request, credentials))
        self.tasks[build.id] = task
        task.add_done_callback(lambda _t, bid=build.id: self._forget(bid))
        return build

    def check_quota(self, db, user: str):
        """Builds a user may start: at once, and in 24 hours (admins are exempt)."""
        mine = select(func.count(store.Build.id)).where(store.Build.requested_by == user)
        running = db.scalar(mine.where(store.Build.status.in_(store.ACTIVE_STATES)))
        if running >= self.max_concurrent_per_user:
            raise QuotaExceeded(
                f"you have {running} builds queued or running, the most allowed at once here"
            )
        since = store.utcnow() - datetime.timedelta(days=1)
        today = db.scalar(mine.where(store.Build.created_at >= since, ~store.Build.cached))
        if today >= self.max_daily_per_user:
            raise QuotaExceeded(f"you have started {today} builds in 24 hours, the most allowed")

    def _forget(self, build_id: int):
        self.tasks.pop(build_id, None)
        if build_id in self.waiting:
            self.waiting.remove(build_id)
        self.logs.pop(build_id, None)

    def cancel(self, build_id: int) -> bool:
        task = self.tasks.get(build_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def shutdown(self):
        """Stop every build (service stopping): they end ``interrupted``."""
        self.shutting_down = True
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def wait(self, build_id: int):
        """Until the build's task has finished (for tests and the CLI)."""
        task = self.tasks.get(build_id)
        if task is not None:
            await asyncio.wait([task])

    # --- running ----------------------------------------------------------------
    def _update(self, build_id: int, **fields):
        with self.sessions() as db:
            build = db.get(store.Build, build_id)
            for key, value in fields.items():
                setattr(build, key, value)
            db.commit()

    async def _run(self, build_id: int, request: BuildRequest, credentials: Credentials | None):
        buildlog = self.logs[build_id]
        env = gitref.git_env(credentials.git_env() if credentials else None)
        status, fields = store.FAILED, {}

        def on_running():
            if build_id in self.waiting:
                self.waiting.remove(build_id)
            self._update(build_id, status=store.RUNNING, started_at=store.utcnow())

        try:
            result = await run_build(
                self.settings,
                request,
                lambda line: buildlog.append(line.phase, line.message),
                docker=self.docker,
                env=env,
                slot=self.slots,
                on_running=on_running,
                on_spawn=lambda pid: self._update(build_id, pid=pid),
                on_resolved=lambda commit: self._update(build_id, commit=commit),
            )
            status = store.SUCCEEDED
            fields = {"commit": result.commit, "image": result.image, "cached": result.cached}
            if not result.cached:
                await self.collect_garbage(buildlog)
        except asyncio.CancelledError:
            if self.shutting_down:
                status = store.INTERRUPTED
                fields = {"error": "the environments service stopped during this build"}
                buildlog.append("failed", "Interrupted: the environments service stopped\n")
            else:
                status = store.CANCELLED
                buildlog.append("cancelled", "Build cancelled\n")
            await self._remove_partial_image(build_id, request)
        except BuildFailed as e:
            fields = {"error": str(e)}
            buildlog.append("failed", f"{e}\n")
        except Exception as e:  # the reason reaches the log, not a traceback page
            log.exception("build %s failed", build_id)
            fields = {"error": f"internal error: {e}"}
            buildlog.append("failed", f"Internal error: {e}\n")
        finally:
            head, tail, count = buildlog.stored()
            now = store.utcnow()
            with self.sessions() as db:
                build = db.get(store.Build, build_id)
                build.status = status
                build.finished_at = now
                build.started_at = build.started_at or now
                build.pid = None
                build.log_head, build.log_tail, build.log_lines = head, tail, count
                for key, value in fields.items():
                    setattr(build, key, value)
                db.commit()
            buildlog.finish()
            self.catalogue.invalidate()

    async def collect_garbage(self, buildlog: BuildLog | None = None):
        """Remove old versions beyond the limits (never one a container uses)."""
        try:
            images = await self.catalogue.images(fresh=True)
            in_use = await dockerops.images_in_use(self.docker)
            doomed = versions.to_collect(images, in_use, self.max_versions, self.max_image_disk)
            for info in doomed:
                await dockerops.remove_image(self.docker, info.image)
                log.info("removed old version %s", info.image)
                if buildlog is not None:
                    buildlog.append("built", f"Removed the old version {info.image}\n")
        except aiodocker.DockerError as e:  # a full disk must not fail the build
            log.warning("could not remove old versions: %s", e)
        finally:
            self.catalogue.invalidate()

    async def _remove_partial_image(self, build_id: int, request: BuildRequest):
        """After a cancel: remove the image if this build tagged it and no
        successful build owns it."""
        with self.sessions() as db:
            build = db.get(store.Build, build_id)
            commit = build.commit
        if not commit:
            return
        tag = image_tag(self.settings.image_prefix, request.name, commit)
        with self.sessions() as db:
            owned = db.scalars(
                select(store.Build).where(
                    store.Build.image == tag, store.Build.status == store.SUCCEEDED
                )
            ).first()
        if owned is None:
            try:
                await dockerops.remove_image(self.docker, tag)
            except aiodocker.DockerError as e:
                log.warning("could not remove partial image %s: %s", tag, e)

    # --- restart recovery -------------------------------------------------------
    async def recover(self):
        """Mark builds left active by a previous process ``interrupted``."""
        with self.sessions() as db:
            stale = db.scalars(
                select(store.Build).where(store.Build.status.in_(store.ACTIVE_STATES))
            ).all()
            for build in stale:
                if build.pid and _is_repo2docker(build.pid):
                    log.warning("killing repo2docker (pid %s) of interrupted build", build.pid)
                    try:
                        os.killpg(build.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                build.status = store.INTERRUPTED
                build.error = "the environments service restarted during this build"
                build.finished_at = store.utcnow()
                build.pid = None
            db.commit()
        return len(stale)


def _is_repo2docker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"repo2docker" in f.read()
    except OSError:
        return False
