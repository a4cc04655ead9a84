"""Pre-pull a pushed image on the swarm's workers (issue 12, optional).

Without it a worker pulls an environment's image at the first start of it
there, and that user waits for the pull. With it, right after the push, the
manager's engine runs a ``global-job`` service: one task per node that the
servers' placement constraints allow; a task's node pulls the image to run
it, and the task itself only runs ``true``. Docker does the fan-out, so it
costs one service whatever the number of workers, and no engine other than
the manager's is reached.

A pre-pull that fails is reported in the build log but does not fail the
build: the image is in the registry, and a worker still pulls it at start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import aiodocker

from . import labels

# Labels of the pre-pull service (the swarm harness's sweep and an admin's
# `docker service ls --filter label=...` find leftovers by them).
PREPULL_LABEL = "tljh_repo2docker.prepull"
NO_TASK_WAIT = 10.0  # seconds
FINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


def job_spec(image: str, constraints: list[str], hub_name: str) -> dict:
    """``services.create`` arguments of the pre-pull job (pure)."""
    return {
        "task_template": {
            "ContainerSpec": {
                "Image": image,
                # Command replaces the image's entrypoint: nothing of the
                # environment runs, only the pull matters
                "Command": ["true"],
                "Labels": {PREPULL_LABEL: "true", labels.HUB: hub_name},
            },
            "Placement": {"Constraints": list(constraints)},
            "RestartPolicy": {"Condition": "none"},
        },
        "name": f"tljh-r2d-prepull-{os.urandom(4).hex()}",
        "labels": {PREPULL_LABEL: "true", labels.HUB: hub_name},
        "mode": {"GlobalJob": {}},
    }


def _stamp(task: dict) -> tuple[str, str]:
    seconds, _, fraction = str(task.get("CreatedAt", "")).rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")


def summarise(
    tasks: list[dict], node_names: dict[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """(nodes that pulled, "node: reason" of those that could not, nodes still
    pulling) (pure). Swarm starts a task again on a node that rejected one
    (an image it cannot pull), whatever the restart policy: a node is judged
    by its first finished task, not by the retries."""
    by_node: dict[str, list[dict]] = {}
    for task in tasks:
        by_node.setdefault(str(task.get("NodeID") or "?"), []).append(task)
    pulled, failed, pending = [], [], []
    for node_id, node_tasks in by_node.items():
        node = node_names.get(node_id, node_id[:12])
        states = [(t.get("Status") or {}).get("State") for t in node_tasks]
        finished = sorted(
            (t for t, state in zip(node_tasks, states, strict=True) if state in FINAL_STATES),
            key=_stamp,
        )
        if "complete" in states:
            pulled.append(node)
        elif finished:
            status = finished[0].get("Status") or {}
            reason = str(status.get("Err") or status.get("Message") or status.get("State"))
            failed.append(f"{node}: {reason.strip()[:300]}")
        else:
            pending.append(node)
    return sorted(pulled), sorted(failed), sorted(pending)


async def prepull(
    manager_url: str,
    image: str,
    constraints: list[str],
    hub_name: str,
    on_line: Callable[[str], None],
    timeout: float = 600,
    interval: float = 0.5,
) -> tuple[list[str], list[str]]:
    """Pull ``image`` on every node the constraints allow; (pulled, failed).
    Never raises for the nodes' failures; the job is removed in every case."""
    spec = job_spec(image, constraints, hub_name)
    async with aiodocker.Docker(url=manager_url) as docker:
        service = await docker.services.create(**spec)
        service_id = service["ID"]
        try:
            started = time.monotonic()
            while True:
                tasks = await docker.tasks.list(filters={"service": service_id})
                _, _, pending = summarise(tasks, {})
                done = bool(tasks) and not pending
                waited = time.monotonic() - started
                # a global job gets no task at all when no node matches
                if done or waited > timeout or (not tasks and waited > NO_TASK_WAIT):
                    break
                await asyncio.sleep(interval)
            nodes = {
                n["ID"]: (n.get("Description") or {}).get("Hostname") or n["ID"][:12]
                for n in await docker.nodes.list()
            }
            pulled, failed, pending = summarise(tasks, nodes)
            if not tasks:
                failed.append(f"no node matches {', '.join(constraints) or 'the swarm'}")
            failed += [f"{node}: not finished within {timeout:g} s" for node in pending]
            for node in pulled:
                on_line(f"Pre-pulled on {node}\n")
            for problem in failed:
                on_line(f"Pre-pull failed on {problem}\n")
            return pulled, failed
        finally:
            try:
                await docker.services.delete(service_id)
            except aiodocker.DockerError:
                pass  # already gone
