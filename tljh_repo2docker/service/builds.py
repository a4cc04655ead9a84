"""The build queue: repo2docker runs with a concurrency cap, cancel, restart recovery.

- at most ``concurrency`` repo2docker processes at once; queued builds know
  their position;
- an environment has at most one queued or running build (the API says 409);
- a commit that already has an image finishes at once, without a slot;
- cancel stops repo2docker (its process group, or its builder container) and
  removes a partial image;
- the queue outlives the service: a service that stops puts its running
  builds back in the queue, and at start the builds a previous process left
  queued or running (also after ``kill -9``; its repo2docker runs are
  killed first) run again in their order, their logs continued. Only a
  build given credentials (never written anywhere) ends ``interrupted``;
- a running build's log is written to the database every few seconds, so
  that a killed service (``kill -9``) loses at most those seconds of it;
- a build keeps its slot until its final status is written: the database
  never shows more builds running than the cap, even at a hand-off.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import time
from dataclasses import dataclass

import aiodocker
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from .. import gitref, versions
from ..builder import BuildRequest, BuildSettings
from ..buildjob import BuildFailed, run_build
from ..catalogue import Catalogue
from ..imagestore import StoreUnavailable
from ..labels import image_tag
from . import dockerops, store
from .buildlog import BuildLog
from .servers import LocalServers, remove_image

log = logging.getLogger("tljh_repo2docker.service")


class Conflict(RuntimeError):
    pass


class QuotaExceeded(RuntimeError):
    """A user's limit (builds at once, builds a day, environments) is reached."""

    def __init__(self, message: str, quota: str = "other"):
        super().__init__(message)
        # a fixed word (metrics label): builds_at_once, builds_per_day, environments
        self.quota = quota


