"""Environments service figures: listing, loop lag under builds, log latency, cached builds, RSS.

    .venv/bin/python benchmarks/service.py [--environments 500] [--streams 50]

Starts one real hub (tests/hubprocess.HubProcess: JupyterHub, configurable-http-proxy and the
hub-managed environments service, with ``build_concurrency: 2``), fills the service's SQLite
database with many environments, runs real repo2docker builds of local Dockerfile
repositories and measures over HTTP from outside the service. Figures are printed (median,
p90, p95, ratio to a baseline measured in the same run), never asserted. Everything it
creates is removed on exit, also on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.dockerfixtures import SINGLEUSER_IMAGE, remove_hub_objects  # noqa: E402
from tests.hubprocess import (  # noqa: E402
    OFFLINE_R2D_CONFIG,
    HubProcess,
    free_port,
    missing_tools,
)
from tljh_repo2docker import gitref, labels  # noqa: E402
from tljh_repo2docker.builder import BuildRequest, BuildSettings, repo2docker_argv  # noqa: E402

DEV_CONFIG = ROOT / "dev" / "jupyterhub_config.py"
IMAGE_PREFIX = "tljh-r2d-bench/"
SERVICE_PREFIX = "/services/environments"
API = SERVICE_PREFIX + "/api/v1"
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
BUILD_TIMEOUT = 600.0
TS_RE = re.compile(r"TS (\d{9,11}\.\d+)")

# Targets of the issue (seconds)
LIST_P95 = 0.020
LAG_P99 = 0.020
LOG_P95 = 0.100
CACHED_MEDIAN = 0.500
HEALTH_P95 = 0.050
METRICS_P95 = 0.100


# --- small helpers -------------------------------------------------------------------
def log(message: str = ""):
    print(message, flush=True)


def quantile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values) -> float:
    return quantile(values, 0.5)


def fmt_ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f}"


def dist(values, p99: bool = False) -> str:
    """median / p90 / p95 (/ p99) / max in ms, and n."""
    if not values:
        return "no samples"
    parts = [
        f"median {fmt_ms(median(values))}",
        f"p90 {fmt_ms(quantile(values, 0.9))}",
        f"p95 {fmt_ms(quantile(values, 0.95))}",
    ]
    if p99:
        parts.append(f"p99 {fmt_ms(quantile(values, 0.99))}")
    parts.append(f"max {fmt_ms(max(values))} ms (n={len(values)})")
    return ", ".join(parts)


def ratio(a: float, b: float) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def verdict(value: float, target: float) -> str:
    if value is None or math.isnan(value):
        return "no data"
    if value < target:
        return f"met ({value * 1000:.1f} < {target * 1000:.0f} ms)"
    return (
        f"MISSED by {(value - target) * 1000:.1f} ms "
        f"({value * 1000:.1f} >= {target * 1000:.0f} ms, {value / target:.1f}x the target)"
    )


def git(path: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", *args],
        cwd=path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def make_repo(path: Path, dockerfile: str) -> tuple[str, str]:
    """A local git repository holding only ``dockerfile``: (file:// URL, commit)."""
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(dockerfile)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, "commit", "-qm", "benchmark")
    return f"file://{path}", git(path, "rev-parse", "HEAD")


def quick_dockerfile(nonce: str) -> str:
    return f"FROM {SINGLEUSER_IMAGE}\nRUN echo {nonce} > /tmp/bench-marker\n"


def ts_dockerfile(nonce: str, lines: int, sleep: float) -> str:
    """One RUN step printing ``lines`` lines with the time they were printed."""
    # the nonce keeps BuildKit from answering the step from its cache
    return (
        f"FROM {SINGLEUSER_IMAGE}\n"
        f"RUN echo {nonce}; for i in $(seq 1 {lines}); do "
        f'echo "TS $(date +%s.%N) line $i"; sleep {sleep}; done\n'
    )


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def service_pid(hub_pid: int) -> int:
    """The environments service among the hub's descendants (not a search of all processes)."""
    todo, seen = [hub_pid], set()
    while todo and len(seen) < 200:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        for child in children(pid):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"tljh_repo2docker.service" in argv:
                return child
            todo.append(child)
    raise RuntimeError(f"no tljh_repo2docker.service process below the hub (pid {hub_pid})")


def show_slow(loop_log: Path | None, lo: float, hi: float, when: str):
    if loop_log is None:
        return
    time.sleep(0.6)  # the monitor writes its file every 0.5 s
    _, slow = read_loop_log(loop_log)
    log(f"  service callbacks of 5 ms or more, blocking waits of 1 ms or more {when}:")
    for row in slow_table(slow, lo, hi, top=4) or ["none"]:
        log(f"      {row}")


# --- the hub ------------------------------------------------------------------------------
# The project's config as is. Included rather than passed with -f so that the hub's command
# line differs from a demo hub's: other processes on a shared machine that stop "their" hub by
# matching dev/jupyterhub_config.py must not stop this one.
#
# The service reads tljh-config's repo2docker.build_concurrency into self.config after its
# traits were configured (EnvironmentsService.load_plugin_settings), so the value in
# config.yaml does not reach its own traits; the same value is also passed on the service's
# command line, which does. Harmless once the service applies config.yaml itself.
HUB_CONFIG = """\
# Written by benchmarks/service.py: the project's hub config, then the service's flag and
# (optionally) the loop monitor's environment.
c = get_config()  # noqa: F821
load_subconfig({dev_config!r})  # noqa: F821
for service in c.JupyterHub.services:
    if service.get("name") == "environments":
        service["command"] = [
            *service["command"],
            "--EnvironmentsService.build_concurrency={concurrency}",
        ]
        service["environment"] = {{**service.get("environment", {{}}), **{monitor_env!r}}}
"""

