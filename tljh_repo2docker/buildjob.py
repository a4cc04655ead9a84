"""One build, end to end: resolve the ref, reuse or build the image, check it.

Used by the command line and by the service. The Docker calls are thin; the
command is built by ``builder``, run by ``runner``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiodocker

from . import gitref, labels, runner
from .builder import BuildRequest, BuildSettings, repo2docker_argv
from .runner import LogLine


class BuildFailed(RuntimeError):
    """The build did not produce an image; the message says why."""


@dataclass(frozen=True)
class BuildResult:
    image: str
    commit: str
    cached: bool


def archive_id(repo: str) -> str:
    """A stable 40-hex id standing in for the commit of a repository without one."""
    return hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest()


def utcnow_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def image_labels(docker: aiodocker.Docker, tag: str) -> dict | None:
    """The labels of image ``tag``, or None if there is no such image."""
    try:
        info = await docker.images.inspect(tag)
    except aiodocker.DockerError as e:
        if e.status == 404:
            return None
        raise
    return (info.get("Config") or {}).get("Labels") or {}


async def make_current(docker, hub: str, name: str, tag: str, image_labels_: dict):
    """Make ``tag`` the environment's current image again (going back to an
    older commit): the catalogue takes the newest ``built_at``."""
    from .service.dockerops import environment_images, relabel

    newest = max(
        (
            (s.get("Labels") or {}).get(labels.BUILT_AT, "")
            for s in await environment_images(docker, hub, name)
        ),
        default="",
    )
    if image_labels_.get(labels.BUILT_AT, "") < newest:
        await relabel(docker, tag, {labels.BUILT_AT: utcnow_iso()})


async def run_build(
    settings: BuildSettings,
    request: BuildRequest,
    on_line: Callable[[LogLine], None],
    *,
    docker: aiodocker.Docker,
    env: dict[str, str] | None = None,
    slot: AbstractAsyncContextManager | None = None,
    on_running: Callable[[], None] | None = None,
    on_spawn: Callable[[int], None] | None = None,
    on_resolved: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build ``request``; an image of the same commit is reused at once.

    ``slot`` (e.g. a semaphore) is held only while repo2docker runs, so
    resolving the ref and reusing an image never wait behind other builds.
    """
    if request.ref:
        on_line(LogLine("fetching", f"Resolving {request.ref} in {request.repo}\n"))
        try:
            commit = await gitref.resolve_ref(
                request.repo, request.ref, timeout=settings.git_timeout, env=env
            )
        except gitref.RefNotFound as e:
            raise BuildFailed(f"Cannot resolve {request.ref!r}: {e}") from e
    else:
        # an archive (a DOI names one immutable version): its name is its id
        commit = archive_id(request.repo)
    tag = labels.image_tag(settings.image_prefix, request.name, commit)
    on_line(LogLine("fetching", f"{request.ref} is commit {commit}\n"))
    if on_resolved is not None:
        on_resolved(commit)

    existing = await image_labels(docker, tag)
    if existing is not None and existing.get(labels.HUB) == settings.hub_name:
        on_line(LogLine("built", f"Image {tag} is already built for this commit\n"))
        await make_current(docker, settings.hub_name, request.name, tag, existing)
        return BuildResult(tag, commit, cached=True)

    async with slot or contextlib.nullcontext():
        if on_running is not None:
            on_running()
        argv = repo2docker_argv(settings, request, commit=commit, built_at=utcnow_iso())
        code = await runner.run_logged(
            argv, on_line, env=env or gitref.git_env(), on_spawn=on_spawn
        )
    if code != 0:
        raise BuildFailed(f"repo2docker exited with code {code}; the log above says why")
    built = await image_labels(docker, tag)
    if built is None or built.get(labels.COMMIT) != commit:
        raise BuildFailed(f"repo2docker finished but image {tag} is missing or unlabelled")
    on_line(LogLine("built", f"Built image {tag}\n"))
    return BuildResult(tag, commit, cached=False)
