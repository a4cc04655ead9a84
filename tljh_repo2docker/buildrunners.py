"""Where repo2docker runs: the build backend, a swappable piece (issue 12).

- ``ProcessRunner``: a child process of the environments service (one host;
  a leftover of a killed service is found through ``/proc`` by its pid).
- ``ContainerRunner``: a container of the builder image (``builderimage``),
  labelled with the hub and the build id. Cancel, shutdown and the clean-up
  after a killed service go through the Docker API by those labels: no
  process table, no pid, and nothing tied to the host the service runs on.

Both take the same repo2docker argv and stream its log lines the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

import aiodocker
import aiohttp

from . import builderimage, runner
from .runner import LogLine, parse_log_line

log = logging.getLogger(__name__)

BUILD_OF = "tljh_repo2docker.build_of"  # the hub's name
BUILD_ID = "tljh_repo2docker.build_id"
# what a builder may take from the service's environment; the rest (tokens of
# the hub API, the service's own settings) never reaches it
_PASSED_ENV = re.compile(r"^(GIT_|SSH_|HTTPS?_PROXY$|NO_PROXY$|https?_proxy$|no_proxy$)")


class ProcessRunner:
    """repo2docker as a child process (the single-host default)."""

    kind = "process"

    async def run(
        self,
        argv: list[str],
        on_line: Callable[[LogLine], None],
        *,
        env: dict[str, str] | None = None,
        job: str = "",
        files: Iterable[str] = (),
        on_spawn: Callable[[int], None] | None = None,
    ) -> int:
        return await runner.run_logged(argv, on_line, env=env, on_spawn=on_spawn)

    async def reap(self, pids: dict[str, int]) -> int:
        """Kill repo2docker processes a previous service left (by build id)."""
        killed = 0
        for job, pid in pids.items():
            if pid and _is_repo2docker(pid):
                log.warning("killing repo2docker (pid %s) of build %s", pid, job)
                runner.kill_group(pid, signal.SIGKILL)
                killed += 1
        return killed


def _is_repo2docker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"repo2docker" in f.read()
    except OSError:
        return False


def repo_path(repo: str) -> str:
    """The host folder of a ``file://`` repository ('' for a network one),
    mounted read-only at the same path in the builder (pure)."""
    if not repo.lower().startswith("file:"):
        return ""
    path = unquote(urlsplit(repo).path)
    return os.path.abspath(path) if path else ""


def builder_mounts(socket: str, repo: str, home: str) -> list[dict]:
    """What the builder sees of the host: the engine's socket, a ``file://``
    repository and the service user's ``~/.ssh`` (git over ssh as on the
    host), the last two read-only. Mounts, not binds: a missing source is an
    error, never an empty folder made for it."""
    mounts = [{"Type": "bind", "Source": socket, "Target": "/var/run/docker.sock"}]
    path = repo_path(repo)
    if path:
        mounts.append({"Type": "bind", "Source": path, "Target": path, "ReadOnly": True})
    ssh = os.path.join(home, ".ssh")
    if os.path.isdir(ssh):
        mounts.append({"Type": "bind", "Source": ssh, "Target": "/root/.ssh", "ReadOnly": True})
    return mounts


def host_git_config(home: str) -> dict[str, str]:
    """The service user's ``~/.gitconfig``, for the builder's root."""
    path = os.path.join(home, ".gitconfig")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {"/root/.gitconfig": f.read()}


def config_files(files: Iterable[str]) -> dict[str, str]:
    """The repo2docker config files a build names, read by the service
    (which may see another /tmp than the engine) for the builder: by path."""
    contents = {}
    for path in files:
        if path:
            path = os.path.abspath(path)
            with open(path, encoding="utf-8") as f:
                contents[path] = f.read()
    return contents


def builder_env(env: dict[str, str] | None) -> dict[str, str]:
    """The part of a build's environment the builder gets (pure)."""
    return {k: v for k, v in (env or {}).items() if _PASSED_ENV.match(k)}


