"""Spawn and catalogue figures: Repo2DockerSpawner vs plain DockerSpawner.

    .venv/bin/python benchmarks/spawn.py [--cycles 15] [--environments 200]

Builds one environment image with the real CLI, starts two real hubs (this
project's config as is, and the same config switched to plain DockerSpawner
on the same image), starts and stops one user's server on each through the
REST API, then times the catalogue and the spawn form with many environments.
Figures are printed (median, p90, ratio to the baseline), never asserted.
Everything it creates is removed on exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import docker
import docker.errors
import requests
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.dockerfixtures import make_git_repo, remove_hub_objects  # noqa: E402
from tests.hubprocess import (  # noqa: E402
    OFFLINE_R2D_CONFIG,
    HubProcess,
    missing_tools,
)
from tljh_repo2docker import labels  # noqa: E402
from tljh_repo2docker.catalogue import Catalogue  # noqa: E402
from tljh_repo2docker.spawner import Repo2DockerSpawner  # noqa: E402

DEV_CONFIG = ROOT / "dev" / "jupyterhub_config.py"
IMAGE_PREFIX = "tljh-r2d-bench/"
ENVIRONMENT = "bench"
CYCLE_TIMEOUT = 120.0
POLL = 0.005  # the benchmark's own polling interval (s)

# Reference numbers quoted in the issue (a peer plugin, other hardware).
PEER_FORM_MS = 65.0
PEER_LISTING_MS = 46.0


# --- small helpers -------------------------------------------------------------------
def log(message: str = ""):
    print(message, flush=True)


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return quantile(values, 0.5)


def ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:8.1f}"


def ratio(a: float, b: float) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "   n/a"
    return f"{a / b:6.2f}x"


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return "no data"
    if value <= target:
        return f"met ({value * 1000:.1f} <= {target * 1000:.0f} ms)"
    return f"MISSED by {(value - target) * 1000:.1f} ms ({value * 1000:.1f} > {target * 1000:.0f})"


def run(cmd: list[str], timeout: float, env: dict | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


# --- hubs ------------------------------------------------------------------------------
# a hub run with another JupyterHub config file (same environment, same API):
# HubProcess(prefix, settings, token, config_file)
ConfigFileHub = HubProcess


# The project's config as is. Included rather than passed with -f so that the hub's
# command line differs from a demo hub's: other processes on a shared machine that
# stop "their" hub by matching dev/jupyterhub_config.py must not stop this one.
OURS_CONFIG = """\
# Written by benchmarks/spawn.py: the project's hub config, unchanged.
load_subconfig({dev_config!r})  # noqa: F821
"""

PLAIN_CONFIG = """\
# Written by benchmarks/spawn.py: the project's hub config, then plain DockerSpawner.
c = get_config()  # noqa: F821
load_subconfig({dev_config!r})  # noqa: F821
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = {image!r}
c.DockerSpawner.remove = True
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.volumes = {{{home!r}: {{"bind": "/home/jovyan", "mode": "rw"}}}}
"""


# --- docker start events ---------------------------------------------------------------
class StartEvents:
    """`docker events` for container starts, read in a background thread."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [
                "docker",
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--format",
                "{{json .}}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[tuple[float, str, str]] = []  # (time, container id, name)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = ((event.get("Actor") or {}).get("Attributes") or {}).get("name", "")
            when = int(event.get("timeNano") or 0) / 1e9 or float(event.get("time") or 0)
            with self.cond:
                self.events.append((when, event.get("id", ""), name))
                self.cond.notify_all()

    def wait_for(self, name: str, after: float, timeout: float, abort) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for when, cid, ev_name in self.events:
                    if ev_name == name and when >= after - 1.0:
                        return when, cid
                left = deadline - time.monotonic()
                if abort():
                    raise RuntimeError(f"{name}: {abort()}")
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no docker start event for {name} within {timeout} s")
                self.cond.wait(min(left, 0.05))

    def forget(self, name: str):
        with self.cond:
            self.events = [e for e in self.events if e[2] != name]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- one start/stop cycle ----------------------------------------------------------------
