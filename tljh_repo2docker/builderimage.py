"""The builder image: repo2docker, git and the docker CLI in one image, so
that a build can run as a container the engine knows.

A build that is a container is found, cancelled and cleaned up through the
Docker API by whichever process asks, by its labels. A build that is a child
process can only be found through ``/proc`` of the host that started it
(issue 12). The recipe is built here from:

- ``base_image`` (a Debian or Ubuntu image; by default the host's own
  distribution and release) with apt's upgrades, python3, git and CA
  certificates;
- the same jupyter-repo2docker version as this service's, from pip;
- this host's docker CLI and buildx plugin (repo2docker >= 2025 calls
  ``docker buildx build``), which talk to the engine through its socket;
- this host's CA bundle, so the builder trusts what the host trusts;
- a small entry script that reads the build's environment (git settings,
  credentials) and its repo2docker config files as one JSON line on stdin:
  nothing secret is ever written into the container's configuration, where
  ``docker inspect`` shows it.

The tag holds a digest of everything that goes in and of the month, so a
changed recipe, a new repo2docker, a new docker CLI or a new month (apt's
security updates for the git that clones untrusted repositories) makes a
new image; the older ones are removed once it exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import shutil
import tarfile
import time
import weakref
from collections.abc import Callable
from importlib import metadata

import aiodocker

log = logging.getLogger(__name__)

RECIPE_VERSION = "2"
BUILDER_LABEL = "tljh_repo2docker.builder"
TAG_PREFIX = "tljh-repo2docker/builder"
# repo2docker's Python inside the image
PYTHON = "/opt/repo2docker/bin/python3"
ENTRY = "/usr/local/bin/tljh-r2d-build"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Reads the build's environment and its repo2docker config files (one JSON
# line on stdin), writes the files where the command names them, then runs
# the command it was given. The files come this way, not as bind mounts: the
# service may see another /tmp than the engine (systemd's PrivateTmp), and a
# missing bind source would silently become a folder. It stays PID 1 and
# passes a stop's SIGTERM on to the command's process group: a PID 1 without
# a handler ignores SIGTERM, and Docker's own init (--init) is not on every
# distribution's engine.
ENTRY_SCRIPT = """\
import json
import os
import signal
import subprocess
import sys

line = sys.stdin.readline()
if not line.strip():
    # never a build without its settings (network pinning, config files)
    sys.exit("tljh-r2d-build: no build settings on stdin")
job = json.loads(line)
for path, text in job.get("files", {}).items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
os.environ.update({str(k): str(v) for k, v in job.get("env", {}).items()})
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True)


def forward(signum, frame):
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass


for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)
code = child.wait()
sys.exit(128 - code if code < 0 else code)
"""

PLUGIN_DIRS = (
    "{config}/cli-plugins",
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


class BuilderImageError(RuntimeError):
    """The builder image is missing and cannot be made; the message says why."""


def repo2docker_version() -> str:
    """This service's repo2docker release (a local build's ``+...`` part
    dropped: pip installs releases, and ``+`` is not allowed in a tag)."""
    return metadata.version("jupyter-repo2docker").split("+")[0]


def default_base_image(os_release: str = "/etc/os-release") -> str:
    """The host's own distribution, so that the docker CLI and buildx copied
    from the host find the C library they were built against:
    ``ubuntu:24.04`` on Ubuntu 24.04, ``debian:bookworm-slim`` on Debian 12."""
    fields = {}
    try:
        with open(os_release, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                fields[key] = value.strip('"')
    except OSError:
        pass
    if fields.get("ID") == "ubuntu" and re.fullmatch(r"\d+\.\d+", fields.get("VERSION_ID", "")):
        return f"ubuntu:{fields['VERSION_ID']}"
    if fields.get("ID") == "debian" and re.fullmatch(r"[a-z]+", fields.get("VERSION_CODENAME", "")):
        return f"debian:{fields['VERSION_CODENAME']}-slim"
    return "debian:bookworm-slim"


def period(now: float | None = None) -> str:
    """The month: the builder clones untrusted repositories as root with the
    Docker socket, so its git and openssl must not stay at their first
    install. A new month makes a new image, with apt's upgrades."""
    return time.strftime("%Y-%m", time.gmtime(now))


def find_docker_cli() -> str | None:
    path = shutil.which("docker")
    return os.path.realpath(path) if path else None


def find_buildx() -> str | None:
    """The buildx plugin the docker CLI on this host uses (its own search order)."""
    config = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    for pattern in PLUGIN_DIRS:
        candidate = os.path.expanduser(pattern.format(config=config)) + "/docker-buildx"
        if os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    return None


def dockerfile(base_image: str, r2d_version: str, host_ca: bool = True) -> str:
    """The builder's Dockerfile (pure). ``host_ca``: the host's CA bundle
    replaces the image's (the host may trust a proxy's CA)."""
    ca = f"COPY ca-bundle.crt {CA_BUNDLE}\n" if host_ca else ""
    return f"""\
FROM {base_image}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \\
 && apt-get upgrade -y \\
 && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \\
    openssh-client \\
 && rm -rf /var/lib/apt/lists/*
{ca}RUN python3 -m venv /opt/repo2docker \\
 && PIP_CERT={CA_BUNDLE} /opt/repo2docker/bin/pip install --no-cache-dir \\
    "jupyter-repo2docker=={r2d_version}"
COPY docker /usr/local/bin/docker
COPY docker-buildx /usr/local/lib/docker/cli-plugins/docker-buildx
COPY entry.py {ENTRY}
# a local repository an admin builds belongs to another uid than the builder's root
RUN git config --system --add safe.directory '*' \\
 && docker --version && docker buildx version && {PYTHON} -m repo2docker --version
ENTRYPOINT ["{PYTHON}", "{ENTRY}"]
"""