def container_name(hub: str, job: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{hub}-{job}")[:200]
    return f"tljh-r2d-build-{safe}"


class _Lines:
    """Splits the attached stream's chunks into lines."""

    def __init__(self, on_line: Callable[[LogLine], None], limit: int = 1024 * 1024):
        self.on_line, self.limit, self.buffer = on_line, limit, b""

    def feed(self, data: bytes):
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            self.on_line(parse_log_line(raw.decode(errors="replace")))
        if len(self.buffer) > self.limit:
            self.buffer = b""
            self.on_line(LogLine("building", "(log line too long, cut)\n"))

    def close(self):
        if self.buffer:
            self.on_line(parse_log_line(self.buffer.decode(errors="replace")))
            self.buffer = b""


class ContainerRunner:
    """repo2docker in a labelled container of the builder image."""

    kind = "container"

    def __init__(
        self,
        docker: aiodocker.Docker,
        hub: str,
        base_image: str,
        *,
        socket: str = "/var/run/docker.sock",
        grace: float = 5.0,
        image: str = "",
    ):
        self.docker, self.hub, self.base_image = docker, hub, base_image
        self.fixed_image = image  # an admin's ready-made builder image
        self.grace = grace
        self.home = os.path.expanduser("~")  # the service user's (ssh, git config)
        # the engine the service talks to is the one the builder talks to
        host = os.environ.get("DOCKER_HOST", "")
        self.socket = host[len("unix://") :] if host.startswith("unix://") else socket

    async def image(self, on_line: Callable[[LogLine], None] | None = None) -> str:
        if self.fixed_image:
            try:
                await self.docker.images.inspect(self.fixed_image)
            except aiodocker.DockerError as e:
                if e.status != 404:
                    raise
                raise builderimage.BuilderImageError(
                    f"the builder image {self.fixed_image} (repo2docker.builder_image) is not "
                    "on this Docker engine"
                ) from None
            return self.fixed_image
        say = (lambda text: on_line(LogLine("building", text))) if on_line else None
        return await builderimage.ensure(self.docker, self.base_image, say)

    async def run(
        self,
        argv: list[str],
        on_line: Callable[[LogLine], None],
        *,
        env: dict[str, str] | None = None,
        job: str = "",
        files: Iterable[str] = (),
        on_spawn: Callable[[int], None] | None = None,
    ) -> int:
        try:
            image = await self.image(on_line)
        except builderimage.BuilderImageError as e:
            on_line(LogLine("failed", f"{e}\n"))
            return 125
        try:
            payload = {"env": builder_env(env), "files": config_files(files)}
            # git as the service's user has it on the host (insteadOf rules, ...)
            payload["files"].update(host_git_config(self.home))
        except OSError as e:
            on_line(LogLine("failed", f"cannot read a repo2docker config file: {e}\n"))
            return 125
        repo = argv[argv.index("--") + 1] if "--" in argv else ""
        mounts = builder_mounts(self.socket, repo, self.home)
        name = container_name(self.hub, job)
        await self._remove(name)  # a leftover of a killed service, under this name
        config = {
            "Image": image,
            # the service's Python is not the builder's
            "Cmd": [builderimage.PYTHON, *argv[1:]],
            "Labels": {BUILD_OF: self.hub, BUILD_ID: job},
            "OpenStdin": True,
            "StdinOnce": True,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "HostConfig": {
                # the same network as the service: git is pinned to the
                # addresses the network rules checked, from this host
                "NetworkMode": "host",
                "Mounts": mounts,
            },
        }
        try:
            return await self._run(config, name, payload, on_line)
        finally:
            # also when cancelled while the container was being made
            await asyncio.shield(self._remove(name))

    async def _run(self, config: dict, name: str, payload: dict, on_line) -> int:
        try:
            container = await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as e:  # e.g. the repository's folder is gone
            on_line(LogLine("failed", f"the builder container could not be made: {e.message}\n"))
            return 125
        on_line(LogLine("building", f"Running repo2docker in the builder container {name}\n"))
        try:
            # attached before the start, as docker run does: no line is missed
            async with container.attach(stdout=True, stderr=True) as output:
                feed = asyncio.ensure_future(self._follow(output, on_line))
                try:
                    try:
                        await container.start()
                    except aiodocker.DockerError as e:
                        on_line(LogLine("failed", f"the builder did not start: {e.message}\n"))
                        return 125
                    # credentials and git settings on stdin: never in the
                    # container's configuration, which docker inspect shows
                    async with container.attach(stdin=True) as stdin:
                        await stdin.write_in(json.dumps(payload).encode() + b"\n")
                    result = await container.wait()
                    await feed
                finally:
                    if not feed.done():
                        feed.cancel()
                        with contextlib.suppress(BaseException):
                            await feed
            return int(result.get("StatusCode", 1))
        except BaseException:
            # cancelled (or the engine went away): never leave the build running
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
                await asyncio.shield(container.stop(t=int(self.grace)))
            raise

    async def _follow(self, stream, on_line: Callable[[LogLine], None]):
        lines = _Lines(on_line)
        while True:
            message = await stream.read_out()
            if message is None:
                break
            lines.feed(message.data)
        lines.close()

    async def _remove(self, name: str):
        try:
            await self.docker.containers.container(name).delete(force=True)
        except aiodocker.DockerError as e:
            if e.status not in (404, 409):  # gone, or being removed already
                log.warning("could not remove build container %s: %s", name, e)
        except (aiohttp.ClientError, OSError) as e:
            # the engine is away: the next start of the service removes it
            log.warning("could not remove build container %s: %s", name, e)

    async def leftovers(self) -> list[dict]:
        """This hub's build containers, running or not."""
        return await self.docker.containers.list(
            all=True, filters=json.dumps({"label": [f"{BUILD_OF}={self.hub}"]})
        )

    async def reap(self, pids: dict[str, int] | None = None) -> int:
        """Remove the service's build containers of this hub: at the
        service's start, every one is a previous process's (found through
        the engine, whichever host or process started them). The command
        line's builds (``cli-...``) are not the service's: left alone."""
        removed = 0
        for item in await self.leftovers():
            if not item._container.get("Labels", {}).get(BUILD_ID, "").isdigit():
                continue
            names = item._container.get("Names") or [item.id]
            log.warning("removing build container %s of a previous process", names[0])
            try:
                await item.delete(force=True)
                removed += 1
            except aiodocker.DockerError as e:
                if e.status != 404:
                    log.warning("could not remove build container %s: %s", names[0], e)
        return removed