class HeldSlot:
    """A place under the concurrency cap, held past repo2docker's exit.

    ``run_build`` leaves its ``async with`` when repo2docker exits, but the
    build still shows ``running`` until its final status is written. Were
    the semaphore released there, the next build would start (and show
    ``running``) first: one more running than the cap. So leaving the
    ``async with`` keeps the place; ``release()`` gives it back once the
    final status is in the database.
    """

    def __init__(self, semaphore: asyncio.Semaphore):
        self.semaphore = semaphore
        self.held = False

    async def __aenter__(self):
        await self.semaphore.acquire()
        self.held = True
        return self

    async def __aexit__(self, *exc):
        return False

    def release(self):
        if self.held:
            self.held = False
            self.semaphore.release()


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
        metrics=None,
        log_flush_interval: float = 2.0,
        servers=None,
    ):
        self.metrics = metrics
        self.log_flush_interval = log_flush_interval
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
        # where servers run (which versions are in use): this host by default
        self.servers = servers or LocalServers(docker, settings.hub_name)
        # where repo2docker runs: a child process, or a builder container
        self.runner = settings.build_runner(docker)
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.waiting: list[int] = []
        self.running: set[int] = set()
        self.queued_at: dict[int, float] = {}  # monotonic time a build was queued
        self.tasks: dict[int, asyncio.Task] = {}
        self.logs: dict[int, BuildLog] = {}
        # what was last written of each live log: (head lines, line count)
        self._flushed: dict[int, tuple[int, int]] = {}
        # field updates a locked database refused, written by the flusher
        self._pending: dict[int, dict] = {}
        self._flusher: asyncio.Task | None = None

    # --- queries ----------------------------------------------------------------
    def position(self, build_id: int) -> int | None:
        """1-based place in the queue of a build waiting for a slot."""
        try:
            return self.waiting.index(build_id) + 1
        except ValueError:
            return None

    def oldest_queued_age(self) -> float | None:
        """Seconds the longest-waiting queued build has waited, or None."""
        times = [self.queued_at[b] for b in self.waiting if b in self.queued_at]
        return round(time.monotonic() - min(times), 3) if times else None

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
        archive_version: str = "",
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
            # an admin's build: local repositories and any base image
            trusted=exempt,
            archive_version=archive_version,
            resumable=credentials is None,
        )
        db.add(build)
        db.commit()
        self._enqueue(build.id, build_request(environment, build), credentials, self._new_log())
        return build

    def _new_log(self, credentials: Credentials | None = None) -> BuildLog:
        return BuildLog(
            head_size=self.log_head,
            tail_size=self.log_tail,
            redact=redactor(credentials.secrets() if credentials else []),
            max_line_bytes=self.settings.log_max_line_bytes,
            max_bytes=self.settings.log_max_bytes,
        )

    def _enqueue(
        self,
        build_id: int,
        request: BuildRequest,
        credentials: Credentials | None,
        buildlog: BuildLog,
    ):
        self.logs[build_id] = buildlog
        self.waiting.append(build_id)
        self.queued_at[build_id] = time.monotonic()
        self._start_flusher()
        task = asyncio.ensure_future(self._run(build_id, request, credentials))
        self.tasks[build_id] = task
        task.add_done_callback(lambda _t, bid=build_id: self._forget(bid))

    def check_quota(self, db, user: str):
        """Builds a user may start: at once, and in 24 hours (admins are exempt)."""
        mine = select(func.count(store.Build.id)).where(store.Build.requested_by == user)
        running = db.scalar(mine.where(store.Build.status.in_(store.ACTIVE_STATES)))
        if running >= self.max_concurrent_per_user:
            self._count_refusal("builds_at_once")
            raise QuotaExceeded(
                f"you have {running} builds queued or running, the most allowed at once here",
                "builds_at_once",
            )
        since = store.utcnow() - datetime.timedelta(days=1)
        today = db.scalar(mine.where(store.Build.created_at >= since, ~store.Build.cached))
        if today >= self.max_daily_per_user:
            self._count_refusal("builds_per_day")
            raise QuotaExceeded(
                f"you have started {today} builds in 24 hours, the most allowed", "builds_per_day"
            )

    def _count_refusal(self, quota: str):
        if self.metrics is not None:
            self.metrics.quota_refused(quota)

    def _forget(self, build_id: int):
        self.tasks.pop(build_id, None)
        if build_id in self.waiting:
            self.waiting.remove(build_id)
        self.running.discard(build_id)
        self.queued_at.pop(build_id, None)
        self.logs.pop(build_id, None)
        self._flushed.pop(build_id, None)
        self._pending.pop(build_id, None)

    def cancel(self, build_id: int) -> bool:
        task = self.tasks.get(build_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def shutdown(self):
        """Stop every build (service stopping): they end ``interrupted``."""
        self.shutting_down = True
        if self._flusher is not None:
            self._flusher.cancel()
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
        """Write fields of a build now; if another process holds the
        database's lock, the flusher writes them a moment later (a build
        must not fail, nor the event loop wait, because of a busy database)."""
        fields = {**self._pending.pop(build_id, {}), **fields}
        try:
            self._write(build_id, fields)
        except OperationalError as e:
            log.warning("build %s: database busy, writing its state later: %s", build_id, e)
            self._pending[build_id] = fields

    def _write(self, build_id: int, fields: dict):
        with self.sessions() as db:
            build = db.get(store.Build, build_id)
            if build is None:
                return
            for key, value in fields.items():
                setattr(build, key, value)
            db.commit()

    def _log_fields(self, build_id: int, buildlog: BuildLog) -> dict | None:
        """The log columns to write, or None when nothing changed since the
        last write. The head (first lines) stops changing once full, so a
        long build rewrites only its bounded tail: the cost per write is
        bounded by ``log_tail`` lines, whatever the log's length."""
        head_len, count = len(buildlog.head), buildlog.count
        last = self._flushed.get(build_id, (-1, -1))
        if count == last[1]:
            return None
        head, tail, count = buildlog.stored()
        fields = {"log_tail": tail, "log_lines": count}
        if head_len != last[0]:
            fields["log_head"] = head
        self._flushed[build_id] = (head_len, count)
        return fields

    def flush_logs(self):
        """Write what changed of every live log (and updates a locked
        database refused before)."""
        for build_id, buildlog in list(self.logs.items()):
            if buildlog.finished:
                continue
            fields = dict(self._pending.get(build_id, {}))
            log_fields = self._log_fields(build_id, buildlog)
            fields.update(log_fields or {})
            if not fields:
                continue
            try:
                self._write(build_id, fields)
                self._pending.pop(build_id, None)
            except OperationalError as e:
                self._flushed.pop(build_id, None)  # write the whole log next time
                log.warning("build %s: database busy, log written later: %s", build_id, e)

    def _start_flusher(self):
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_forever())

    async def _flush_forever(self):
        while self.tasks or self.logs:
            await asyncio.sleep(self.log_flush_interval)
            try:
                self.flush_logs()
            except Exception:  # never let the flusher die: logs would stop being kept
                log.exception("could not write build logs")

    async def _write_final(self, build_id: int, fields: dict, timeout: float = 600):
        """The final state must reach the database: retry while it is locked,
        without blocking the event loop between tries."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._write(build_id, fields)
                return
            except OperationalError as e:
                if time.monotonic() > deadline:
                    log.error("build %s: final state not written: %s", build_id, e)
                    return
                await asyncio.sleep(0.5)

    async def _run(self, build_id: int, request: BuildRequest, credentials: Credentials | None):
        buildlog = self.logs[build_id]
        env = gitref.git_env(credentials.git_env() if credentials else None)
        status, fields = store.FAILED, {}
        slot = HeldSlot(self.slots)
        requeue = False

        def on_running():
            if build_id in self.waiting:
                self.waiting.remove(build_id)
            self.running.add(build_id)
            if self.metrics is not None and build_id in self.queued_at:
                self.metrics.queue_wait(time.monotonic() - self.queued_at[build_id])
            self._update(build_id, status=store.RUNNING, started_at=store.utcnow())

        try:
            result = await run_build(
                self.settings,
                request,
                lambda line: buildlog.append(line.phase, line.message),
                docker=self.docker,
                env=env,
                slot=slot,
                on_running=on_running,
                on_spawn=lambda pid: self._update(build_id, pid=pid),
                on_resolved=lambda commit: self._update(build_id, commit=commit),
                build_runner=self.runner,
                job=str(build_id),
            )
            status = store.SUCCEEDED
            fields = {"commit": result.commit, "image": result.image, "cached": result.cached}
            if not result.cached:
                await self.collect_garbage(buildlog)
        except asyncio.CancelledError:
            if self.shutting_down and credentials is None:
                # back in the queue: the next start of the service runs it again
                requeue = True
                buildlog.append(
                    "waiting",
                    "The environments service is stopping: this build starts again "
                    "when it is back\n",
                )
            elif self.shutting_down:
                status = store.INTERRUPTED
                fields = {"error": f"the environments service stopped during this build{UNSAVED}"}
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
            final = {**self._pending.pop(build_id, {}), **fields}
            waited = time.monotonic() - self.queued_at.get(build_id, time.monotonic())
            final.update(status=status, finished_at=now, pid=None)
            final.update(log_head=head, log_tail=tail, log_lines=count)
            if requeue:
                # queued again, not ended: no end time, no metrics. A failed
                # write leaves it "running", which the next start resumes too.
                final.update(status=store.QUEUED, started_at=None, finished_at=None)
                try:
                    self._write(build_id, final)
                except OperationalError as e:
                    log.warning("build %s: left as it was for the next start: %s", build_id, e)
                self.running.discard(build_id)
                slot.release()
                buildlog.finish()
            else:
                await self._finish(build_id, final, status, now, waited, slot, buildlog)

    async def _finish(self, build_id, final, status, now, waited, slot, buildlog):
        started = None
        try:
            with self.sessions() as db:
                build = db.get(store.Build, build_id)
                started = build.started_at if build is not None else None
            final["started_at"] = started or final.get("started_at") or now
            await self._write_final(build_id, final)
        finally:
            # the place under the cap is free only once the database
            # says this build is no longer running
            self.running.discard(build_id)
            slot.release()
            buildlog.finish()
            self.catalogue.invalidate()
        if self.metrics is not None:
            # repo2docker's run time; a cached build never ran it: its time in all
            duration = (now - started).total_seconds() if started else waited
            self.metrics.build_finished(status, bool(final.get("cached")), duration)

    async def collect_garbage(self, buildlog: BuildLog | None = None):
        """Remove old versions beyond the limits (never one a container uses)."""
        try:
            images = await self.catalogue.images(fresh=True)
            in_use = await self.servers.images_in_use()
            doomed = versions.to_collect(images, in_use, self.max_versions, self.max_image_disk)
            for info in doomed:
                await remove_image(self.docker, self.catalogue, info.image)
                log.info("removed old version %s", info.image)
                if buildlog is not None:
                    buildlog.append("built", f"Removed the old version {info.image}\n")
        except (aiodocker.DockerError, StoreUnavailable, ValueError) as e:
            # a full disk or a registry that refuses must not fail the build
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
    async def recover(self) -> tuple[int, int]:
        """Take up the builds a previous process left queued or running:
        run them again in their order, or mark them ``interrupted`` when
        they cannot be (credentials). Returns (resumed, interrupted)."""
        resumed: list[tuple[int, BuildRequest, BuildLog]] = []
        with self.sessions() as db:
            pids = {
                str(build.id): build.pid
                for build in db.scalars(
                    select(store.Build).where(store.Build.status.in_(store.ACTIVE_STATES))
                )
            }
        # first the repo2docker runs a previous process left: a child process
        # (by its recorded pid) or a builder container (by its labels)
        try:
            await self.runner.reap(pids)
        except Exception as e:  # Docker away: the service starts anyway (degraded)
            log.warning("could not look for builds a previous process left: %s", e)
        with self.sessions() as db:
            stale = db.scalars(
                select(store.Build)
                .where(store.Build.status.in_(store.ACTIVE_STATES))
                .order_by(store.Build.id)
            ).all()
            for build in stale:
                build.pid = None
                if build.resumable:
                    buildlog = self._new_log().resume(
                        build.log_head, build.log_tail, build.log_lines or 0
                    )
                    if build.status == store.RUNNING:
                        buildlog.append(
                            "waiting",
                            "The environments service restarted: this build starts again\n",
                        )
                    build.status, build.started_at = store.QUEUED, None
                    resumed.append((build.id, build_request(build.environment, build), buildlog))
                    continue
                build.status = store.INTERRUPTED
                build.error = f"the environments service restarted during this build{UNSAVED}"
                # the log written so far stays, with the reason as its last line
                buildlog = self._new_log().resume(
                    build.log_head, build.log_tail, build.log_lines or 0
                )
                buildlog.append("failed", "Interrupted: the service restarted\n")
                build.log_head, build.log_tail, build.log_lines = buildlog.stored()
                build.finished_at = store.utcnow()
            db.commit()
        for build_id, request, buildlog in resumed:
            self._enqueue(build_id, request, None, buildlog)
        return len(resumed), len(stale) - len(resumed)


# why a build given credentials is not run again after a restart
UNSAVED = " (its repository's credentials are never stored: start it again)"


def build_request(environment: store.Environment, build: store.Build) -> BuildRequest:
    """What repo2docker is asked to build for ``build``: the environment's
    recipe now, at the build's ref, with the build's own permissions."""
    return BuildRequest(
        name=environment.name,
        repo=environment.repo,
        ref=build.ref,
        display_name=environment.display_name,
        mem_limit=environment.mem_limit,
        cpu_limit=environment.cpu_limit,
        built_by=build.requested_by,
        build_args=tuple(sorted(json.loads(environment.build_args or "{}").items())),
        owner=environment.owner,
        visibility=environment.visibility,
        copy_files=environment.copy_files,
        trusted=build.trusted,
        archive_version=build.archive_version,
    )