def published_port(api: docker.APIClient, cid: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = api.inspect_container(cid)["NetworkSettings"]["Ports"] or {}
        for bindings in ports.values():
            for b in bindings or []:
                if b.get("HostPort"):
                    return int(b["HostPort"])
        time.sleep(POLL)
    raise RuntimeError(f"container {cid[:12]} published no port within {timeout} s")


def container_gone(api: docker.APIClient, name: str) -> bool:
    try:
        api.inspect_container(name)
    except docker.errors.NotFound:
        return True
    return False


def spawn_cycle(hub, user, options, events, api) -> dict:
    """Start the server, time the milestones from the POST, stop it again."""
    # Repo2DockerSpawner names containers jupyter-<hub_name>-<user> (hubs sharing an
    # engine stay apart); plain DockerSpawner (no options) jupyter-<user>
    prefix = f"jupyter-{hub.settings['hub_name']}" if options else "jupyter"
    name = f"{prefix}-{user}"
    events.forget(name)
    out: dict = {}
    done = threading.Event()
    auth = {"Authorization": f"token {hub.token}"}

    def post():
        try:
            kwargs = {"json": options} if options else {}
            r = hub.api("POST", f"/users/{user}/server", **kwargs)
            out["post"] = time.time() - t0
            out["post_status"] = r.status_code
            if r.status_code not in (201, 202):
                out["error"] = f"POST {r.status_code}: {r.text[:300]}"
        except Exception as e:  # reported by the main thread
            out["error"] = f"POST failed: {e!r}"

    def progress():
        url = f"{hub.url}/hub/api/users/{user}/server/progress"
        deadline = time.monotonic() + CYCLE_TIMEOUT
        try:
            while not done.is_set() and time.monotonic() < deadline and "error" not in out:
                with requests.get(url, headers=auth, stream=True, timeout=(2, 60)) as r:
                    if r.status_code in (400, 404):  # not pending yet: the POST is on its way
                        time.sleep(POLL)
                        continue
                    if r.status_code != 200:
                        out["error"] = f"progress {r.status_code}: {r.text[:300]}"
                        return
                    out["sse_connected"] = time.time() - t0
                    for line in r.iter_lines(chunk_size=1024, decode_unicode=True):
                        if not line or not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:])
                        if event.get("ready"):
                            out["ready"] = time.time() - t0
                            return
                        if event.get("failed"):
                            out["error"] = f"spawn failed: {event.get('message')}"
                            return
                    return
        except Exception as e:
            out["error"] = f"progress stream failed: {e!r}"

    t0 = time.time()
    threads = [threading.Thread(target=f, daemon=True) for f in (post, progress)]
    for t in threads:
        t.start()
    try:
        started_at, cid = events.wait_for(name, t0, CYCLE_TIMEOUT, lambda: out.get("error"))
        out["started"] = started_at - t0
        port = published_port(api, cid)
        url = f"http://127.0.0.1:{port}/user/{user}/api"
        deadline = time.monotonic() + CYCLE_TIMEOUT
        while time.monotonic() < deadline and "error" not in out:
            try:
                requests.get(url, timeout=1, allow_redirects=False)
                out["answering"] = time.time() - t0
                break
            except requests.RequestException:
                time.sleep(POLL)
        for t in threads:
            t.join(max(0.0, t0 + CYCLE_TIMEOUT - time.time()))
    finally:
        done.set()
    if "error" in out:
        raise RuntimeError(f"{user}: {out['error']}\n{hub.log_tail(40)}")
    for key in ("started", "answering", "ready", "post"):
        if key not in out:
            raise RuntimeError(f"{user}: no '{key}' time within {CYCLE_TIMEOUT} s")
    if out.get("sse_connected", 0) > out["ready"] - 0.001:
        out["late_sse"] = True
    out["gap"] = out["ready"] - out["answering"]

    t1 = time.time()
    r = hub.api("DELETE", f"/users/{user}/server")
    if r.status_code not in (202, 204):
        raise RuntimeError(f"DELETE {r.status_code}: {r.text[:300]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = hub.api("GET", f"/users/{user}").json()
        if "" not in model.get("servers", {}) and container_gone(api, name):
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"{user}'s server did not stop within 60 s")
    out["stop"] = time.time() - t1
    return out