# sitecustomize.py for the service process only (PYTHONPATH in its environment): an
# in-process view of its asyncio loop, without changing the service. A timer due every
# 20 ms records how late it runs (the loop's lag), and every callback that runs for 5 ms or
# more is recorded with the coroutine or function it ran (what caused the lag). Overhead: a
# few attribute reads and two perf_counter calls per callback.
LOOP_MONITOR = r'''"""Written by benchmarks/service.py: times the service's asyncio loop."""
import asyncio
import asyncio.events
import atexit
import concurrent.futures._base
import os
import sys
import threading
import time

_path = os.environ.get("TLJH_R2D_BENCH_LOOP_LOG")
if _path:
    _out = open(_path, "a", buffering=1 << 16)
    atexit.register(_out.flush)
    _orig_run = asyncio.events.Handle._run
    _orig_result = concurrent.futures._base.Future.result
    _main = threading.main_thread().ident
    _loops = set()
    _INTERVAL = 0.02
    _SLOW = 0.005

    def _name(cb, frame):
        task = getattr(cb, "__self__", None)
        if isinstance(task, asyncio.Task):
            coro = task.get_coro()
            code = getattr(coro, "cr_code", None)
            name = code.co_qualname if code is not None else repr(coro)[:80]
            # the frame as it was before the step: a finished one still has its locals
            owner = frame.f_locals.get("self") if frame is not None else None
            if owner is not None and type(owner).__name__ not in name:
                name += f" [{type(owner).__name__}]"
            return "task " + name
        func = getattr(cb, "__func__", cb)
        return getattr(func, "__qualname__", None) or repr(cb)[:80]

    def _tick(loop, due, count):
        now = loop.time()
        _out.write(f"L {time.time():.6f} {now - due:.6f}\n")
        if count % 25 == 0:
            _out.flush()
        loop.call_at(now + _INTERVAL, _tick, loop, now + _INTERVAL, count + 1)

    def _run(self):
        if threading.get_ident() != _main:  # e.g. HubAuth's own loop in its thread
            return _orig_run(self)
        loop = self._loop
        if id(loop) not in _loops:
            _loops.add(id(loop))
            loop.call_soon(_tick, loop, loop.time(), 1)
        task = getattr(self._callback, "__self__", None)
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        frame = getattr(coro, "cr_frame", None)
        start = time.perf_counter()
        try:
            return _orig_run(self)
        finally:
            took = time.perf_counter() - start
            if took >= _SLOW:
                name = _name(self._callback, frame)
                _out.write(f"S {time.time():.6f} {took:.6f} {name}\n")

    def _result(self, timeout=None):
        # a blocking wait for another thread in the loop's thread, with who waited
        if threading.get_ident() != _main or self.done():
            return _orig_result(self, timeout)
        start = time.perf_counter()
        try:
            return _orig_result(self, timeout)
        finally:
            took = time.perf_counter() - start
            code = sys._getframe(1).f_code
            _out.write(f"B {time.time():.6f} {took:.6f} {code.co_qualname}\n")

    asyncio.events.Handle._run = _run
    concurrent.futures._base.Future.result = _result
'''


def read_loop_log(path: Path | None) -> tuple[list, list]:
    """([(wall time, lag)], [(wall time, duration, name)]) from the monitor's file; blocking
    waits are among the slow callbacks as "blocked in <function>"."""
    lags, slow = [], []
    if path is None or not path.exists():
        return lags, slow
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        try:
            if parts[0] == "L" and len(parts) == 3:
                lags.append((float(parts[1]), float(parts[2])))
            elif parts[0] == "S" and len(parts) == 4:
                slow.append((float(parts[1]), float(parts[2]), parts[3]))
            elif parts[0] == "B" and len(parts) == 4 and float(parts[2]) >= 0.001:
                slow.append((float(parts[1]), float(parts[2]), "blocked in " + parts[3]))
        except ValueError:
            continue
    return lags, slow


def slow_table(slow, lo: float, hi: float, top: int = 6) -> list[str]:
    """The callbacks of 5 ms or more (and blocking waits of 1 ms or more) in [lo, hi], grouped
    by name, largest total first."""
    groups: dict[str, list[float]] = {}
    for when, took, name in slow:
        if lo <= when <= hi:
            groups.setdefault(name, []).append(took)
    rows = sorted(groups.items(), key=lambda item: -sum(item[1]))[:top]
    return [
        f"{len(v):5d} x, total {sum(v) * 1000:7.1f} ms, max {max(v) * 1000:6.1f} ms  {name[:90]}"
        for name, v in rows
    ]


# a hub run with another JupyterHub config file (same environment, same API):
# HubProcess(prefix, settings, token, config_file)
BenchHub = HubProcess


class Bench:
    """The hub, the admin token and the two ways to the service."""

    def __init__(self, hub: BenchHub, token: str, service_port: int):
        self.hub = hub
        self.token = token
        self.headers = {"Authorization": f"token {token}"}
        self.proxy = requests.Session()  # keep-alive, like a browser
        self.direct = requests.Session()
        self.proxy_base = hub.url
        self.direct_base = f"http://127.0.0.1:{service_port}"
        self.service_port = service_port

    def api(self, method: str, path: str, direct: bool = False, **kwargs) -> requests.Response:
        session, base = (self.direct, self.direct_base) if direct else (self.proxy, self.proxy_base)
        return session.request(
            method, base + API + path, headers=self.headers, timeout=60, **kwargs
        )

    def create_environment(self, name: str, repo: str) -> int:
        r = self.api("POST", "/environments", json={"name": name, "repo": repo, "ref": "main"})
        if r.status_code != 201:
            raise RuntimeError(f"creating {name}: {r.status_code} {r.text[:300]}")
        return r.json()["latest_build"]["id"]

    def wait_build(self, name: str, build_id: int, timeout: float = BUILD_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/environments/{name}/builds/{build_id}").json()
            if model.get("status") in FINAL_STATES:
                if model["status"] != "succeeded":
                    raise RuntimeError(f"build {build_id} of {name}: {model}")
                return model
            time.sleep(0.25)
        raise RuntimeError(f"build {build_id} of {name} not finished within {timeout} s")

    def log_url(self, name: str, build_id: int) -> str:
        return f"{self.proxy_base}{API}/environments/{name}/builds/{build_id}/log"


# --- SSE readers in a separate process ------------------------------------------------------
# 50 streams delivering thousands of events a second would compete with the probe for this
# process's GIL; in their own process they only compete for the CPU, like real browsers.
def sse_worker(conn):
    """Serve jobs from ``conn``: (urls, headers, timeout) -> list of per-stream results."""
    import asyncio

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops this one

    while True:
        job = conn.recv()
        if job is None:
            return
        urls, headers, timeout = job
        conn.send(asyncio.run(_read_streams(urls, headers, timeout)))


async def _read_streams(urls, headers, timeout):
    import asyncio

    import aiohttp

    async def one(session, url):
        out = {
            "url": url,
            "connected": None,
            "end": None,
            "events": 0,
            "samples": [],  # (received, printed) of the lines carrying a timestamp
            "status": None,
            "error": None,
        }
        try:
            async with session.get(url, headers=headers) as r:
                if r.status != 200:
                    out["error"] = f"HTTP {r.status}: {(await r.text())[:200]}"
                    return out
                out["connected"] = time.time()
                event = ""
                async for raw in r.content:
                    now = time.time()
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        if event == "status":
                            status = json.loads(line[5:]).get("status")
                            if status in FINAL_STATES:
                                out["status"], out["end"] = status, now
                        else:
                            out["events"] += 1
                            m = TS_RE.search(line)
                            if m:
                                out["samples"].append((now, float(m.group(1))))
                    elif not line:
                        event = ""
        except Exception as e:  # reported by the main process
            out["error"] = repr(e)
        if out["end"] is None:
            out["end"] = time.time()
        return out

    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_read=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=client_timeout, connector=connector) as session:
        return await asyncio.gather(*(one(session, url) for url in urls))


