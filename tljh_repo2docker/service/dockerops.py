"""Docker calls the service makes: thin wrappers around aiodocker."""

from __future__ import annotations

import io
import tarfile

import aiodocker

from .. import labels


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