# --- labelled images for the catalogue ---------------------------------------------------
def tiny_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"tljh-repo2docker benchmark\n"
        info = tarfile.TarInfo("bench.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_labelled_image(api: docker.APIClient, data: bytes, hub_name: str, name: str) -> str:
    commit = secrets.token_hex(20)
    index = int(name.rsplit("-", 1)[-1]) if name[-1].isdigit() else 0
    image_labels = labels.make_labels(
        hub=hub_name,
        environment=name,
        display_name=f"Benchmark environment {name}",
        repo=f"https://example.org/bench/{name}",
        ref="main",
        commit=commit,
        mem_limit=(512 * 1024**2) if index % 3 == 0 else None,
        cpu_limit=0.5 if index % 4 == 0 else None,
        built_by="benchmark",
        built_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    change = "LABEL " + " ".join(
        f"{json.dumps(k)}={json.dumps(v)}" for k, v in image_labels.items()
    )
    tag = labels.image_tag(IMAGE_PREFIX, name, commit)
    repository, _, version = tag.rpartition(":")
    api.import_image_from_data(data, repository=repository, tag=version, changes=[change])
    return tag


# --- the measurements ----------------------------------------------------------------------
def spawn_benchmark(args, hubs: dict, events, api) -> dict[str, list[dict]]:
    """hubs: label -> (hub, user, options). Returns label -> measured cycles."""
    results: dict[str, list[dict]] = {label: [] for label in hubs}
    for label, (hub, user, _options) in hubs.items():
        r = hub.api("POST", f"/users/{user}")
        if r.status_code not in (201, 409):
            raise RuntimeError(f"cannot create {user} on {label}: {r.status_code} {r.text}")
    order = list(hubs)
    for cycle in range(args.cycles + 1):
        # alternate which spawner goes first, so neither always follows the other
        for label in order if cycle % 2 == 0 else order[::-1]:
            hub, user, options = hubs[label]
            m = spawn_cycle(hub, user, options, events, api)
            tag = "warm-up, discarded" if cycle == 0 else f"cycle {cycle}/{args.cycles}"
            log(
                f"  {label:6} {tag:20} started {ms(m['started'])}  answering "
                f"{ms(m['answering'])}  ready {ms(m['ready'])}  POST {ms(m['post'])}  "
                f"gap {ms(m['gap'])}  stop {ms(m['stop'])} ms"
                + ("  (progress stream connected late)" if m.get("late_sse") else "")
            )
            if cycle > 0:
                results[label].append(m)
            time.sleep(0.3)
    return results


def spawn_benchmark_sequential(args, hubs: dict, events, api) -> dict[str, list[dict]]:
    results = {}
    for label, (hub, user, options) in hubs.items():
        hub.start()
        try:
            results.update(spawn_benchmark(args, {label: (hub, user, options)}, events, api))
        finally:
            if label != "ours":
                hub.stop()
    return results


def print_spawn_table(results: dict[str, list[dict]]):
    ours, plain = results["ours"], results["plain"]
    rows = [
        ("container started (docker start event)", "started"),
        ("single-user server answering (5 ms poll)", "answering"),
        ("hub reports ready (progress 'ready')", "ready"),
        ("POST /users/<name>/server returned", "post"),
        ("ready minus answering", "gap"),
        ("stop (DELETE to container gone)", "stop"),
    ]
    log()
    log(f"Spawn, ms from the POST request (n = {len(ours)} ours, {len(plain)} plain)")
    columns = ("ours med", "ours p90", "plain med", "plain p90")
    log(f"  {'':42} " + " ".join(f"{c:>9}" for c in columns) + f" {'ratio':>7}")
    for title, key in rows:
        o = [m[key] for m in ours]
        p = [m[key] for m in plain]
        log(
            f"  {title:42} {ms(median(o)):>9} {ms(quantile(o, 0.9)):>9} "
            f"{ms(median(p)):>9} {ms(quantile(p, 0.9)):>9} {ratio(median(o), median(p)):>7}"
        )
    log("  (ratio = ours median / plain DockerSpawner median)")
    gap_p90 = quantile([m["gap"] for m in ours], 0.9)
    diff = median([m["started"] for m in ours]) - median([m["started"] for m in plain])
    pairs = [a["started"] - b["started"] for a, b in zip(ours, plain, strict=False)]
    log()
    log(f"  target 'ready minus answering' p90 <= 100 ms (ours): {verdict(gap_p90, 0.1)}")
    log(
        f"  plain DockerSpawner 'ready minus answering': median "
        f"{ms(median([m['gap'] for m in plain])).strip()} ms, "
        f"p90 {ms(quantile([m['gap'] for m in plain], 0.9)).strip()} ms"
    )
    log(
        f"  target 'container started: ours minus plain' <= 20 ms: {verdict(diff, 0.02)} "
        f"(difference of medians; per-cycle pairs median {ms(median(pairs)).strip()} ms)"
    )
    late = sum(1 for m in ours + plain if m.get("late_sse"))
    if late:
        log(f"  note: in {late} cycle(s) the progress stream connected after the spawn ended")


async def catalogue_benchmark(hub_name: str, n: int, api: docker.APIClient, data: bytes):
    log()
    log(f"Catalogue with {n + 1} environments of hub {hub_name} (in-process, asyncio)")
    catalogue = Catalogue(hub_name)
    try:
        t = time.perf_counter()
        envs = await catalogue.environments()
        cold = time.perf_counter() - t
        if len(envs) != n + 1:
            raise RuntimeError(f"catalogue lists {len(envs)} environments, expected {n + 1}")
        warm = []
        for _ in range(200):
            t = time.perf_counter()
            await catalogue.environments()
            warm.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)
        fresh = []
        for _ in range(20):
            t = time.perf_counter()
            await catalogue.environments(fresh=True)
            fresh.append(time.perf_counter() - t)
    finally:
        await catalogue.close()
    log(f"  environments() cold (first call, Docker round trip)   {ms(cold).strip():>8} ms")
    log(
        f"  environments() warm, 200 calls: median {ms(median(warm)).strip()} ms, "
        f"p90 {ms(quantile(warm, 0.9)).strip()} ms, p95 {ms(quantile(warm, 0.95)).strip()} ms"
    )
    log(
        f"  environments(fresh=True), 20 calls (Docker listing + parsing): median "
        f"{ms(median(fresh)).strip()} ms, p90 {ms(quantile(fresh, 0.9)).strip()} ms "
        f"[{ratio(median(fresh), PEER_LISTING_MS / 1000).strip()} "
        f"of the peer's {PEER_LISTING_MS:g} ms]"
    )

    # A new image appearing in a warm catalogue listed every 50 ms.
    catalogue = Catalogue(hub_name)
    seen: dict[str, float] = {}
    wanted: set[str] = set()
    stop = asyncio.Event()

    async def lister():
        while not stop.is_set():
            names = {e.environment for e in await catalogue.environments()}
            now = time.perf_counter()
            for name in wanted - seen.keys():
                if name in names:
                    seen[name] = now
            await asyncio.sleep(0.05)

    visible_after_created, visible_after_request = [], []
    rng = random.Random(42)  # noqa: S311 (phases, not secrets)
    try:
        await catalogue.environments()
        task = asyncio.ensure_future(lister())
        for trial in range(5):
            await asyncio.sleep(rng.uniform(0.1, 0.6))  # various ages of the cache
            name = f"new-{trial}"
            wanted.add(name)
            t_request = time.perf_counter()
            await asyncio.to_thread(import_labelled_image, api, data, hub_name, name)
            t_created = time.perf_counter()
            deadline = t_created + 10
            while name not in seen and time.perf_counter() < deadline:
                await asyncio.sleep(0.005)
            if name not in seen:
                raise RuntimeError(f"new image {name} not listed within 10 s")
            visible_after_created.append(seen[name] - t_created)
            visible_after_request.append(seen[name] - t_request)
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        await catalogue.close()
    worst = max(visible_after_created)
    log(
        f"  new image visible, 5 trials, from the image existing: median "
        f"{ms(median(visible_after_created)).strip()} ms, max {ms(worst).strip()} ms "
        f"(from the import request: median {ms(median(visible_after_request)).strip()} ms); "
        f"target < 1 s: {verdict(worst, 1.0)}"
    )
    return n + 6  # environments now in the catalogue


async def form_in_process(hub_name: str, expected: int):
    c = Config()
    c.BuildSettings.hub_name = hub_name
    # a user who sees every public environment, as in the hub
    viewer = SimpleNamespace(name="bench", groups=[], admin=False)
    spawner = Repo2DockerSpawner(config=c, user=viewer)
    try:
        html = await Repo2DockerSpawner.render_options_form(spawner)  # warms the catalogue
        count = html.count('name="environment"')
        if count != expected:
            raise RuntimeError(f"form lists {count} environments, expected {expected}")
        times = []
        for _ in range(100):
            t = time.perf_counter()
            await Repo2DockerSpawner.render_options_form(spawner)
            times.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)
    finally:
        await spawner.catalogue.close()
    log()
    log(f"Spawn form with {expected} environments")
    log(
        f"  render_options_form in-process, 100 renders: median {ms(median(times)).strip()} ms, "
        f"p90 {ms(quantile(times, 0.9)).strip()} ms ({len(html) // 1024} KiB); "
        f"target < 20 ms: {verdict(quantile(times, 0.9), 0.02)} "
        f"[{ratio(median(times), PEER_FORM_MS / 1000).strip()} of the peer's {PEER_FORM_MS:g} ms]"
    )


