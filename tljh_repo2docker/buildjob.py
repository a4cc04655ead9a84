"""One build, end to end: resolve the ref, reuse or build the image, check it.

Used by the command line and by the service. The Docker calls are thin; the
command is built by ``builder`` and run by a build backend (``buildrunners``:
a child process, or a container of the builder image).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiodocker
import aiohttp

from . import access, baseimages, buildrunners, gitref, imageevents, labels
from .builder import BuildRequest, BuildSettings, build_config, repo2docker_argv
from .runner import LogLine

log = logging.getLogger("tljh_repo2docker.service")


class BuildFailed(RuntimeError):
    """The build did not produce an image; the message says why."""


@dataclass(frozen=True)
class BuildResult:
    image: str
    commit: str
    cached: bool


def archive_id(repo: str, version: str = "") -> str:
    """A stable 40-hex id standing in for the commit of a repository without
    one (an archive), per version of it when the version is known."""
    key = f"{repo}@{version}" if version else repo
    return hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()


_last_stamp = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def utcnow_iso() -> str:
    """The build time label: microseconds, and strictly increasing in this
    process, so that the newest of two builds is never a tie (a cached
    rebuild takes less than a second)."""
    global _last_stamp
    now = datetime.datetime.now(datetime.timezone.utc)
    if now <= _last_stamp:
        now = _last_stamp + datetime.timedelta(microseconds=1)
    _last_stamp = now
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def image_labels(docker: aiodocker.Docker, tag: str) -> dict | None:
    """The labels of image ``tag``, or None if there is no such image."""
    try:
        info = await docker.images.inspect(tag)
    except aiodocker.DockerError as e:
        if e.status == 404:
            return None
        raise
    return (info.get("Config") or {}).get("Labels") or {}


def push_progress_line(item) -> str:
    """One line of the build log for one item of Docker's push stream; ''
    for the byte-count updates (hundreds per layer, nothing to read)."""
    if not isinstance(item, dict) or item.get("progressDetail") or item.get("progress"):
        return ""
    status = str(item.get("status") or "").strip()
    if not status:
        return ""
    layer = str(item.get("id") or "").strip()
    return f"{layer}: {status}\n" if layer else f"{status}\n"


async def push_image(
    docker: aiodocker.Docker, tag: str, on_line: Callable[[LogLine], None], timeout: float
) -> None:
    """Push ``tag`` (named under the registry) with the engine that built it,
    its progress into the build log; BuildFailed with the registry's own
    message when the push fails or takes longer than ``timeout`` seconds."""
    name, _, version = tag.rpartition(":")
    on_line(LogLine("pushing", f"Pushing {tag} to the registry\n"))

    async def stream():
        async for item in docker.images.push(name, tag=version, stream=True):
            line = push_progress_line(item)
            if line:
                on_line(LogLine("pushing", line))

    try:
        await asyncio.wait_for(stream(), timeout)
    except aiodocker.DockerError as e:
        raise BuildFailed(f"pushing {tag} to the registry failed: {e.message}") from e
    except asyncio.TimeoutError:
        raise BuildFailed(f"pushing {tag} to the registry took over {timeout:g} s") from None
    on_line(LogLine("pushing", f"Pushed {tag}\n"))


async def prepull_image(settings: BuildSettings, tag: str, on_line: Callable[[LogLine], None]):
    """Pull the pushed image on the swarm's nodes; a failure is logged, not
    fatal: the image is in the registry and a worker pulls it at start."""
    from .prepull import prepull

    on_line(LogLine("pushing", f"Pre-pulling {tag} on the swarm's nodes\n"))
    try:
        await prepull(
            settings.prepull_manager,
            tag,
            list(settings.prepull_constraints),
            settings.hub_name,
            lambda text: on_line(LogLine("pushing", text)),
            timeout=settings.prepull_timeout,
        )
    except (aiodocker.DockerError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        reason = e.message if isinstance(e, aiodocker.DockerError) else str(e)
        on_line(LogLine("pushing", f"Pre-pull not done ({reason}); workers pull at start\n"))


@contextlib.asynccontextmanager
async def registry_store(settings: BuildSettings):
    """The registry's image store for one build (None on a single host)."""
    store = settings.image_store()
    try:
        yield store
    finally:
        if store is not None:
            await store.close()