def _host_binaries() -> tuple[str, str]:
    docker_cli, buildx = find_docker_cli(), find_buildx()
    if docker_cli is None:
        raise BuilderImageError("no docker CLI on this host's PATH to put into the builder image")
    if buildx is None:
        raise BuilderImageError(
            "no docker buildx plugin on this host (repo2docker needs it): install docker-buildx"
        )
    return docker_cli, buildx


def inputs_key(base_image: str) -> tuple:
    """What the image depends on, cheaply (paths, sizes, change times): the
    tag is computed again only when one of these changes."""
    key: list = [base_image, repo2docker_version(), RECIPE_VERSION, period()]
    for path in (*_host_binaries(), CA_BUNDLE):
        try:
            st = os.stat(path)
            key.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            key.append((path, None))
    return tuple(key)


def context_files(base_image: str) -> dict[str, bytes]:
    """Everything the image is built from, by file name (reads this host)."""
    docker_cli, buildx = _host_binaries()
    host_ca = os.path.isfile(CA_BUNDLE) and os.path.getsize(CA_BUNDLE) > 0
    files = {"Dockerfile": dockerfile(base_image, repo2docker_version(), host_ca).encode()}
    files["entry.py"] = ENTRY_SCRIPT.encode()
    with open(docker_cli, "rb") as f:
        files["docker"] = f.read()
    with open(buildx, "rb") as f:
        files["docker-buildx"] = f.read()
    if host_ca:
        with open(CA_BUNDLE, "rb") as f:
            files["ca-bundle.crt"] = f.read()
    return files


def image_tag(files: dict[str, bytes], month: str = "") -> str:
    digest = hashlib.sha256(month.encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return f"{TAG_PREFIX}:{repo2docker_version()}-{digest.hexdigest()[:12]}"


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name in ("docker", "docker-buildx") else 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


_tags: dict[tuple, str] = {}
# one per event loop (tests run several): two builds starting at once make one image
_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def ensure(
    docker: aiodocker.Docker,
    base_image: str,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """The builder image's tag; built first if this engine lacks it."""
    key = await asyncio.to_thread(inputs_key, base_image)
    tag = _tags.get(key)
    files = None
    if tag is None:  # hashing ~100 MB of binaries: once per change, not per build
        files = await asyncio.to_thread(context_files, base_image)
        tag = _tags[key] = image_tag(files, period())
    async with _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
        try:
            await docker.images.inspect(tag)
            return tag
        except aiodocker.DockerError as e:
            if e.status != 404:
                raise
        if files is None:
            files = await asyncio.to_thread(context_files, base_image)
        if on_line is not None:
            on_line(f"Preparing the builder image {tag} (once, from {base_image})\n")
        log.info("building the builder image %s from %s", tag, base_image)
        last: list[str] = []
        try:
            async for item in docker.images.build(
                fileobj=_tar(files),
                encoding="application/x-tar",
                tag=tag,
                forcerm=True,
                stream=True,
                # apt and pip behind the host's proxy, if it has one
                buildargs=proxy_args(os.environ),
                labels={BUILDER_LABEL: RECIPE_VERSION},
            ):
                text = item.get("stream") or ""
                if text.strip():
                    last = (last + [text.rstrip()])[-15:]
        except aiodocker.DockerError as e:  # a failed step, with what it printed
            detail = "\n".join(last)
            raise BuilderImageError(
                f"the builder image could not be built: {e.message}\n{detail}".rstrip()
            ) from e
        try:
            await docker.images.inspect(tag)
        except aiodocker.DockerError:
            detail = "\n".join(last)
            raise BuilderImageError(f"the builder image was not made:\n{detail}") from None
        log.info("built the builder image %s", tag)
        await _remove_older(docker, tag)
        return tag


def proxy_args(environ) -> dict[str, str]:
    """Docker's predefined proxy build arguments, from the host's environment."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
    return {name: environ[name] for name in names if environ.get(name)}


async def _remove_older(docker: aiodocker.Docker, keep: str):
    """Earlier builder images (last month's, an older repo2docker's): each is
    hundreds of MB. One a build still runs in is refused by the engine: kept."""
    try:
        images = await docker.images.list(filters={"label": [BUILDER_LABEL]})
    except aiodocker.DockerError as e:
        log.warning("could not list older builder images: %s", e)
        return
    for image in images:
        tags = [t for t in image.get("RepoTags") or [] if t.startswith(TAG_PREFIX + ":")]
        for old in tags:
            if old == keep:
                continue
            try:
                await docker.images.delete(old)
                log.info("removed the older builder image %s", old)
            except aiodocker.DockerError as e:
                log.info("kept the older builder image %s: %s", old, e.message)
