"""Health checks of the environments service (``GET <prefix>health``).

One check per part the service needs: Docker (the engine answers, buildx is
there), the store (answers, schema version), the build queue, free disk (where
Docker keeps images, and the homes), and the hub's API. Results are cached
for a few seconds (a failing one for less, so that recovery shows at once):
a healthy answer costs no I/O most of the time, and never waits for more than
one round of checks run side by side with a timeout each.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .. import validation
from . import store

CHECKS = ("docker", "store", "queue", "disk", "hub")


@dataclass
class Result:
    ok: bool
    message: str
    details: dict = field(default_factory=dict)
    checked_at: float = 0.0

    def model(self) -> dict:
        return {"ok": self.ok, "message": self.message, **self.details}


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_result(paths: dict[str, str], min_free: int) -> Result:
    """Pure apart from statvfs: free space of each named path."""
    details, low = {}, []
    for name, path in paths.items():
        if not path or not os.path.isdir(path):
            details[name] = {"path": path or None, "free_bytes": None}
            continue
        free = free_bytes(path)
        details[name] = {"path": path, "free_bytes": free}
        if free < min_free:
            low.append(f"{name} ({path}): {validation.format_bytes(free)} free")
    if low:
        need = validation.format_bytes(min_free)
        return Result(False, "low disk space: " + "; ".join(low) + f" (want {need})", details)
    return Result(True, "enough free space", details)


def queue_result(running: int, queued: int, oldest: float | None, cap: int, max_wait: float):
    details = {"running": running, "queued": queued, "oldest_queued_seconds": oldest, "cap": cap}
    if running > cap:
        return Result(False, f"{running} builds running with a cap of {cap}", details)
    if oldest is not None and oldest > max_wait:
        return Result(False, f"a build has waited {oldest:.0f} s for a place", details)
    return Result(True, f"{running} running, {queued} queued", details)


class Health:
    def __init__(
        self,
        service,
        ttl: float = 5.0,
        failing_ttl: float = 1.0,
        timeout: float = 2.0,
        min_free_bytes: int = 1 << 30,
        max_queue_wait: float = 3600.0,
        homes_dir: str = "/home",
    ):
        self.service = service
        self.ttl = ttl
        self.failing_ttl = failing_ttl
        self.timeout = timeout
        self.min_free_bytes = min_free_bytes
        self.max_queue_wait = max_queue_wait
        self.homes_dir = homes_dir
        self.docker_root: str | None = None
        self._results: dict[str, Result] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._buildx: tuple[float, Result | None] = (0.0, None)

    # --- the report ---------------------------------------------------------------
    async def report(self) -> tuple[bool, dict]:
        # Docker first: it says where images are kept, for the disk check
        await self.result("docker")
        results = await asyncio.gather(*(self.result(name) for name in CHECKS))
        ok = all(r.ok for r in results)
        checks = {n: r.model() for n, r in zip(CHECKS, results, strict=True)}
        return ok, {"ok": ok, "checks": checks}

    def failing(self) -> dict[str, str]:
        """Checks that failed when last run (no I/O: for every page); a stale
        result is refreshed in the background for the next page."""
        for name in CHECKS:
            if self._stale(name):
                self._start(name)
        return {n: r.message for n, r in self._results.items() if not r.ok}

    def _stale(self, name: str) -> bool:
        result = self._results.get(name)
        if result is None:
            return True
        ttl = self.ttl if result.ok else self.failing_ttl
        return time.monotonic() - result.checked_at > ttl

    def _start(self, name: str) -> asyncio.Task:
        task = self._running.get(name)
        if task is None or task.done():
            task = asyncio.ensure_future(self._run(name))
            self._running[name] = task
        return task

    async def result(self, name: str) -> Result:
        if not self._stale(name):
            return self._results[name]
        return await asyncio.shield(self._start(name))

    async def _run(self, name: str) -> Result:
        check = getattr(self, f"check_{name}")
        try:
            result = await asyncio.wait_for(check(), self.timeout)
        except asyncio.TimeoutError:
            result = Result(False, f"no answer within {self.timeout:g} s")
        except Exception as e:  # a check that breaks is a failing check, with why
            result = Result(False, f"{type(e).__name__}: {e}"[:300])
        result.checked_at = time.monotonic()
        self._results[name] = result
        return result

    # --- the checks ---------------------------------------------------------------
    async def check_docker(self) -> Result:
        docker = self.service.docker
        try:
            version = await docker.ping(self.timeout)
            info = await docker.system.info()
        except Exception as e:
            return Result(False, f"the Docker engine does not answer: {e}"[:300])
        root = info.get("DockerRootDir") or self.docker_root
        if root != self.docker_root:
            self._results.pop("disk", None)  # it checked without knowing where
        self.docker_root = root
        buildx = await self._buildx_result()
        details = {"version": version, "buildx": buildx.details.get("version")}
        builds = getattr(self.service, "builds", None)
        if builds is not None:  # where repo2docker runs: "process" or "container"
            details["build_backend"] = builds.runner.kind
        if not buildx.ok:
            return Result(False, buildx.message, details)
        return Result(True, f"Docker {version} answers", details)

    async def _buildx_result(self) -> Result:
        """repo2docker needs the buildx plugin; asking the CLI takes ~50 ms,
        so its answer is kept for a minute."""
        checked, result = self._buildx
        if result is not None and time.monotonic() - checked < 60:
            return result
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            result = Result(False, "the docker command is missing (repo2docker needs it)")
        else:
            proc = await asyncio.create_subprocess_exec(
                docker_cli,
                "buildx",
                "version",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                out = b"timed out"
            text = out.decode(errors="replace").strip()
            if proc.returncode == 0:
                result = Result(True, "buildx is there", {"version": text.split("\n")[0][:100]})
            else:
                result = Result(False, f"docker buildx is missing: {text[:200]}")
        self._buildx = (time.monotonic(), result)
        return result

    async def check_store(self) -> Result:
        engine = self.service.sessions.engine
        version = await asyncio.to_thread(store.current_schema_version, engine)
        expected = len(store.MIGRATIONS)
        details = {"schema_version": version}
        if version != expected:
            return Result(False, f"schema version {version}, this plugin needs {expected}", details)
        return Result(True, "the database answers", details)

    async def check_queue(self) -> Result:
        builds = self.service.builds
        return queue_result(
            len(builds.running),
            len(builds.waiting),
            builds.oldest_queued_age(),
            builds.concurrency,
            self.max_queue_wait,
        )

    async def check_disk(self) -> Result:
        if self.docker_root is None:
            await self.result("docker")  # it learns where Docker keeps images
        paths = {"images": self.docker_root or "", "homes": self.homes_dir}
        return await asyncio.to_thread(disk_result, paths, self.min_free_bytes)

    async def check_hub(self) -> Result:
        hub = self.service.hub
        request = HTTPRequest(
            hub.api_url + "/user",
            headers={"Authorization": f"token {hub.token}"},
            request_timeout=self.timeout,
        )
        try:
            resp = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            code = e.code
            if code == 599:
                return Result(False, f"the hub's API does not answer: {e}"[:300])
            if code in (401, 403):
                return Result(False, f"the hub refused the service's token ({code})")
            return Result(False, f"the hub's API answered {code}")
        except OSError as e:
            return Result(False, f"the hub's API does not answer: {e}"[:300])
        return Result(True, "the hub's API answers", {"code": resp.code})


class HealthHandler(web.RequestHandler):
    """Unauthenticated, like BinderHub's: what is failing, never a secret."""

    async def get(self):
        ok, report = await self.settings["service"].health.report()
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(report))