async def registry_labels(store, tag: str) -> dict | None:
    """This hub's labels of ``tag`` in the registry, or None when it is not
    there; BuildFailed when the registry does not answer (a build that
    cannot be pushed would fail anyway)."""
    from .imagestore import StoreUnavailable

    try:
        return await store.image_labels(tag)
    except StoreUnavailable as e:
        raise BuildFailed(str(e)) from e


async def built_labels(docker: aiodocker.Docker, settings: BuildSettings, tag: str) -> dict | None:
    """The labels of ``tag`` where servers start it from: the local engine
    on a single host; with a registry, the registry (a local image that was
    never pushed cannot start on a worker: building it again pushes it).
    None when it is not there or the registry does not answer (the build
    that follows then says why)."""
    if not settings.registry:
        return await image_labels(docker, tag)
    from .imagestore import StoreUnavailable

    async with registry_store(settings) as store:
        try:
            return await store.image_labels(tag)
        except StoreUnavailable:
            return None


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


@contextlib.contextmanager
def _config_for(settings: BuildSettings, request: BuildRequest):
    """The --config files of this build: a temporary file that loads the
    admin's and then narrows what repo2docker may do (``build_config``)."""
    git_only, dockerfiles = bool(request.ref), bool(request.ref) or request.trusted
    if not git_only and dockerfiles:
        yield None  # an admin's archive: repo2docker as configured
        return
    fd, path = tempfile.mkstemp(prefix="tljh-r2d-config-", suffix=".py")
    try:
        admin = [os.path.abspath(p) for p in settings.repo2docker_config]
        with os.fdopen(fd, "w") as f:
            f.write(build_config(admin, git_only=git_only, dockerfiles=dockerfiles))
        yield [path]
    finally:
        os.unlink(path)


