"""Pre-pull after a push (issue 12, optional), on the real 3-node swarm and
registry of ``cluster.py``: one global job through the manager's engine."""

from __future__ import annotations

import asyncio
import os
import subprocess

import aiodocker
import pytest

from tljh_repo2docker import labels, prepull
from tljh_repo2docker.builder import BuildRequest, BuildSettings
from tljh_repo2docker.buildjob import run_build

from ..dockerfixtures import commit_all
from .cluster import BASE_IMAGE, Cluster

pytestmark = [pytest.mark.swarm, pytest.mark.docker]

HUB = f"prepull-{os.urandom(3).hex()}"
WORKERS = ["node.role==worker"]


def has_image(cluster: Cluster, node, ref: str) -> bool:
    result = cluster.docker(node, "image", "inspect", ref, check=False)
    return result.returncode == 0


def prepull_services(cluster: Cluster) -> list[str]:
    out = cluster.docker(
        cluster.manager, "service", "ls", "-q", "--filter", f"label={prepull.PREPULL_LABEL}"
    ).stdout
    return out.split()


@pytest.fixture
def made_tags():
    tags: list[str] = []
    yield tags
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def test_a_build_with_prepull_lands_on_every_worker_only(cluster, tmp_path, made_tags):
    course = f"prepull{os.urandom(2).hex()}"
    path = tmp_path / "env"
    path.mkdir()
    (path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo {course} > /marker\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    commit = commit_all(path, "first")
    settings = BuildSettings(
        hub_name=HUB,
        registry=cluster.registry,
        registry_scheme="http",
        image_prefix=f"{cluster.registry}/{course}/",
        allow_local_repos=True,
        prepull=True,
        prepull_manager=cluster.manager.docker_host,
        prepull_constraints=WORKERS,
    )
    request = BuildRequest(
        name="env", repo=f"file://{path}", ref="main", display_name="env", trusted=True
    )
    tag = labels.image_tag(settings.image_prefix, "env", commit)
    made_tags.append(tag)
    lines = []

    async def build():
        async with aiodocker.Docker() as docker:
            return await run_build(settings, request, lines.append, docker=docker)

    result = asyncio.run(build())
    log = "".join(line.message for line in lines)
    assert result.image == tag and not result.cached
    for worker in cluster.workers:
        assert f"Pre-pulled on {worker.hostname}\n" in log, log
        assert has_image(cluster, worker, tag)
    # the servers' constraints hold for the pull too: never the control node
    assert cluster.manager.hostname not in log.split("Pushed", 1)[1]
    assert not has_image(cluster, cluster.manager, tag)
    assert log.index("Pushed") < log.index("Pre-pulled") < log.index("Built image")
    assert prepull_services(cluster) == []  # the job is removed


def test_a_failed_prepull_is_reported_per_node_and_removed(cluster, monkeypatch):
    missing = f"{cluster.registry}/nothing{os.urandom(2).hex()}/env:1"
    lines = []
    pulled, failed = asyncio.run(
        prepull.prepull(cluster.manager.docker_host, missing, WORKERS, HUB, lines.append, 120)
    )
    assert pulled == []
    assert sorted(f.split(":", 1)[0] for f in failed) == sorted(w.hostname for w in cluster.workers)
    assert all(f.split(":", 1)[1].strip() for f in failed)  # Docker's reason, not empty
    assert len([line for line in lines if line.startswith("Pre-pull failed on ")]) == 2
    assert prepull_services(cluster) == []

    # no node matches: said so, without waiting for the whole timeout
    monkeypatch.setattr(prepull, "NO_TASK_WAIT", 1.0)
    pulled, failed = asyncio.run(
        prepull.prepull(
            cluster.manager.docker_host,
            missing,
            ["node.labels.none==here"],
            HUB,
            lines.append,
            timeout=120,
        )
    )
    assert (pulled, failed) == ([], ["no node matches node.labels.none==here"])
    assert prepull_services(cluster) == []


def test_job_spec_is_a_run_to_completion_job_on_the_constraints():
    spec = prepull.job_spec("r:5000/p/env:1", ["node.role==worker"], "h")
    assert spec["mode"] == {"GlobalJob": {}}
    template = spec["task_template"]
    assert template["ContainerSpec"]["Image"] == "r:5000/p/env:1"
    assert template["ContainerSpec"]["Command"] == ["true"]  # nothing of the image runs
    assert template["Placement"] == {"Constraints": ["node.role==worker"]}
    assert template["RestartPolicy"] == {"Condition": "none"}
    assert spec["labels"][prepull.PREPULL_LABEL] == "true"


def test_a_node_is_judged_by_its_first_finished_task_not_the_retries():
    def task(node, state, at, err=""):
        return {"NodeID": node, "CreatedAt": at, "Status": {"State": state, "Err": err}}

    tasks = [
        task("n1", "complete", "2026-12-01T10:00:00.5Z"),
        task("n2", "rejected", "2026-12-01T10:00:00.123Z", "No such image: x"),
        task("n2", "rejected", "2026-12-01T10:00:01Z", "later retry"),
        task("n2", "preparing", "2026-12-01T10:00:02Z"),
        task("n3", "preparing", "2026-12-01T10:00:00Z"),
    ]
    names = {"n1": "worker1", "n2": "worker2"}
    assert prepull.summarise(tasks, names) == (
        ["worker1"],
        ["worker2: No such image: x"],
        ["n3"],
    )
