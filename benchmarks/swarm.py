"""Swarm figures (issue 12): first start with and without the image on the
worker, pre-pull time for N workers, and a spawn storm on one host against
the same storm on the swarm's workers, in one run.

    .venv/bin/python benchmarks/swarm.py [--workers 2] [--users 20] [--repeats 3]

Starts the real Docker-in-Docker swarm of ``tests/swarm/cluster.py``
(registry, manager, ``--workers`` workers) and builds one environment with
the real CLI under a swarm hub's config (pushed to the registry, pre-pulled
as the product does after a build). Then:

1. **First start on a worker**: a Swarm service of the environment's image
   (its command a bare ``python3 -m http.server``, so that the server's own
   start-up is not in the figure), created through the manager's engine and
   constrained to worker1, timed from the create to the task ``running`` and
   to its host-mode port answering; ``--repeats`` runs with the image removed
   from the worker first (the task pulls it from the registry) alternating
   with runs where the worker holds it (pre-pulled).
2. **Pre-pull**: ``tljh_repo2docker.prepull.prepull`` (the global job the
   product runs after a push) for N = 1 .. ``--workers`` workers, the image
   removed from every worker first; time until every one of the N holds it.
3. **Spawn storm**: ``--users`` servers requested at once through the REST
   API of two real hubs on the same environment (same Dockerfile, same
   base layers): one in single-host mode (servers on this host's engine, as
   ``benchmarks/storm.py``), one in swarm mode (servers on the workers, as
   ``tests/swarm/test_swarm_hub.py`` configures it); ``benchmarks/storm.py``
   runs the storm and follows the progress streams.

Figures only (medians, p90/p95, ratios to the baseline of the same run),
never asserted. Everything it makes (cluster, hubs, containers, images,
folders) is removed on exit, also on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import spawn as spawnbench  # noqa: E402
import storm as stormbench  # noqa: E402

from tests.dockerfixtures import make_git_repo, remove_hub_objects  # noqa: E402
from tests.hubprocess import HubProcess, hub_settings_for, missing_tools  # noqa: E402
from tests.swarm.cluster import (  # noqa: E402
    BASE_IMAGE,
    FINAL_STATES,
    Cluster,
    image_id,
    missing_prerequisites,
)
from tljh_repo2docker import prepull  # noqa: E402

log = spawnbench.log
quantile = spawnbench.quantile
median = spawnbench.median
ratio = spawnbench.ratio
ENVIRONMENT = spawnbench.ENVIRONMENT
PORT = 8888  # the probe server's port in the task
POLL = 0.05  # the benchmark's own polling interval (s)
FIRST_START_TIMEOUT = 600.0


def cpu_note() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores shared by everything (hubs, proxy, registry, the manager and "
        f"workers as Docker-in-Docker containers, the servers); load average {load}"
    )


# --- 1. first start on a worker, with and without the image ------------------------------
def has_image(cluster: Cluster, node, image: str) -> bool:
    """``image``: its id, the same on every engine (the digest of its config).
    Not the tag: a task of a service made by ``docker service create`` pulls
    ``<ref>@<digest>`` and leaves the image untagged on the node."""
    return cluster.docker(node, "image", "inspect", image, check=False).returncode == 0


def remove_image(cluster: Cluster, node, image: str) -> None:
    """The image off the node, its layers too (nothing else uses them there).

    Finished task containers (a pre-pull job's, a removed service's) keep
    the image in use until Swarm removes them, a little after the service:
    ``rmi -f`` would only untag it and leave the layers, and the next "pull"
    would find them."""
    if not has_image(cluster, node, image):
        return

    def users() -> list[str]:
        return cluster.docker(node, "ps", "-aq", "--filter", f"ancestor={image}").stdout.split()

    deadline = time.monotonic() + 30
    while users() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = users()
    if left:  # finished tasks of services that are gone: nothing runs them
        cluster.docker(node, "rm", "-f", *left)
    cluster.docker(node, "rmi", "-f", image)  # every tag and digest reference of it
    if has_image(cluster, node, image):
        raise RuntimeError(f"{image} is still on {node.hostname}")


def answers(address: tuple[str, int]) -> bool:
    try:
        requests.get(f"http://{address[0]}:{address[1]}/", timeout=1)
        return True
    except requests.RequestException:
        return False


def first_start(cluster: Cluster, client: docker.APIClient, node, ref: str, name: str) -> dict:
    """Create a one-task service on ``node``; seconds to each task state and
    to the port answering. The service and its container are removed after."""
    out: dict = {}
    began = time.monotonic()
    service = cluster.service_create(
        name,
        ref,
        ["python3", "-m", "http.server", str(PORT)],
        constraints=[f"node.hostname=={node.hostname}"],
        ports=[PORT],
    )
    try:
        out["created"] = time.monotonic() - began
        deadline = began + FIRST_START_TIMEOUT
        task = None
        while time.monotonic() < deadline:
            tasks = client.tasks(filters={"service": service})
            if tasks:
                task = max(tasks, key=lambda t: t["CreatedAt"])
                state = task["Status"]["State"]
                out.setdefault(state, time.monotonic() - began)
                if state == "running":
                    break
                if state in FINAL_STATES:
                    raise RuntimeError(f"task {state}: {task['Status'].get('Err', '')}")
            time.sleep(POLL)
        else:
            raise RuntimeError(f"no running task within {FIRST_START_TIMEOUT:g} s")
        address = cluster.task_address(task, PORT)
        while not answers(address):
            if time.monotonic() > deadline:
                raise RuntimeError(f"running, but {address} did not answer")
            time.sleep(POLL)
        out["answering"] = time.monotonic() - began
        return out
    finally:
        cluster.service_rm(service)

        def gone():
            left = cluster.docker(
                node, "ps", "-aq", "--filter", f"label=com.docker.swarm.service.id={service}"
            ).stdout.split()
            return not left

        deadline = time.monotonic() + 120
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.2)


def measure_first_starts(cluster: Cluster, ref: str, image: str, repeats: int, tag: str) -> dict:
    node = cluster.workers[0]
    client = docker.APIClient(base_url=cluster.manager.docker_host, timeout=60)
    runs: dict[str, list[dict]] = {"pull": [], "pre-pulled": []}
    try:
        for i in range(repeats):
            remove_image(cluster, node, image)
            for kind in ("pull", "pre-pulled"):  # the pull leaves it there for the next
                m = first_start(cluster, client, node, ref, f"bench-{tag}-{kind[:3]}{i}")
                runs[kind].append(m)
                log(
                    f"  {kind:10} run {i + 1}: running {m['running']:6.2f} s, "
                    f"answering {m['answering']:6.2f} s"
                )
    finally:
        client.close()
    return runs


def print_first_starts(runs: dict, node: str) -> None:
    log()
    log(f"1. First start on {node} (create -> task running / port answering), seconds")
    log(f"   {'':12} {'runs':>4} {'running p50':>12} {'p90':>6} {'answering p50':>14} {'p90':>6}")
    for kind, ms in runs.items():
        running = [m["running"] for m in ms]
        answering = [m["answering"] for m in ms]
        log(
            f"   {kind:12} {len(ms):4d} {median(running):12.2f} {quantile(running, 0.9):6.2f} "
            f"{median(answering):14.2f} {quantile(answering, 0.9):6.2f}"
        )
    pulled = [m["answering"] for m in runs["pull"]]
    held = [m["answering"] for m in runs["pre-pulled"]]
    # the task pulls while "preparing"; "starting" can be too short to be seen
    pulls = [m.get("starting", m["running"]) - m.get("preparing", 0.0) for m in runs["pull"]]
    log(
        f"   without the image / with it (answering, medians): "
        f"{ratio(median(pulled), median(held)).strip()}; the pull itself (task preparing): "
        f"median {median(pulls):.2f} s"
    )


# --- 2. pre-pull on N workers ------------------------------------------------------------
def constraints_for(cluster: Cluster, n: int) -> list[str]:
    """Placement on the first ``n`` workers only (constraints are ANDed)."""
    others = [f"node.hostname!={w.hostname}" for w in cluster.workers[n:]]
    return ["node.role==worker", *others]


def measure_prepulls(cluster: Cluster, ref: str, image: str, rounds: int, hub_name: str) -> dict:
    results: dict[int, list[tuple[float, list, list]]] = {}
    workers = cluster.workers
    for rnd in range(rounds):
        for n in range(1, len(workers) + 1):
            with ThreadPoolExecutor(len(workers)) as pool:
                list(pool.map(lambda w: remove_image(cluster, w, image), workers))
            lines: list[str] = []
            began = time.monotonic()
            pulled, failed = asyncio.run(
                prepull.prepull(
                    cluster.manager.docker_host,
                    ref,
                    constraints_for(cluster, n),
                    hub_name,
                    lines.append,
                    timeout=FIRST_START_TIMEOUT,
                )
            )
            took = time.monotonic() - began
            holding = [w.hostname for w in workers if has_image(cluster, w, image)]
            results.setdefault(n, []).append((took, pulled, failed))
            log(
                f"  round {rnd + 1}, N={n}: {took:6.2f} s, pulled on {pulled or '-'}"
                f"{f', FAILED {failed}' if failed else ''}; holding it now: {holding}"
            )
    return results


def print_prepulls(results: dict, pull_at_start: float) -> None:
    log()
    log("2. Pre-pull (tljh_repo2docker.prepull: one global job) until all N workers hold it")
    log(f"   {'N':>3} {'rounds':>6} {'ok':>4} {'median s':>9} {'max s':>7} {'vs N=1':>8}")
    base = median([t for t, _, _ in results.get(1, [])])
    for n, rows in sorted(results.items()):
        times = [t for t, _, _ in rows]
        ok = sum(1 for _, pulled, failed in rows if len(pulled) == n and not failed)
        log(
            f"   {n:3d} {len(rows):6d} {ok:4d} {median(times):9.2f} {max(times):7.2f} "
            f"{ratio(median(times), base):>8}"
        )
    log(
        f"   for comparison, a first start that pulls (part 1, until running): "
        f"median {pull_at_start:.2f} s"
    )


# --- 3. spawn storm: one host against the swarm's workers ----------------------------------
def build(hub: HubProcess, repo: Path) -> str:
    """The environment, built by the CLI with the hub's own config.yaml; its image."""
    cli = [sys.executable, "-m", "tljh_repo2docker", "build", f"file://{repo}"]
    cli += ["--ref", "v1", "--name", ENVIRONMENT]
    out = spawnbench.run(cli, timeout=1200, env=hub.env)
    return out.strip().splitlines()[-1].split()[-1]