async def check_base_images(
    settings: BuildSettings, request: BuildRequest, commit: str, env: dict, docker
):
    """BuildFailed unless every image the commit's Dockerfiles name may be used
    by the person who asked for the build."""
    try:
        dockerfiles = await baseimages.fetch_dockerfiles(
            request.repo, commit, request.ref, env, timeout=settings.git_timeout
        )
    except baseimages.DockerfileUnreadable as e:
        log.warning("could not read the Dockerfiles of %s: %s", request.repo[:300], e.detail)
        raise BuildFailed(str(e)) from e
    except baseimages.ImageRefused as e:
        raise BuildFailed(f"Refused: {e}") from e
    except asyncio.TimeoutError:
        raise BuildFailed("the repository did not answer in time") from None
    allowed = tuple(settings.allowed_base_images) + (
        (settings.base_image,) if settings.base_image else ()
    )
    policy = baseimages.Policy(
        hub_name=settings.hub_name,
        image_prefix=settings.image_prefix,
        allowed=allowed,
        # groups are not known here: a group-shared environment is not a base
        viewer=access.Viewer(name=request.built_by),
    )
    build_args = dict(request.build_args)
    # repo2docker passes these to every Dockerfile build
    build_args.setdefault("NB_USER", settings.user_name)
    build_args.setdefault("NB_UID", str(settings.user_id))

    async def lookup(image: str) -> dict | None:
        try:
            return await image_labels(docker, image)
        except aiodocker.DockerError:
            return None  # not a valid local reference: Docker would pull it

    try:
        await baseimages.check(dockerfiles, policy, build_args, lookup)
    except baseimages.ImageRefused as e:
        raise BuildFailed(f"Refused: {e}") from e


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
    build_runner=None,
    job: str = "",
) -> BuildResult:
    """Build ``request``; an image of the same commit is reused at once.

    ``slot`` (e.g. a semaphore) is held only while repo2docker runs, so
    resolving the ref and reusing an image never wait behind other builds.

    Every fetch (resolving the ref, reading the Dockerfile, repo2docker's own
    clone) goes through the network rules, pinned to the checked address.
    Unless an administrator asked for it, a local repository is refused and
    the images the Dockerfile names are checked before repo2docker runs.
    """
    if request.repo.lower().startswith("file:") and not request.trusted:
        raise BuildFailed("local repositories can only be built by administrators")
    problem = settings.registry_problem()
    if problem:  # the push would go to whichever registry the prefix names
        raise BuildFailed(problem)
    if request.ref:
        on_line(LogLine("fetching", f"Resolving {request.ref} in {request.repo}\n"))
    try:
        # a refused address reads exactly like a repository that did not answer
        env = await gitref.guarded_env(settings.net_guard(), request.repo, env)
        if request.ref:
            commit = await gitref.resolve_ref(
                request.repo, request.ref, timeout=settings.git_timeout, env=env
            )
    except gitref.RefNotFound as e:
        raise BuildFailed(f"Cannot resolve {request.ref!r}: {e}" if request.ref else str(e)) from e
    if not request.ref:
        # an archive (a DOI names one immutable version): its name is its id
        commit = archive_id(request.repo, request.archive_version)
    tag = labels.image_tag(settings.image_prefix, request.name, commit)
    on_line(LogLine("fetching", f"{request.ref} is commit {commit}\n"))
    if on_resolved is not None:
        on_resolved(commit)

    async with registry_store(settings) as store:  # None on a single host
        existing = await image_labels(docker, tag)
        if existing is not None and existing.get(labels.HUB) == settings.hub_name:
            on_line(LogLine("built", f"Image {tag} is already built for this commit\n"))
            if store is not None and await registry_labels(store, tag) is None:
                # built here before but not pushed (its push failed): push, never rebuild
                await push_image(docker, tag, on_line, settings.push_timeout)
            await make_current(docker, settings.hub_name, request.name, tag, existing)
            return BuildResult(tag, commit, cached=True)
        if store is not None and await registry_labels(store, tag) is not None:
            # in the registry, not on this engine: the nodes pull it from there.
            # A pushed image cannot be relabelled (make_current); the database
            # holds what changes (issue 12).
            on_line(LogLine("built", f"Image {tag} is already in the registry\n"))
            return BuildResult(tag, commit, cached=True)

    if not request.trusted and request.ref:
        on_line(LogLine("fetching", "Checking the images the Dockerfile starts from\n"))
        await check_base_images(settings, request, commit, env, docker)

    async with slot or contextlib.nullcontext():
        if on_running is not None:
            on_running()
        with _config_for(settings, request) as config_files:
            argv = repo2docker_argv(
                settings,
                request,
                commit=commit,
                built_at=utcnow_iso(),
                config_files=config_files,
            )
            code = await (build_runner or buildrunners.ProcessRunner()).run(
                argv,
                on_line,
                env=env,
                job=job,
                # read by repo2docker: a builder container is sent them
                files=[*(config_files or []), *settings.repo2docker_config],
                on_spawn=on_spawn,
            )
    if code != 0:
        raise BuildFailed(f"repo2docker exited with code {code}; the build log says why")
    built = await image_labels(docker, tag)
    if built is None or built.get(labels.COMMIT) != commit:
        raise BuildFailed(f"repo2docker finished but image {tag} is missing or unlabelled")
    if settings.registry:
        await push_image(docker, tag, on_line, settings.push_timeout)
        if settings.prepull and settings.prepull_manager:
            await prepull_image(settings, tag, on_line)
    on_line(LogLine("built", f"Built image {tag}\n"))
    await imageevents.announce(docker, tag)  # BuildKit's tag is silent: tell the catalogues
    return BuildResult(tag, commit, cached=False)