def form_over_http(hub: HubProcess, user: str, expected: int):
    session = hub.login(user)
    spawn, home = [], []
    for i in range(33):
        for url, bucket in (("/hub/spawn", spawn), ("/hub/home", home)):
            t = time.perf_counter()
            r = session.get(hub.url + url, allow_redirects=False, timeout=30)
            elapsed = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:300]}")
            if i < 3:
                continue  # warm-up: the hub's catalogue may still serve an older listing
            listed = r.text.count('name="environment"')
            if url == "/hub/spawn" and listed != expected:
                raise RuntimeError(f"GET /hub/spawn lists {listed} environments, not {expected}")
            bucket.append(elapsed)
    log(
        f"  GET /hub/spawn through the hub, 30 requests: median {ms(median(spawn)).strip()} ms, "
        f"p90 {ms(quantile(spawn, 0.9)).strip()} ms"
    )
    log(
        f"  GET /hub/home (baseline: the hub's own page), 30 requests: median "
        f"{ms(median(home)).strip()} ms, p90 {ms(quantile(home, 0.9)).strip()} ms; "
        f"spawn/home {ratio(median(spawn), median(home)).strip()}, "
        f"difference {ms(median(spawn) - median(home)).strip()} ms"
    )
    log(
        f"  for context, the issue's peer plugin: spawn form {PEER_FORM_MS:g} ms, "
        f"listing {PEER_LISTING_MS:g} ms"
    )