def storm_round(label: str, hub: HubProcess, users: list[str], timeout: float) -> dict:
    m = stormbench.storm(hub, users, {"environment": ENVIRONMENT}, timeout + 30)
    ready = m["ready"]
    log(
        f"  {label:6} {m['n']} users: {len(ready)}/{m['n']} ready, p50 "
        f"{quantile(ready, 0.5):.1f} s, p95 {quantile(ready, 0.95):.1f} s, hub CPU {m['cpu']:.1f} s"
    )
    stormbench.stop_all(hub, users)
    return m


def print_storm_ratios(rows: list[tuple[str, int, dict]]) -> None:
    by_label: dict[str, list[dict]] = {}
    for label, _n, m in rows:
        by_label.setdefault(label, []).append(m)

    def pooled(label: str, what: str) -> float:
        ms = by_label.get(label, [])
        if what == "cpu":
            return sum(m["cpu"] for m in ms) / max(1, sum(m["n"] for m in ms))
        ready = [r for m in ms for r in m["ready"]]
        return quantile(ready, 0.5 if what == "p50" else 0.95)

    log(
        "   swarm / 1 host: "
        + ", ".join(
            f"{what} {ratio(pooled('swarm', what), pooled('host', what)).strip()}"
            for what in ("p50", "p95", "cpu")
        )
        + " (cpu: the hub process's CPU-seconds per spawn)"
    )


