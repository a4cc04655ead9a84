"""Spawn storms: N users press Start at the same moment, ours against plain
DockerSpawner on the same image, in one run.

    .venv/bin/python benchmarks/storm.py [--users 20,50] [--rounds 1]

Builds one environment image with the real CLI and starts two real hubs
(``benchmarks/spawn.py``'s: this project's config as is, and the same config
switched to plain DockerSpawner on the same image). For each storm size and
round, on each hub in turn (order alternating), N users' servers are
requested at once through the REST API and followed on the hub's progress
stream (as a browser does; no polling). Printed per hub and size: success
rate, ready time from the POST (p50, p95, max), the batch's wall time, and
the hub process's CPU seconds per spawn (/proc/<pid>/stat, the hub only: not
the proxy, the service or the containers). Then the servers are stopped.
Figures only, nothing asserted. Everything it creates is removed on exit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import spawn as spawnbench  # noqa: E402

from tests.dockerfixtures import make_git_repo, remove_hub_objects  # noqa: E402
from tests.hubprocess import OFFLINE_R2D_CONFIG, HubProcess, missing_tools  # noqa: E402

log = spawnbench.log
quantile = spawnbench.quantile
STOP_TIMEOUT = 180.0

PLAIN_TIMEOUT = """\
c.Spawner.start_timeout = {timeout!r}
c.Spawner.http_timeout = {http_timeout!r}
"""
UNLIMITED = """\
c.Repo2DockerSpawner.max_concurrent_starts = 0
"""


def short(error: str) -> str:
    """An error without its URLs and numbers, so that alike ones count together."""
    return re.sub(r"\d+", "N", re.sub(r"https?://\S+", "<url>", error))


def hub_cpu_seconds(hub: HubProcess) -> float:
    """User + system CPU time of the hub process."""
    with open(f"/proc/{hub.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def follow_one(hub: HubProcess, user: str, options, t0: float, out: dict, timeout: float):
    """POST the start, then the progress stream until ready or failed."""
    auth = {"Authorization": f"token {hub.token}"}
    try:
        kwargs = {"json": options} if options else {}
        r = hub.api("POST", f"/users/{user}/server", **kwargs)
        if r.status_code == 201:
            out["ready"] = time.time() - t0
            return
        if r.status_code != 202:
            out["error"] = f"POST {r.status_code}: {r.text[:200]}"
            return
        url = f"{hub.url}/hub/api/users/{user}/server/progress"
        with requests.get(url, headers=auth, stream=True, timeout=(5, timeout)) as resp:
            for line in resp.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("ready"):
                    out["ready"] = time.time() - t0
                    return
                if event.get("failed"):
                    out["error"] = str(event.get("message") or "failed")[:200]
                    return
        # the stream ended without a verdict: ask once
        server = hub.api("GET", f"/users/{user}").json().get("servers", {}).get("")
        if server and server.get("ready"):
            out["ready"] = time.time() - t0
        else:
            out["error"] = "stream ended without ready"
    except Exception as e:  # counted as a failure, with why
        out["error"] = f"{type(e).__name__}: {e}"[:200]


def stop_all(hub: HubProcess, users: list[str]):
    for user in users:
        hub.api("DELETE", f"/users/{user}/server")
    deadline = time.monotonic() + STOP_TIMEOUT
    left = set(users)
    while left and time.monotonic() < deadline:
        for user in list(left):
            model = hub.api("GET", f"/users/{user}").json()
            if "" not in model.get("servers", {}):
                left.discard(user)
        time.sleep(1)
    if left:
        log(f"  warning: {len(left)} servers still stopping after {STOP_TIMEOUT:.0f} s")


def storm(hub: HubProcess, users: list[str], options, timeout: float) -> dict:
    for user in users:
        hub.api("POST", f"/users/{user}")
    results = {u: {} for u in users}
    cpu0 = hub_cpu_seconds(hub)
    t0 = time.time()
    threads = [
        threading.Thread(
            target=follow_one, args=(hub, u, options, t0, results[u], timeout), daemon=True
        )
        for u in users
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 60)
    wall = time.time() - t0
    cpu = hub_cpu_seconds(hub) - cpu0
    ready = [r["ready"] for r in results.values() if "ready" in r]
    errors = collections.Counter(
        short(r.get("error", "no answer")) for r in results.values() if "ready" not in r
    )
    return {"n": len(users), "ready": ready, "errors": errors, "wall": wall, "cpu": cpu}


def print_table(rows: list[tuple[str, int, dict]]):
    log()
    log(
        f"{'hub':6} {'users':>5} {'success':>9} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
        f"{'wall s':>7} {'hub CPU-s/spawn':>16}"
    )
    for label, _n, m in rows:
        ready = m["ready"]
        p50 = quantile(ready, 0.5)
        p95 = quantile(ready, 0.95)
        top = max(ready) if ready else float("nan")
        log(
            f"{label:6} {m['n']:5d} {len(ready):4d}/{m['n']:<4d} {p50:7.1f} {p95:7.1f} {top:7.1f} "
            f"{m['wall']:7.1f} {m['cpu'] / m['n']:16.3f}"
        )
        for error, count in m["errors"].most_common(3):
            log(f"         {count} x {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="20,50", help="storm sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=1, help="storms per size and hub")
    parser.add_argument(
        "--plain-start-timeout",
        type=float,
        default=60.0,
        help="plain DockerSpawner's start_timeout (JupyterHub's default: 60)",
    )
    parser.add_argument(
        "--plain-http-timeout",
        type=float,
        default=30.0,
        help="plain DockerSpawner's http_timeout (JupyterHub's default: 30)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="ours: this max_concurrent_starts instead of the configured default",
    )
    parser.add_argument(
        "--unlimited",
        action="store_true",
        help="also a third hub: ours without admission control (max_concurrent_starts 0)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.users.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.rounds < 1:
        parser.error("--users and --rounds must be positive")
    problem = missing_tools()
    if problem:
        sys.exit(problem)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    hex_id = secrets.token_hex(3)
    hub_name = f"bench-storm-{hex_id}"
    tmp = Path(tempfile.mkdtemp(prefix="tljh-r2d-storm-"))
    hubs: list[HubProcess] = []
    all_users: list[str] = []
    try:
        settings = {
            "hub_name": hub_name,
            "image_prefix": spawnbench.IMAGE_PREFIX,
            "homes_dir": str(tmp / "homes"),
            "allow_local_repos": True,
            "repo2docker_config": [OFFLINE_R2D_CONFIG],
        }
        (tmp / "homes").mkdir()
        ours_config = tmp / "ours_jupyterhub_config.py"
        ours_config.write_text(spawnbench.OURS_CONFIG.format(dev_config=str(spawnbench.DEV_CONFIG)))
        base_config = ours_config.read_text()
        if args.limit is not None:
            ours_config.write_text(
                base_config + f"c.Repo2DockerSpawner.max_concurrent_starts = {args.limit}\n"
            )
        ours = HubProcess(tmp / "ours", settings, secrets.token_hex(16), ours_config)
        ours.write_config()
        repo = make_git_repo(tmp / "repo", marker=hub_name)
        log(f"hub_name {hub_name}; building environment '{spawnbench.ENVIRONMENT}' ...")
        cli = [sys.executable, "-m", "tljh_repo2docker", "--hub-name", hub_name, "build"]
        cli += [f"file://{repo}", "--ref", "main", "--name", spawnbench.ENVIRONMENT]
        cli += ["--allow-local-repos", "--repo2docker-config", OFFLINE_R2D_CONFIG]
        image = spawnbench.run(cli, timeout=600, env=ours.env).strip().splitlines()[-1].split()[-1]
        log(f"  built {image}")

        plain_home = tmp / "plain-home"
        plain_home.mkdir(mode=0o700)
        os.chown(plain_home, 1000, 1000)
        plain_config = tmp / "plain_jupyterhub_config.py"
        plain_config.write_text(
            spawnbench.PLAIN_CONFIG.format(
                dev_config=str(spawnbench.DEV_CONFIG), image=image, home=str(plain_home)
            )
            + PLAIN_TIMEOUT.format(
                timeout=args.plain_start_timeout, http_timeout=args.plain_http_timeout
            )
        )
        plain = HubProcess(tmp / "plain", settings, secrets.token_hex(16), plain_config)
        hubs = [ours, plain]
        variants = {
            "ours": (ours, {"environment": spawnbench.ENVIRONMENT}, 120.0),
            "plain": (plain, None, args.plain_start_timeout + args.plain_http_timeout),
        }
        if args.unlimited:
            unlimited_config = tmp / "ours0_jupyterhub_config.py"
            unlimited_config.write_text(base_config + UNLIMITED)
            ours0 = HubProcess(tmp / "ours0", settings, secrets.token_hex(16), unlimited_config)
            hubs.append(ours0)
            variants["ours0"] = (ours0, {"environment": spawnbench.ENVIRONMENT}, 120.0)
        for hub in hubs:
            hub.start()
        log(
            f"Storms of {sizes} users, {args.rounds} round(s) each, hubs alternating; "
            f"start_timeout ours 120 s (max_concurrent_starts "
            f"{'default' if args.limit is None else args.limit}; ours0: no limit), plain "
            f"{args.plain_start_timeout:g} s + http_timeout {args.plain_http_timeout:g} s"
        )
        rows = []
        turn = 0
        for n in sizes:
            for rnd in range(args.rounds):
                order = list(variants) if turn % 2 == 0 else list(variants)[::-1]
                turn += 1
                for label in order:
                    hub, options, timeout = variants[label]
                    users = [f"{label}{hex_id}n{n}r{rnd}u{i}" for i in range(n)]
                    all_users.extend(users)
                    m = storm(hub, users, options, timeout + 30)
                    rows.append((label, n, m))
                    ready = m["ready"]
                    log(
                        f"  {label:6} {n} users, round {rnd + 1}: {len(ready)}/{n} ready, "
                        f"p50 {quantile(ready, 0.5):.1f} s, p95 {quantile(ready, 0.95):.1f} s, "
                        f"hub CPU {m['cpu']:.1f} s"
                    )
                    stop_all(hub, users)
                    time.sleep(2)
        print_table(rows)
        for label, (hub, _o, _t) in variants.items():
            text = hub.log_path.read_text(errors="replace")
            cancelled = text.count("Exception after Future was cancelled")
            gave_up = text.count("giving up")
            log(
                f"{label} hub log: {cancelled} 'Exception after Future was cancelled', "
                f"{gave_up} timeouts ('giving up')"
            )
        log()
        log("Done: figures only, nothing asserted.")
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: cleaning up")
        return 130
    except Exception:
        for hub in hubs:
            log(f"\n=== {hub.prefix.name} hub, last lines of its log ===")
            log(hub.log_tail(60))
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for hub in hubs:
            try:
                hub.stop()
            except Exception as e:
                log(f"cleanup: stopping a hub failed: {e!r}")
        for user in all_users:
            # plain DockerSpawner's containers carry no hub label: by name
            subprocess.run(
                ["docker", "rm", "-f", f"jupyter-{user}"], capture_output=True, timeout=60
            )
        remove_hub_objects(hub_name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
