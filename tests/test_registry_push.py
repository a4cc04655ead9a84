"""Builds push to the registry when one is configured (issue 12), against a
REAL registry (Debian's docker-registry, from the swarm harness, without the
swarm) and real repo2docker builds of a tiny Dockerfile FROM the local base
image. Nothing is pulled from the internet."""

from __future__ import annotations

import asyncio
import os
import subprocess

import aiodocker
import pytest

from tljh_repo2docker import labels
from tljh_repo2docker.builder import BuildRequest, BuildSettings
from tljh_repo2docker.buildjob import (
    BuildFailed,
    built_labels,
    push_image,
    push_progress_line,
    run_build,
)
from tljh_repo2docker.catalogue import Catalogue
from tljh_repo2docker.imagestore import RegistryImageStore

from .dockerfixtures import commit_all
from .swarm.cluster import BASE_IMAGE, Cluster, free_port

HUB = f"push-{os.urandom(3).hex()}"


@pytest.fixture
def made_tags():
    """Image tags a test made on the shared engine; removed afterwards."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def tiny_repo(path, marker: str) -> tuple[str, str]:
    """A Dockerfile repository FROM the local base image; (file URL, commit)."""
    path.mkdir()
    (path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo {marker} > /marker\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    return f"file://{path}", commit_all(path, "first")


def settings_for(registry: Cluster, course: str, **traits) -> BuildSettings:
    return BuildSettings(
        hub_name=HUB,
        registry=registry.registry,
        registry_scheme="http",
        # a path of its own in the shared registry; under the registry host
        image_prefix=f"{registry.registry}/{course}/",
        allow_local_repos=True,
        **traits,
    )


def request_for(repo: str, name: str = "env") -> BuildRequest:
    return BuildRequest(
        name=name, repo=repo, ref="main", display_name=name, built_by="admin", trusted=True
    )


async def build(settings: BuildSettings, request: BuildRequest):
    lines = []
    async with aiodocker.Docker() as docker:
        result = await run_build(settings, request, lines.append, docker=docker)
    return result, "".join(f"[{line.phase}] {line.message}" for line in lines)


async def labels_where_started(settings: BuildSettings, tag: str):
    async with aiodocker.Docker() as docker:
        return await built_labels(docker, settings, tag)


def local_image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@pytest.mark.docker
def test_a_build_pushes_and_the_registry_store_lists_it(registry, tmp_path, made_tags):
    course = f"push{os.urandom(2).hex()}"
    settings = settings_for(registry, course)
    repo, commit = tiny_repo(tmp_path / "env", course)
    tag = labels.image_tag(settings.image_prefix, "env", commit)
    made_tags.append(tag)

    async def listed() -> dict[str, dict]:
        store = RegistryImageStore(HUB, settings.image_prefix, scheme="http")
        try:
            return {t: s for s in await store.list_images() for t in s["RepoTags"]}
        finally:
            await store.close()

    # 1. a fresh build: repo2docker, then the push, its progress in the log
    result, log = asyncio.run(build(settings, request_for(repo)))
    assert (result.image, result.commit, result.cached) == (tag, commit, False)
    assert f"[pushing] Pushing {tag} to the registry" in log
    assert f"[pushing] Pushed {tag}" in log
    assert log.index("Pushed") < log.index(f"Built image {tag}")
    assert "progressDetail" not in log and "[=" not in log  # no byte-count noise
    in_registry = asyncio.run(listed())
    assert list(in_registry) == [tag]
    assert in_registry[tag]["Labels"][labels.COMMIT] == commit
    assert in_registry[tag]["Labels"][labels.HUB] == HUB

    # the catalogue made from the same settings shows the environment
    async def environments():
        catalogue = Catalogue(HUB, watch_events=False, **settings.catalogue_options())
        try:
            return await catalogue.environments(fresh=True)
        finally:
            await catalogue.close()

    assert [info.image for info in asyncio.run(environments())] == [tag]

    # 2. the same commit again: no repo2docker, no push
    result, log = asyncio.run(build(settings, request_for(repo)))
    assert result.cached and result.image == tag
    assert "already built" in log and "Pushing" not in log

    # 3. only in the registry (the control node's copy pruned): not rebuilt
    subprocess.run(["docker", "rmi", tag], check=True, capture_output=True)
    result, log = asyncio.run(build(settings, request_for(repo)))
    assert result.cached and result.image == tag
    assert "already in the registry" in log
    assert not local_image_exists(tag)  # nothing was built
    # what a launch asks before it builds: the registry's answer
    assert (asyncio.run(labels_where_started(settings, tag)) or {}).get(labels.COMMIT) == commit


@pytest.mark.docker
def test_a_local_image_missing_from_the_registry_is_pushed_not_rebuilt(
    registry, tmp_path, made_tags
):
    course = f"repush{os.urandom(2).hex()}"
    settings = settings_for(registry, course)
    repo, commit = tiny_repo(tmp_path / "env", course)
    tag = labels.image_tag(settings.image_prefix, "env", commit)
    made_tags.append(tag)
    asyncio.run(build(settings, request_for(repo)))

    async def remove():
        store = RegistryImageStore(HUB, settings.image_prefix, scheme="http")
        try:
            assert await store.remove(tag)
            assert await store.image_labels(tag) is None
        finally:
            await store.close()

    asyncio.run(remove())  # as if the first push had failed
    # a launch would not start it (no worker could pull it): it builds, which pushes
    assert asyncio.run(labels_where_started(settings, tag)) is None
    single_host = BuildSettings(hub_name=HUB, image_prefix=settings.image_prefix)
    assert (asyncio.run(labels_where_started(single_host, tag)) or {}).get(labels.HUB) == HUB
    image_id = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    result, log = asyncio.run(build(settings, request_for(repo)))
    assert result.cached
    assert "already built" in log and f"Pushed {tag}" in log

    async def labels_now():
        store = RegistryImageStore(HUB, settings.image_prefix, scheme="http")
        try:
            return await store.image_labels(tag)
        finally:
            await store.close()

    assert (asyncio.run(labels_now()) or {}).get(labels.COMMIT) == commit
    # the same image, not a new build
    assert (
        subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        == image_id
    )


@pytest.mark.docker
def test_a_failed_push_fails_with_the_registrys_message(registry, made_tags):
    # nothing listens on this port: the engine's own reason comes back
    tag = f"127.0.0.1:{free_port()}/pushfail{os.urandom(2).hex()}/env:1"
    subprocess.run(["docker", "tag", BASE_IMAGE, tag], check=True, capture_output=True)
    made_tags.append(tag)
    lines = []

    async def push():
        async with aiodocker.Docker() as docker:
            await push_image(docker, tag, lines.append, timeout=120)

    with pytest.raises(BuildFailed) as failed:
        asyncio.run(push())
    message = str(failed.value)
    assert message.startswith(f"pushing {tag} to the registry failed: ")
    assert "connection refused" in message.lower()
    assert lines[0].message == f"Pushing {tag} to the registry\n"
    assert not any("Pushed" in line.message for line in lines)


@pytest.mark.docker
def test_an_unreachable_registry_fails_the_build_before_repo2docker(tmp_path, docker_ready):
    registry = f"127.0.0.1:{free_port()}"
    settings = BuildSettings(
        hub_name=HUB, registry=registry, registry_scheme="http", allow_local_repos=True
    )
    repo, _ = tiny_repo(tmp_path / "env", "unreachable")
    lines = []

    async def scenario():
        async with aiodocker.Docker() as docker:
            await run_build(settings, request_for(repo), lines.append, docker=docker)

    with pytest.raises(BuildFailed, match=f"the image registry {registry} did not answer"):
        asyncio.run(scenario())
    assert not any(line.phase == "building" for line in lines)


def test_a_prefix_outside_the_registry_is_refused_before_anything(tmp_path):
    settings = BuildSettings(
        hub_name=HUB, registry="127.0.0.1:5000", image_prefix="school/", allow_local_repos=True
    )
    lines = []

    async def scenario():
        await run_build(settings, request_for("file:///nowhere"), lines.append, docker=None)

    with pytest.raises(BuildFailed, match="not under the registry"):
        asyncio.run(scenario())


def test_push_progress_lines():
    assert push_progress_line({"status": "Preparing", "id": "abc"}) == "abc: Preparing\n"
    assert push_progress_line({"status": "Pushed", "id": "abc"}) == "abc: Pushed\n"
    line = {"status": "Pushing", "id": "abc", "progressDetail": {"current": 1, "total": 9}}
    assert push_progress_line(line) == ""
    assert push_progress_line({"status": "Pushing", "progress": "[==>  ]"}) == ""
    assert push_progress_line({"status": "latest: digest: sha256:x size: 1"}) == (
        "latest: digest: sha256:x size: 1\n"
    )
    assert push_progress_line({"aux": {"Tag": "1"}}) == ""
    assert push_progress_line("junk") == ""