# --- main ---------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="swarm workers (2 or 3)")
    parser.add_argument("--users", type=int, default=20, help="servers per storm (20 or 50)")
    parser.add_argument("--repeats", type=int, default=3, help="first starts of each kind")
    parser.add_argument("--prepull-rounds", type=int, default=2, help="pre-pulls per N")
    parser.add_argument("--rounds", type=int, default=1, help="storms per hub")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=240.0,
        help="both hubs' server_start_timeout (the swarm hub test's 240 s)",
    )
    parser.add_argument(
        "--parts", default="1,2,3", help="which parts to run, comma separated (for trials)"
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if min(
        args.workers, args.users, args.repeats, args.prepull_rounds, args.rounds
    ) < 1 or not parts <= {"1", "2", "3"}:
        parser.error("counts must be positive; --parts takes 1, 2, 3")
    problem = missing_tools() or missing_prerequisites()
    if problem:
        sys.exit(problem)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    hex_id = secrets.token_hex(3)
    swarm_name = f"bench-swarm-{hex_id}"
    host_name = f"bench-swarm1h-{hex_id}"
    tmp = Path(tempfile.mkdtemp(prefix="tljh-r2d-swarm-bench-"))
    cluster = Cluster(workers=args.workers)
    hubs: list[HubProcess] = []
    try:
        log(f"hub names {swarm_name} (swarm) and {host_name} (1 host); {cpu_note()}")
        began = time.monotonic()
        cluster.start()
        log(
            f"swarm {cluster.run_id}: registry {cluster.registry}, manager + "
            f"{args.workers} workers, up in {time.monotonic() - began:.1f} s"
        )
        config = tmp / "jupyterhub_config.py"
        config.write_text(spawnbench.OURS_CONFIG.format(dev_config=str(spawnbench.DEV_CONFIG)))
        swarm_hub = HubProcess(
            tmp / "swarm",
            hub_settings_for(
                swarm_name,
                cluster.homes,  # the same path on the host and on every node
                image_prefix=f"{cluster.registry}/{swarm_name}/",
                registry=cluster.registry,
                registry_scheme="http",
                builder_base_image=BASE_IMAGE,  # builds run in builder containers
                server_start_timeout=args.start_timeout,
                swarm={
                    "enabled": True,
                    "manager": cluster.manager.docker_host,
                    "hub_ip": cluster.gateway,
                    "prepull": True,
                },
            ),
            secrets.token_hex(16),
            config,
        )
        (tmp / "homes").mkdir()
        host_hub = HubProcess(
            tmp / "host",
            hub_settings_for(
                host_name,
                str(tmp / "homes"),
                image_prefix=spawnbench.IMAGE_PREFIX,
                server_start_timeout=args.start_timeout,
            ),
            secrets.token_hex(16),
            config,
        )
        hubs = [host_hub, swarm_hub]
        for hub in hubs:
            hub.write_config()
        repo = make_git_repo(tmp / "repo", marker=swarm_name)
        began = time.monotonic()
        ref = build(swarm_hub, repo)
        image = image_id(ref)  # the build's copy on this host
        if not image:
            raise RuntimeError(f"{ref} is not on this host after the build")
        holding = [w.hostname for w in cluster.workers if has_image(cluster, w, image)]
        log(
            f"built, pushed and pre-pulled {ref} in {time.monotonic() - began:.1f} s; "
            f"on the workers: {holding}"
        )

        pull_at_start = float("nan")
        if "1" in parts:
            log(f"\n1. first starts on {cluster.workers[0].hostname}, {args.repeats} of each")
            runs = measure_first_starts(cluster, ref, image, args.repeats, hex_id)
            print_first_starts(runs, cluster.workers[0].hostname)
            pull_at_start = median([m["running"] for m in runs["pull"]])
        if "2" in parts:
            log(f"\n2. pre-pulls for N = 1..{args.workers}, {args.prepull_rounds} round(s)")
            results = measure_prepulls(cluster, ref, image, args.prepull_rounds, swarm_name)
            print_prepulls(results, pull_at_start)
        if "3" in parts:
            # the product's state after a build: the image on every worker
            missing = [w for w in cluster.workers if not has_image(cluster, w, image)]
            if missing:
                cluster.prepull(ref, missing)
            began = time.monotonic()
            host_image = build(host_hub, repo)
            log(f"\nbuilt {host_image} for the 1-host hub in {time.monotonic() - began:.1f} s")
            for hub in hubs:
                hub.start()
            log(
                f"3. storms of {args.users} users, {args.rounds} round(s), hubs alternating; "
                f"server_start_timeout {args.start_timeout:g} s on both; {cpu_note()}"
            )
            variants = {"host": host_hub, "swarm": swarm_hub}
            rows = []
            for rnd in range(args.rounds):
                order = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
                for label in order:
                    users = [f"{label}{hex_id}r{rnd}u{i}" for i in range(args.users)]
                    rows.append(
                        (
                            label,
                            args.users,
                            storm_round(label, variants[label], users, args.start_timeout),
                        )
                    )
                    time.sleep(2)
            log()
            log("3. Spawn storm: servers on this host (host) against on the swarm's workers")
            stormbench.print_table(rows)
            print_storm_ratios(rows)
            for label, hub in variants.items():
                gave_up = hub.log_path.read_text(errors="replace").count("giving up")
                log(f"   {label} hub log: {gave_up} timeouts ('giving up')")
        log()
        log(f"At the end: {cpu_note()}")
        log("Done: figures only, nothing asserted.")
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: cleaning up")
        return 130
    except Exception:
        for hub in hubs:
            if hub.proc is not None:
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
        for name in (host_name, swarm_name):
            remove_hub_objects(name)  # the 1-host servers, both builds' host images
        cluster.close()  # the swarm's services and images go with its nodes
        shutil.rmtree(tmp, ignore_errors=True)
        left = cluster.leftovers()
        if left:
            log(f"LEFT OVER: {left}")


if __name__ == "__main__":
    sys.exit(main())