class Streams:
    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sse_worker, args=(child,), daemon=True)
        self.proc.start()

    def start(self, urls, headers, timeout=BUILD_TIMEOUT):
        self.conn.send((urls, headers, timeout))

    def done(self) -> bool:
        return self.conn.poll()

    def results(self, timeout: float = BUILD_TIMEOUT) -> list[dict]:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"log streams not finished within {timeout} s")
        results = self.conn.recv()
        errors = [s["error"] for s in results if s["error"]]
        if errors:
            raise RuntimeError(f"{len(errors)} log stream(s) failed, e.g. {errors[0]}")
        return results

    def close(self):
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def sample_pairs(streams: list[dict]) -> list[tuple[float, float]]:
    """(received, printed) of lines printed after their stream connected (no replays)."""
    return [
        (received, printed)
        for s in streams
        for received, printed in s["samples"]
        if printed >= s["connected"]
    ]


def sample_latencies(streams: list[dict]) -> list[float]:
    return [received - printed for received, printed in sample_pairs(streams)]


# --- 1. listing --------------------------------------------------------------------------------
def insert_environments(db_path: Path, n: int) -> None:
    """``n`` environments with one succeeded build each, straight into the service's SQLite."""
    from tljh_repo2docker.service import store

    sessions = store.open_store(f"sqlite:///{db_path}")
    try:
        with sessions() as db:
            envs = []
            for i in range(n):
                env = store.Environment(
                    name=f"bulk-{i:04d}",
                    display_name=f"Bulk environment {i}",
                    repo=f"https://example.org/bench/bulk-{i:04d}.git",
                    ref="main",
                    mem_limit=(i % 4 + 1) * 1024**3,
                    cpu_limit=float(i % 3 + 1),
                    build_args=json.dumps({"BENCH": str(i)}) if i % 5 == 0 else "{}",
                    created_by="admin",
                )
                db.add(env)
                envs.append(env)
            db.flush()
            now = store.utcnow()
            for env in envs:
                commit = secrets.token_hex(20)
                db.add(
                    store.Build(
                        environment_id=env.id,
                        status=store.SUCCEEDED,
                        ref="main",
                        commit=commit,
                        image=labels.image_tag(IMAGE_PREFIX, env.name, commit),
                        requested_by="admin",
                        started_at=now - datetime.timedelta(seconds=90),
                        finished_at=now,
                        log_head='{"phase":"built","message":"Built image\\n"}',
                        log_lines=1,
                    )
                )
            db.commit()
    finally:
        sessions.engine.dispose()


def store_logs(db_path: Path, lines: int) -> int:
    """Give every bulk build a stored log of ``lines`` lines; returns its size in bytes."""
    from sqlalchemy import text

    from tljh_repo2docker.service import store

    entry = {
        "phase": "building",
        "message": "#9 12.34 Collecting numpy==1.26.4 (from -r requirements.txt (line 3))\n",
    }
    body = "\n".join(json.dumps(entry, separators=(",", ":")) for _ in range(lines))
    sessions = store.open_store(f"sqlite:///{db_path}")
    try:
        with sessions.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE builds SET log_head = :body, log_lines = :n WHERE environment_id IN "
                    "(SELECT id FROM environments WHERE name LIKE 'bulk-%')"
                ),
                {"body": body, "n": lines},
            )
    finally:
        sessions.engine.dispose()
    return len(body)


def timed_gets(session, url, headers, n, expect=None) -> tuple[list[float], int]:
    times, size = [], 0
    for i in range(n + 3):
        t = time.perf_counter()
        r = session.get(url, headers=headers, timeout=60)
        elapsed = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:300]}")
        if i < 3:  # warm-up (token check with the hub, caches)
            if expect is not None and len(r.json()["environments"]) != expect:
                raise RuntimeError(
                    f"the service lists {len(r.json()['environments'])} environments, "
                    f"expected {expect}"
                )
            size = len(r.content)
            continue
        times.append(elapsed)
    return times, size


def health_and_metrics(b: Bench, n_requests: int) -> dict:
    """/health (anonymous), /metrics (the admin's token) and the hub's own
    GET /hub/api/user as the baseline, interleaved, after a warm-up."""
    service = b.proxy_base + "/services/environments"
    plan = {
        "health": (service + "/health", {}, (200, 503)),
        "metrics": (service + "/metrics", b.headers, (200,)),
        "hub": (b.proxy_base + "/hub/api/user", b.headers, (200,)),
    }
    times = {k: [] for k in plan}
    for i in range(n_requests + 3):
        for key, (url, headers, ok) in plan.items():
            t = time.perf_counter()
            r = b.proxy.get(url, headers=headers, timeout=60)
            elapsed = time.perf_counter() - t
            if r.status_code not in ok:
                raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:300]}")
            if i >= 3:
                times[key].append(elapsed)
    return times