# --- main ------------------------------------------------------------------------------------
def check_host():
    problem = missing_tools()
    if problem:
        sys.exit(problem)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=15, help="measured start/stop cycles")
    parser.add_argument("--environments", type=int, default=200, help="extra catalogue images")
    parser.add_argument(
        "--order",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="interleaved: both hubs up, cycles alternate; sequential: one hub at a time",
    )
    args = parser.parse_args()
    if args.cycles < 1 or args.environments < 1:
        parser.error("--cycles and --environments must be at least 1")
    check_host()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)

    hex_id = secrets.token_hex(4)
    hub_name = f"bench-{hex_id}"
    tmp = Path(tempfile.mkdtemp(prefix="tljh-r2d-bench-"))
    api = docker.APIClient(timeout=120)
    hubs: list[HubProcess] = []
    events: StartEvents | None = None
    users = {"ours": f"ours{hex_id}", "plain": f"plain{hex_id}", "form": f"form{hex_id}"}
    try:
        settings = {
            "hub_name": hub_name,
            "image_prefix": IMAGE_PREFIX,
            "homes_dir": str(tmp / "homes"),
            "allow_local_repos": True,
            "repo2docker_config": [OFFLINE_R2D_CONFIG],
        }
        (tmp / "homes").mkdir()
        ours_config = tmp / "ours_jupyterhub_config.py"
        ours_config.write_text(OURS_CONFIG.format(dev_config=str(DEV_CONFIG)))
        ours = ConfigFileHub(tmp / "ours", settings, secrets.token_hex(16), ours_config)
        ours.write_config()
        repo = make_git_repo(tmp / "repo", marker=hub_name)
        log(f"hub_name {hub_name}; building environment '{ENVIRONMENT}' with the CLI ...")
        t = time.monotonic()
        cli = [sys.executable, "-m", "tljh_repo2docker", "--hub-name", hub_name, "build"]
        cli += [f"file://{repo}", "--ref", "main", "--name", ENVIRONMENT, "--allow-local-repos"]
        cli += ["--repo2docker-config", OFFLINE_R2D_CONFIG]
        out = run(cli, timeout=600, env=ours.env)
        image = out.strip().splitlines()[-1].split()[-1]
        log(f"  built {image} in {time.monotonic() - t:.1f} s")

        plain_home = tmp / "plain-home"
        plain_home.mkdir(mode=0o700)
        os.chown(plain_home, 1000, 1000)
        plain_config = tmp / "plain_jupyterhub_config.py"
        plain_config.write_text(
            PLAIN_CONFIG.format(dev_config=str(DEV_CONFIG), image=image, home=str(plain_home))
        )
        plain = ConfigFileHub(tmp / "plain", settings, secrets.token_hex(16), plain_config)
        hubs = [ours, plain]

        events = StartEvents()
        time.sleep(0.5)  # let `docker events` subscribe
        spawn_hubs = {
            "ours": (ours, users["ours"], {"environment": ENVIRONMENT}),
            "plain": (plain, users["plain"], None),
        }
        log()
        if args.order == "interleaved":
            log(
                f"Spawn cycles: both hubs running, cycles interleaved (ours/plain, order "
                f"alternating), 1 warm-up + {args.cycles} measured each, image {image}"
            )
            ours.start()
            plain.start()
            results = spawn_benchmark(args, spawn_hubs, events, api)
            plain.stop()
        else:
            log(
                f"Spawn cycles: one hub at a time (plain first, then ours), "
                f"1 warm-up + {args.cycles} measured each, image {image}"
            )
            results = spawn_benchmark_sequential(
                args, {"plain": spawn_hubs["plain"], "ours": spawn_hubs["ours"]}, events, api
            )
        print_spawn_table(results)

        log()
        log(f"Creating {args.environments} labelled images (docker import, 8 in parallel) ...")
        data = tiny_tar()
        t = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: import_labelled_image(api, data, hub_name, f"env-{i:04d}"),
                    range(args.environments),
                )
            )
        log(f"  created in {time.monotonic() - t:.1f} s")
        total = asyncio.run(catalogue_benchmark(hub_name, args.environments, api, data))
        asyncio.run(form_in_process(hub_name, total))
        form_over_http(ours, users["form"], total)
        log()
        log("Done: figures only, nothing asserted.")
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: cleaning up")
        return 130
    except Exception:
        # the hubs' logs are in the temporary folder removed below: show them first
        for hub in hubs:
            state = "not started" if hub.proc is None else f"exit code {hub.proc.poll()}"
            log(f"\n=== {hub.prefix.name} hub ({state}), last lines of its log ===")
            log(hub.log_tail(60))
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for hub in hubs:
            try:
                hub.stop()
            except Exception as e:
                log(f"cleanup: stopping a hub failed: {e!r}")
        if events is not None:
            events.close()
        for user in users.values():
            # plain DockerSpawner's containers carry no hub label: remove them by name
            subprocess.run(
                ["docker", "rm", "-f", f"jupyter-{user}"], capture_output=True, timeout=60
            )
        remove_hub_objects(hub_name)
        shutil.rmtree(tmp, ignore_errors=True)
        api.close()


if __name__ == "__main__":
    sys.exit(main())
