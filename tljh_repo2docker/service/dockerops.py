"""Docker calls the service makes: thin wrappers around aiodocker."""

from __future__ import annotations

import asyncio
import io
import tarfile

import aiodocker

from .. import labels
from ..catalogue import DockerUnavailable


class LazyDocker:
    """An aiodocker client made on first use, and again after a failure.

    ``aiodocker.Docker()`` fails (AssertionError) when no socket exists, e.g.
    on a fresh TLJH install before Docker is installed: the service must
    start anyway and begin to work once Docker is there. Attribute access
    (``.images``, ``.containers``...) goes to the real client; while there is
    none it raises ``DockerUnavailable`` with the reason.
    """

    def __init__(self, url: str | None = None):
        self._url = url
        self._client: aiodocker.Docker | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self._url)
            except (AssertionError, ValueError, OSError) as e:
                raise DockerUnavailable(
                    "no Docker socket: DOCKER_HOST is unset and /var/run/docker.sock is missing"
                ) from e
        return self._client

    def __getattr__(self, name: str):
        # only called for what this class lacks: the client's API groups
        return getattr(self.client, name)

    async def ping(self, timeout: float = 2.0) -> str:
        """The engine's version; DockerUnavailable when it does not answer."""
        try:
            version = await asyncio.wait_for(self.client.version(), timeout)
        except asyncio.TimeoutError as e:
            raise DockerUnavailable(f"no answer within {timeout:g} s") from e
        except aiodocker.DockerError as e:
            raise DockerUnavailable(str(e.message)[:300]) from e
        except OSError as e:
            raise DockerUnavailable(str(e)[:300]) from e
        return str(version.get("Version", ""))

    async def close(self):
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _hub_filter(hub: str, *extra: str) -> dict:
    return {"label": [f"{labels.HUB}={hub}", *extra]}


async def environment_images(docker: aiodocker.Docker, hub: str, name: str) -> list[dict]:
    """Image summaries of every build of environment ``name``."""
    return await docker.images.list(
        filters=_hub_filter(hub, f"{labels.MANAGED}=true", f"{labels.ENVIRONMENT}={name}")
    )


async def servers_by_environment(docker: aiodocker.Docker, hub: str) -> dict[str, list[dict]]:
    """Running server containers of this hub, grouped by environment name."""
    found: dict[str, list[dict]] = {}
    for c in await docker.containers.list(
        all=True, filters=_hub_filter(hub, f"{labels.SERVER}=true")
    ):
        c_labels = c._container.get("Labels") or {}
        env = c_labels.get(labels.ENVIRONMENT, "")
        found.setdefault(env, []).append(
            {
                "user": c_labels.get(labels.USER, ""),
                "server_name": c_labels.get(labels.SERVER_NAME, ""),
                "state": c._container.get("State", ""),
                "id": c.id,
            }
        )
    return found


async def images_in_use(docker: aiodocker.Docker) -> set[str]:
    """Image names and ids that any container (running or not) uses."""
    used = set()
    for c in await docker.containers.list(all=True):
        used.add(c._container.get("Image", ""))
        used.add(c._container.get("ImageID", ""))
    used.discard("")
    return used


async def remove_image(docker: aiodocker.Docker, ref: str) -> bool:
    """Remove an image (tag); False if it was not there."""
    try:
        await docker.images.delete(ref, force=False, noprune=False)
    except aiodocker.DockerError as e:
        if e.status == 404:
            return False
        raise
    return True


async def relabel(docker: aiodocker.Docker, tag: str, new_labels: dict[str, str]) -> None:
    """Give image ``tag`` new label values.

    Labels are immutable, so this builds a child image ``FROM tag`` that adds
    no layer, only the labels (passed through the API, never into a
    Dockerfile), and moves the tag to it.
    """
    dockerfile = f"FROM {tag}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    old = await docker.images.inspect(tag)
    await docker.images.build(
        fileobj=buf, encoding="identity", tag=tag, rm=True, pull=False, labels=new_labels
    )
    new = await docker.images.inspect(tag)
    if new["Id"] != old["Id"]:
        # the old image is now untagged: drop it unless a container uses it
        try:
            await docker.images.delete(old["Id"], force=False)
        except aiodocker.DockerError:
            pass