def listing(b: Bench, n_requests: int, expect: int, exact: bool = True) -> dict:
    """Interleaved: the hub's GET /hub/api/user, the listing through the proxy, and direct."""
    urls = {
        "hub": b.proxy_base + "/hub/api/user",
        "proxy": b.proxy_base + API + "/environments",
        "direct": b.direct_base + API + "/environments",
    }
    sessions = {"hub": b.proxy, "proxy": b.proxy, "direct": b.direct}
    times = {k: [] for k in urls}
    size = 0
    for k in urls:  # warm-up
        for _ in range(3):
            r = sessions[k].get(urls[k], headers=b.headers, timeout=60)
            if r.status_code != 200:
                raise RuntimeError(f"GET {urls[k]}: {r.status_code} {r.text[:300]}")
            if k != "hub":
                listed = len(r.json()["environments"])
                if listed < expect or (listed != expect and exact):
                    raise RuntimeError(f"the service lists {listed} environments, not {expect}")
                size = len(r.content)
    for _ in range(n_requests):
        for k in urls:
            t = time.perf_counter()
            r = sessions[k].get(urls[k], headers=b.headers, timeout=60)
            times[k].append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"GET {urls[k]}: {r.status_code} {r.text[:300]}")
    times["size"] = size
    return times


# --- 2. probes (event-loop lag seen from outside) -------------------------------------------
def control_server(port: int, conn):
    """A bare tornado server answering every GET with the service's 404 JSON: it shares the
    machine's CPU with the builds and streams, but has none of its own work."""
    import asyncio

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops this one

    from tornado import web

    class NotFound(web.RequestHandler):
        def get(self):
            self.set_status(404)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish('{"status": 404, "message": "no such API endpoint"}')

    async def serve():
        app = web.Application([(r"/.*", NotFound)], log_function=lambda handler: None)
        app.listen(port, "127.0.0.1")
        conn.send("ready")
        await asyncio.Event().wait()

    asyncio.run(serve())


class ControlServer:
    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.port = free_port()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=control_server, args=(self.port, child), daemon=True)
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("the control server did not start")
        self.conn.recv()

    def close(self):
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class Probe:
    """Cheap GETs on keep-alive connections, one after the other in each slot, in rotating
    order: 'unrouted' and 'control' in every slot, 'environment' in every ``env_every``-th
    (it costs the service a few ms of loop time: at every slot it would be a load itself)."""

    def __init__(
        self, port: int, headers: dict, env_name: str, control_port: int, env_every: int = 10
    ):
        self.env_every = env_every
        self.targets = {
            # no route: NotFoundHandler raises in prepare(), before any authentication
            "unrouted": (port, API + "/bench-probe-404", {}),
            # authenticates (token cached by HubAuth), one DB read, cached Docker reads
            "environment": (port, f"{API}/environments/{env_name}", dict(headers)),
            # the same 404 from a bare tornado process: the machine's share of the latency
            "control": (control_port, API + "/bench-probe-404", {}),
        }
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def get(self, kind: str) -> tuple[float, int]:
        port, path, headers = self.targets[kind]
        for attempt in range(2):
            conn = self.conns.get(kind)
            if conn is None:
                conn = self.conns[kind] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            t = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
                r.read()
                return time.perf_counter() - t, r.status
            except (OSError, http.client.HTTPException):
                conn.close()
                del self.conns[kind]
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def run(self, interval: float, until, max_seconds: float, pid: int) -> dict:
        """Every ``interval`` s each probe once, until ``until()`` (or the limit); also
        sample the service's RSS every 0.25 s."""
        samples = {k: [] for k in self.targets}  # kind -> [(wall time sent, latency)]
        statuses = {k: set() for k in self.targets}
        rss = []  # (wall time, KiB)
        start = time.perf_counter()
        next_rss = 0.0
        slot = 0
        kinds = list(self.targets)
        while time.perf_counter() - start < max_seconds and not until():
            for i in range(len(kinds)):
                kind = kinds[(slot + i) % len(kinds)]
                if kind == "environment" and slot % self.env_every:
                    continue
                sent = time.time()
                latency, status = self.get(kind)
                samples[kind].append((sent, latency))
                statuses[kind].add(status)
            now = time.perf_counter()
            if now >= next_rss:
                value = rss_kib(pid)
                if value is not None:
                    rss.append((time.time(), value))
                next_rss = now + 0.25
            # a fixed schedule: after a slow slot, skip missed slots rather than burst
            slot = max(slot + 1, math.ceil((time.perf_counter() - start) / interval))
            delay = start + slot * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        self.close()
        return {"samples": samples, "statuses": statuses, "rss": rss}

    def close(self):
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def in_window(samples, lo: float, hi: float) -> list[float]:
    return [lat for sent, lat in samples if lo <= sent <= hi]


# --- 3. baselines of the log path: BuildKit alone, repo2docker alone -------------------------
def read_ts_lines(argv: list[str], env: dict | None, procs: list, parse_json: bool) -> list:
    """Run ``argv``; (received, printed) for every line carrying a timestamp."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    procs.append(proc)
    samples, tail = [], []
    deadline = time.monotonic() + BUILD_TIMEOUT
    for raw in iter(proc.stdout.readline, b""):
        now = time.time()
        line = raw.decode(errors="replace")
        if parse_json:
            try:
                line = json.loads(line).get("message") or ""
            except (ValueError, AttributeError):
                pass
        tail = (tail + [line])[-30:]
        m = TS_RE.search(line)
        if m:
            samples.append((now, float(m.group(1))))
        if time.monotonic() > deadline:
            break
    code = proc.wait(60)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited with {code}:\n{''.join(tail)}")
    return samples


def bursts(samples) -> tuple[float, int]:
    """(median lines per burst, largest burst): lines received within 2 ms of each other."""
    sizes, size, last = [], 0, None
    for received, _ in sorted(samples):
        if last is not None and received - last > 0.002:
            sizes.append(size)
            size = 0
        size += 1
        last = received
    if size:
        sizes.append(size)
    return (median(sizes), max(sizes)) if sizes else (math.nan, 0)


# --- main --------------------------------------------------------------------------------------
def check_host():
    problem = missing_tools()
    if problem:
        sys.exit(problem)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--environments", type=int, default=500, help="rows put in the database")
    parser.add_argument("--requests", type=int, default=100, help="listing requests per target")
    parser.add_argument("--streams", type=int, default=50, help="SSE clients during 2 builds")
    parser.add_argument("--lag-lines", type=int, default=400, help="lines per build (lag test)")
    parser.add_argument("--lag-sleep", type=float, default=0.02, help="s between those lines")
    parser.add_argument("--ts-lines", type=int, default=100, help="lines (log latency test)")
    parser.add_argument("--ts-sleep", type=float, default=0.05, help="s between those lines")
    parser.add_argument("--ts-rounds", type=int, default=2, help="rounds of the latency test")
    parser.add_argument("--cached", type=int, default=20, help="builds of a built commit")
    parser.add_argument("--idle-seconds", type=float, default=10, help="idle probe baseline")
    parser.add_argument("--probe-interval", type=float, default=0.02, help="s between probes")
    parser.add_argument(
        "--stored-log-lines", type=int, default=300, help="log lines per build, last listing"
    )
    parser.add_argument(
        "--no-loop-monitor",
        action="store_true",
        help="no in-process loop monitor (sitecustomize.py) in the service",
    )
    parser.add_argument("--hub-log", type=Path, help="copy the hub's log here at the end")
    args = parser.parse_args()
    if min(args.environments, args.requests, args.streams, args.cached, args.ts_rounds) < 1:
        parser.error("counts must be at least 1")
    check_host()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # also when started in the background by a shell, which leaves SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    hex_id = secrets.token_hex(4)
    hub_name = f"bench-svc-{hex_id}"
    tmp = Path(tempfile.mkdtemp(prefix="tljh-r2d-bench-svc-"))
    hub: BenchHub | None = None
    streams: Streams | None = None
    control: ControlServer | None = None
    procs: list[subprocess.Popen] = []  # direct buildx / repo2docker runs
    summary: list[tuple[str, str, str]] = []
    try:
        service_port = free_port()
        settings = {
            "hub_name": hub_name,
            "image_prefix": IMAGE_PREFIX,
            "homes_dir": str(tmp / "homes"),
            "allow_local_repos": True,
            "repo2docker_config": [OFFLINE_R2D_CONFIG],
            "service_port": service_port,
            "build_concurrency": 2,
        }
        (tmp / "homes").mkdir()
        config = tmp / "jupyterhub_config.py"
        loop_log = None
        monitor_env = {}
        if not args.no_loop_monitor:
            (tmp / "monitor").mkdir()
            (tmp / "monitor" / "sitecustomize.py").write_text(LOOP_MONITOR)
            loop_log = tmp / "loop.log"
            monitor_env = {
                "PYTHONPATH": str(tmp / "monitor"),
                "TLJH_R2D_BENCH_LOOP_LOG": str(loop_log),
            }
        config.write_text(
            HUB_CONFIG.format(dev_config=str(DEV_CONFIG), concurrency=2, monitor_env=monitor_env)
        )
        hub = BenchHub(tmp / "tljh", settings, secrets.token_hex(16), config)
        log(
            f"hub_name {hub_name}; {os.cpu_count()} CPUs, load average {loadavg()}; "
            f"starting the hub "
            f"(build_concurrency 2, service port {service_port}) ..."
        )
        streams = Streams()  # the SSE reader process starts while the hub does
        t = time.monotonic()
        hub.start()
        spid = service_pid(hub.proc.pid)
        rss_start = rss_kib(spid)
        log(f"  hub and service up in {time.monotonic() - t:.1f} s; service pid {spid}")
        b = Bench(hub, hub.user_token("admin"), service_port)
        db_path = hub.prefix / "state" / "tljh-repo2docker.sqlite"
        if not db_path.exists():
            raise RuntimeError(f"the service's database is not at {db_path}")

        # ---- 1. listing -----------------------------------------------------------------
        log()
        log("1. GET /services/environments/api/v1/environments (admin token, keep-alive)")
        empty, _ = timed_gets(b.direct, b.direct_base + API + "/environments", b.headers, 30, 0)
        log(f"  0 environments, direct, 30 requests: {dist(empty)}")
        t = time.monotonic()
        insert_environments(db_path, args.environments)
        log(
            f"  inserted {args.environments} environments (one succeeded build each) into "
            f"{db_path.name} in {time.monotonic() - t:.1f} s"
        )
        list_lo = time.time()
        times = listing(b, args.requests, args.environments)
        list_hi = time.time()
        log(
            f"  {args.environments} environments ({times['size'] // 1024} KiB of JSON), "
            f"{args.requests} requests each, interleaved:"
        )
        log(f"    through the proxy:           {dist(times['proxy'])}")
        log(f"    direct to the service port:  {dist(times['direct'])}")
        log(f"    baseline GET /hub/api/user:  {dist(times['hub'])}")
        p95 = quantile(times["proxy"], 0.95)
        log(
            f"    proxy/baseline medians {ratio(median(times['proxy']), median(times['hub']))}, "
            f"p95 {ratio(p95, quantile(times['hub'], 0.95))}; "
            f"{args.environments} vs 0 environments (direct medians) "
            f"{ratio(median(times['direct']), median(empty))}"
        )
        log(f"  target p95 < 20 ms (through the proxy): {verdict(p95, LIST_P95)}")
        log(f"  direct p95 (no proxy): {verdict(quantile(times['direct'], 0.95), LIST_P95)}")
        summary.append(
            (
                f"list {args.environments} environments, p95 (proxy)",
                fmt_ms(p95) + " ms",
                verdict(p95, LIST_P95),
            )
        )
        show_slow(loop_log, list_lo, list_hi, "during these requests")
        rss_listed = rss_kib(spid)

        # ---- 1a. health and metrics -------------------------------------------------------
        log()
        log(
            f"1a. GET /health (no login) and /metrics (read:metrics token) at "
            f"{args.environments} environments, through the proxy, interleaved with the "
            "hub's GET /hub/api/user"
        )
        times_hm = health_and_metrics(b, args.requests)
        log(f"    /health:                     {dist(times_hm['health'])}")
        log(f"    /metrics:                    {dist(times_hm['metrics'])}")
        log(f"    baseline GET /hub/api/user:  {dist(times_hm['hub'])}")
        for key, target in (("health", HEALTH_P95), ("metrics", METRICS_P95)):
            p95 = quantile(times_hm[key], 0.95)
            log(
                f"  /{key} p95 {fmt_ms(p95)} ms, {ratio(p95, quantile(times_hm['hub'], 0.95))} "
                f"of the baseline; target < {target * 1000:g} ms: {verdict(p95, target)}"
            )
            summary.append(
                (
                    f"/{key} at {args.environments} environments, p95",
                    fmt_ms(p95) + " ms",
                    verdict(p95, target),
                )
            )

        # ---- environments built for real --------------------------------------------------
        log()
        log("Building the environments the next parts use (real repo2docker runs) ...")
        t = time.monotonic()
        quick_url, _ = make_repo(tmp / "repo-quick", quick_dockerfile(secrets.token_hex(8)))
        quick_build = b.create_environment("quick", quick_url)
        b.wait_build("quick", quick_build)
        log(f"  'quick' built in {time.monotonic() - t:.1f} s")

        # ---- 3. log line latency ----------------------------------------------------------
        log()
        log(
            f"3. Log line latency: a RUN step printing {args.ts_lines} lines "
            f"'TS $(date +%s.%N)' every {args.ts_sleep:g} s; received minus printed"
        )
        log(
            f"  {args.ts_rounds} rounds of: a) docker buildx build alone, b) repo2docker alone "
            f"(the service's argv), c) a build through the service with one SSE client through "
            f"the proxy; each with its own Dockerfile nonce (no BuildKit cache)"
        )
        pairs3 = {"buildx": [], "repo2docker": [], "service": []}
        build_settings = BuildSettings(
            hub_name=hub_name,
            image_prefix=IMAGE_PREFIX,
            allow_local_repos=True,
            repo2docker_config=[OFFLINE_R2D_CONFIG],
        )
        for rnd in range(args.ts_rounds):
            # a) BuildKit alone: docker buildx build --progress plain, read from a pipe
            ctx = tmp / f"buildx-context-{rnd}"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(
                ts_dockerfile(secrets.token_hex(8), args.ts_lines, args.ts_sleep)
            )
            argv = ["docker", "buildx", "build", "--progress", "plain", "--label"]
            argv += [f"{labels.HUB}={hub_name}", "--tag", f"{IMAGE_PREFIX}buildx:{hex_id}-{rnd}"]
            pairs3["buildx"] += read_ts_lines([*argv, str(ctx)], None, procs, parse_json=False)
            # b) repo2docker alone: the command line the service runs, read from a pipe
            r2d_url, r2d_commit = make_repo(
                tmp / f"repo-r2d-{rnd}",
                ts_dockerfile(secrets.token_hex(8), args.ts_lines, args.ts_sleep),
            )
            request = BuildRequest(
                name=f"ts-direct-{rnd}", repo=r2d_url, ref="main", display_name="ts"
            )
            argv = repo2docker_argv(
                build_settings, request, commit=r2d_commit, built_at="2026-01-01T00:00:00Z"
            )
            pairs3["repo2docker"] += read_ts_lines(argv, gitref.git_env(), procs, parse_json=True)
            # c) the service: a build through the API, one SSE client through the proxy
            svc_url, _ = make_repo(
                tmp / f"repo-ts-{rnd}",
                ts_dockerfile(secrets.token_hex(8), args.ts_lines, args.ts_sleep),
            )
            build_id = b.create_environment(f"ts-{rnd}", svc_url)
            streams.start([b.log_url(f"ts-{rnd}", build_id)], b.headers)
            pairs3["service"] += sample_pairs(streams.results())
            b.wait_build(f"ts-{rnd}", build_id)
        rows = [
            ("a) docker buildx build --progress plain", "buildx"),
            ("b) repo2docker --json-logs (service's argv)", "repo2docker"),
            ("c) service, SSE client through the proxy", "service"),
        ]
        lat3 = {}
        for title, key in rows:
            lat3[key] = [r - p for r, p in pairs3[key]]
            med_burst, max_burst = bursts(pairs3[key])
            log(f"  {title:44} {dist(lat3[key])}")
            log(f"  {'':44} lines per burst (2 ms apart): median {med_burst:g}, max {max_burst}")
        svc_p95 = quantile(lat3["service"], 0.95)
        log(
            f"  c) minus b): median {fmt_ms(median(lat3['service']) - median(lat3['repo2docker']))}"
            f" ms, p95 {fmt_ms(svc_p95 - quantile(lat3['repo2docker'], 0.95))} ms; "
            f"c) minus a): median {fmt_ms(median(lat3['service']) - median(lat3['buildx']))} ms; "
            f"c)/a) p95 {ratio(svc_p95, quantile(lat3['buildx'], 0.95))} "
            f"(separate runs: BuildKit's batching differs from run to run)"
        )
        log(f"  target p95 < 100 ms (service): {verdict(svc_p95, LOG_P95)}")
        summary.append(
            ("log line to SSE client, p95", fmt_ms(svc_p95) + " ms", verdict(svc_p95, LOG_P95))
        )

        # ---- 2. + 5. loop lag and memory under 2 builds and N streams -----------------------
        log()
        log(
            f"2. Service responsiveness: every {args.probe_interval * 1000:g} ms one GET of "
            f"'unrouted' and 'control', every {args.probe_interval * 10000:g} ms one of "
            f"'environment', one after the other (keep-alive connections):"
        )
        log(
            "  'unrouted':    straight to the service port, an API path without a route "
            "(404 from NotFoundHandler.prepare, before authentication)"
        )
        log(
            "  'environment': straight to the service port, GET environments/bulk-0000 "
            "(token check, cached by HubAuth for 60 s; DB; cached Docker reads)"
        )
        log(
            "  'control':     the same 404 from a bare tornado process on the same machine "
            "(what CPU contention alone costs)"
        )
        log(
            "  The service's event-loop lag cannot be read from outside: the figure is the "
            "latency of these probes (lag + the request's own work + loopback + scheduling)."
        )
        control = ControlServer()
        probe = Probe(service_port, b.headers, "bulk-0000", control.port)
        idle = probe.run(args.probe_interval, lambda: False, args.idle_seconds, spid)
        lag_url_a, _ = make_repo(
            tmp / "repo-lag-a", ts_dockerfile(secrets.token_hex(8), args.lag_lines, args.lag_sleep)
        )
        lag_url_b, _ = make_repo(
            tmp / "repo-lag-b", ts_dockerfile(secrets.token_hex(8), args.lag_lines, args.lag_sleep)
        )
        t_posted = time.time()
        build_a = b.create_environment("lag-a", lag_url_a)
        build_b = b.create_environment("lag-b", lag_url_b)
        half = args.streams // 2
        urls = [b.log_url("lag-a", build_a)] * (args.streams - half)
        urls += [b.log_url("lag-b", build_b)] * half
        streams.start(urls, b.headers)
        busy = probe.run(args.probe_interval, streams.done, BUILD_TIMEOUT, spid)
        res = streams.results()
        model_a = b.wait_build("lag-a", build_a)
        model_b = b.wait_build("lag-b", build_b)
        res_a, res_b = res[: args.streams - half], res[args.streams - half :]

        def printed_span(group):
            printed = [p for s in group for _, p in s["samples"]]
            return (min(printed), max(printed)) if printed else (math.nan, math.nan)

        span_a, span_b = printed_span(res_a), printed_span(res_b)
        all_connected = max(s["connected"] for s in res)
        lo = max(all_connected, span_a[0], span_b[0])
        hi = min(span_a[1], span_b[1], min(s["end"] for s in res))
        log(
            f"  builds lag-a and lag-b ({args.lag_lines} lines every {args.lag_sleep:g} s each) "
            f"posted at t=0; all {args.streams} streams connected at "
            f"t={all_connected - t_posted:.2f} s; RUN output lag-a "
            f"t={span_a[0] - t_posted:.1f}..{span_a[1] - t_posted:.1f} s, lag-b "
            f"t={span_b[0] - t_posted:.1f}..{span_b[1] - t_posted:.1f} s; "
            f"builds took {model_a['duration']:.1f} s and {model_b['duration']:.1f} s"
        )
        events = [s["events"] for s in res]
        log(
            f"  events per stream: min {min(events)}, max {max(events)}; final status "
            f"{sorted({s['status'] for s in res})}"
        )
        if not hi > lo:
            log("  NOTE: the two builds' outputs did not overlap; using the whole busy period")
            lo, hi = t_posted, max(s["end"] for s in res)
        log(
            f"  window with both builds printing and all streams open: {hi - lo:.1f} s "
            f"(t={lo - t_posted:.1f}..{hi - t_posted:.1f} s)"
        )
        loaded_p99 = {}
        for kind in probe.targets:
            base = [lat for _, lat in idle["samples"][kind]]
            loaded = in_window(busy["samples"][kind], lo, hi)
            whole = [lat for _, lat in busy["samples"][kind]]
            loaded_p99[kind] = quantile(loaded, 0.99)
            log(f"  probe '{kind}' (HTTP {sorted(busy['statuses'][kind])}):")
            idle_title = f"idle (baseline, {args.idle_seconds:g} s):"
            log(f"    {idle_title:32} {dist(base, p99=True)}")
            log(f"    {f'2 builds + {args.streams} streams:':32} {dist(loaded, p99=True)}")
            log(f"    {'whole busy period:':32} {dist(whole, p99=True)}")
            worst_at, worst = max(busy["samples"][kind], key=lambda sample: sample[1])
            log(f"    {'':32} (busy maximum {fmt_ms(worst)} ms at t={worst_at - t_posted:.2f} s)")
            log(
                f"    loaded/idle: median {ratio(median(loaded), median(base))}, "
                f"p99 {ratio(quantile(loaded, 0.99), quantile(base, 0.99))}; "
                f"over 20 ms: {sum(1 for x in loaded if x >= 0.02)} of {len(loaded)}"
            )
        lag_p99 = loaded_p99["unrouted"]
        log(f"  target p99 < 20 ms ('unrouted' probe under load): {verdict(lag_p99, LAG_P99)}")
        log(f"  ('environment' probe under load: {verdict(loaded_p99['environment'], LAG_P99)})")
        log(
            f"  under load, p99 'unrouted' minus 'control': "
            f"{fmt_ms(lag_p99 - loaded_p99['control'])} ms; 'unrouted'/'control' "
            f"{ratio(lag_p99, loaded_p99['control'])}"
        )
        control.close()
        if loop_log is not None:
            time.sleep(0.6)  # the monitor writes its file every 0.5 s
            lags, slow = read_loop_log(loop_log)
            idle_lo, idle_hi = idle["samples"]["control"][0][0], idle["samples"]["control"][-1][0]
            idle_lags = [lag for when, lag in lags if idle_lo <= when <= idle_hi]
            busy_lags = [lag for when, lag in lags if lo <= when <= hi]
            log(
                "  In-process (sitecustomize.py in the service: a 20 ms timer's lateness; "
                "callbacks of 5 ms or more and blocking waits of 1 ms or more):"
            )
            log(f"    {'loop lag, idle:':32} {dist(idle_lags, p99=True)}")
            log("    slow callbacks and waits while idle (largest total first):")
            for row in slow_table(slow, idle_lo, idle_hi) or ["none"]:
                log(f"      {row}")
            log(
                f"    {f'loop lag, 2 builds + {args.streams} streams:':32} "
                f"{dist(busy_lags, p99=True)}"
            )
            log(f"    in-process target p99 < 20 ms: {verdict(quantile(busy_lags, 0.99), LAG_P99)}")
            log("    slow callbacks and waits under load (largest total first):")
            for row in slow_table(slow, lo, hi) or ["none"]:
                log(f"      {row}")
        summary.append(
            ("probe latency under load, p99", fmt_ms(lag_p99) + " ms", verdict(lag_p99, LAG_P99))
        )
        under_load = sample_latencies(res)
        log(
            f"  log line latency during this ({args.streams} clients, 2 builds): "
            f"{dist(under_load, p99=True)}"
        )

        # ---- 4. cached builds ---------------------------------------------------------------
        log()
        log(
            f"4. POST .../environments/quick/builds for the built commit, {args.cached} times: "
            f"time until GET .../builds/<id> (polled every 5 ms, through the proxy) says "
            f"succeeded"
        )
        posted, done, lines = [], [], []
        for _ in range(args.cached):
            t = time.perf_counter()
            r = b.api("POST", "/environments/quick/builds")
            posted.append(time.perf_counter() - t)
            if r.status_code != 202:
                raise RuntimeError(f"POST builds: {r.status_code} {r.text[:300]}")
            build_id = r.json()["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                model = b.api("GET", f"/environments/quick/builds/{build_id}").json()
                if model["status"] in FINAL_STATES:
                    break
                time.sleep(0.005)
            done.append(time.perf_counter() - t)
            if model["status"] != "succeeded" or not model["cached"]:
                raise RuntimeError(f"build {build_id} was not answered from the cache: {model}")
            lines.append(model["log_lines"])
            time.sleep(0.05)
        git_times = []
        for _ in range(args.cached):
            t = time.perf_counter()
            subprocess.run(
                ["git", "ls-remote", "--", quick_url],
                capture_output=True,
                check=True,
                env=gitref.git_env(),
                timeout=60,
            )
            git_times.append(time.perf_counter() - t)
        log(f"  POST answered (202):             {dist(posted)}")
        log(f"  status succeeded, cached=true:   {dist(done)}")
        log(
            f"  baseline `git ls-remote` alone:  {dist(git_times)}; "
            f"cached build / git ls-remote medians {ratio(median(done), median(git_times))}"
        )
        log(f"  log lines per cached build: {sorted(set(lines))} (no repo2docker output)")
        log(f"  target median < 500 ms: {verdict(median(done), CACHED_MEDIAN)}")
        summary.append(
            (
                "cached build, median",
                fmt_ms(median(done)) + " ms",
                verdict(median(done), CACHED_MEDIAN),
            )
        )

        # ---- 5. memory ----------------------------------------------------------------------
        log()
        log(f"5. Service RSS (VmRSS of pid {spid})")
        loaded_rss = [kib for when, kib in busy["rss"] if lo <= when <= hi]
        idle_rss = [kib for _, kib in idle["rss"]]
        rss_end = rss_kib(spid)
        mib = 1024.0
        rows5 = [
            ("right after start (baseline)", f"{rss_start / mib:.1f} MiB"),
            (
                f"after listing {args.environments} environments",
                f"{rss_listed / mib:.1f} MiB ({ratio(rss_listed, rss_start)})",
            ),
            ("idle probe period, max", f"{max(idle_rss) / mib:.1f} MiB"),
        ]
        if loaded_rss:
            rows5.append(
                (
                    f"{args.environments} environments, 2 builds, {args.streams} open streams",
                    f"median {median(loaded_rss) / mib:.1f} MiB, max {max(loaded_rss) / mib:.1f} "
                    f"MiB ({ratio(max(loaded_rss), rss_start)} of the baseline, "
                    f"+{(max(loaded_rss) - rss_start) / mib:.1f} MiB)",
                )
            )
            summary.append(
                (
                    f"RSS, {args.environments} envs + {args.streams} streams (max)",
                    f"{max(loaded_rss) / mib:.1f} MiB",
                    f"{ratio(max(loaded_rss), rss_start)} of {rss_start / mib:.1f} MiB at start",
                )
            )
        rows5.append(("at the end (cached builds done)", f"{rss_end / mib:.1f} MiB"))
        for title, value in rows5:
            log(f"  {title:52} {value}")

        # ---- 1b. listing with stored logs ---------------------------------------------------
        log()
        size = store_logs(db_path, args.stored_log_lines)
        log(
            f"1b. The same listing after giving each of the {args.environments} stored builds "
            f"a log of {args.stored_log_lines} lines ({size // 1024} KiB each; a real build "
            f"keeps up to 3000 lines)"
        )
        # + quick, lag-a, lag-b, ts-<n> and ts-direct-<n> (adopted from their images' labels)
        expect = args.environments + 3 + 2 * args.ts_rounds
        list_lo = time.time()
        times_b = listing(b, args.requests, expect, exact=False)
        list_hi = time.time()
        log(f"    through the proxy:           {dist(times_b['proxy'])}")
        log(f"    direct to the service port:  {dist(times_b['direct'])}")
        log(f"    baseline GET /hub/api/user:  {dist(times_b['hub'])}")
        p95b = quantile(times_b["proxy"], 0.95)
        log(
            f"    vs 1-line logs (proxy medians): "
            f"{ratio(median(times_b['proxy']), median(times['proxy']))}; "
            f"target p95 < 20 ms: {verdict(p95b, LIST_P95)}"
        )
        summary.append(
            (
                f"list, builds with {args.stored_log_lines}-line logs, p95",
                fmt_ms(p95b) + " ms",
                verdict(p95b, LIST_P95),
            )
        )
        show_slow(loop_log, list_lo, list_hi, "during these requests")
        rss_after = rss_kib(spid)
        log(
            f"    service RSS after these listings: {rss_after / mib:.1f} MiB "
            f"({ratio(rss_after, rss_start)} of the baseline)"
        )

        log()
        log("Summary")
        for title, value, result in summary:
            log(f"  {title:46} {value:>12}   {result}")
        log()
        log(
            f"Load average at the end: {loadavg()} on {os.cpu_count()} CPUs (other work on the "
            "machine shows in every figure; compare figures with the baselines of the same run)"
        )
        log("Done: figures only, nothing asserted.")
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: cleaning up")
        return 130
    except Exception:
        if hub is not None:
            state = "not started" if hub.proc is None else f"exit code {hub.proc.poll()}"
            log(f"\n=== hub ({state}), last lines of its log ===")
            log(hub.log_tail(60))
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for helper in (streams, control):
            if helper is not None:
                helper.close()
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        if hub is not None:
            try:
                hub.stop()
            except Exception as e:
                log(f"cleanup: stopping the hub failed: {e!r}")
            if args.hub_log is not None and hub.log_path.exists():
                shutil.copyfile(hub.log_path, args.hub_log)
        remove_hub_objects(hub_name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
