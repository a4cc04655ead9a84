"""Where users' servers run, as the service needs to know it: which
environments have servers (an environment is not deleted under them) and
which images they use (a version in use is never removed).

On a single host the servers are containers of the local engine. On a swarm
(issue 12) they are services on the manager's engine, running on workers
that this host cannot see: their containers are not in the local engine, so
asking it would call every image unused and every environment idle.
"""

from __future__ import annotations

from typing import Protocol

import aiodocker

from .. import labels
from . import dockerops


class Servers(Protocol):
    async def by_environment(self) -> dict[str, list[dict]]:
        """This hub's servers grouped by environment name: dicts with
        ``user``, ``server_name``, ``state`` and ``id``."""

    async def images_in_use(self) -> set[str]:
        """Image references and ids that a server (or, on this host, any
        container) uses."""

    async def close(self) -> None: ...


class LocalServers:
    """Servers are containers of this host's engine (today's single host)."""

    def __init__(self, docker, hub_name: str):
        self._docker = docker
        self.hub_name = hub_name

    async def by_environment(self) -> dict[str, list[dict]]:
        return await dockerops.servers_by_environment(self._docker, self.hub_name)

    async def images_in_use(self) -> set[str]:
        return await dockerops.images_in_use(self._docker)

    async def close(self) -> None:
        pass  # the service's own client: closed by the service


def image_name(reference: str) -> str:
    """A service's image without the digest Docker may pin it to
    (``host:5000/hub/env:abc@sha256:...`` is the tag ``host:5000/hub/env:abc``)."""
    return reference.split("@", 1)[0]


class SwarmServers:
    """Servers are services on the swarm; this host's containers (builds,
    pre-pull helpers) still count for the images in use."""

    def __init__(self, docker, hub_name: str, manager_url: str):
        self._local = LocalServers(docker, hub_name)
        self.hub_name = hub_name
        self.manager_url = manager_url
        self._manager: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        if self._manager is None:
            self._manager = aiodocker.Docker(url=self.manager_url)
        return self._manager

    async def _services(self) -> list[dict]:
        return await self._client().services.list(
            filters={"label": [f"{labels.HUB}={self.hub_name}", f"{labels.SERVER}=true"]}
        )

    async def by_environment(self) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for service in await self._services():
            service_labels = (service.get("Spec") or {}).get("Labels") or {}
            if service_labels.get(labels.HUB) != self.hub_name:
                continue  # the engine filtered already; never trust one field alone
            found.setdefault(service_labels.get(labels.ENVIRONMENT, ""), []).append(
                {
                    "user": service_labels.get(labels.USER, ""),
                    "server_name": service_labels.get(labels.SERVER_NAME, ""),
                    # a service of ours exists only while the hub counts the server as started
                    "state": "running",
                    "id": service.get("ID", ""),
                }
            )
        return found

    async def images_in_use(self) -> set[str]:
        used = await self._local.images_in_use()
        for service in await self._services():
            spec = (service.get("Spec") or {}).get("TaskTemplate") or {}
            image = (spec.get("ContainerSpec") or {}).get("Image") or ""
            if image:
                used.add(image)
                used.add(image_name(image))
        used.discard("")
        return used

    async def close(self) -> None:
        if self._manager is not None:
            manager, self._manager = self._manager, None
            await manager.close()


def servers_for(docker, hub_name: str, swarm_manager: str) -> Servers:
    if swarm_manager:
        return SwarmServers(docker, hub_name, swarm_manager)
    return LocalServers(docker, hub_name)


async def remove_image(docker, catalogue, ref: str) -> bool:
    """Remove one built version everywhere it is kept: this host's engine
    and, with a registry (issue 12), the registry, where the workers pull
    from. False when neither had it.

    The registry refuses (ValueError) when another tag is the same image:
    deleting the manifest would take that tag too."""
    removed = await dockerops.remove_image(docker, ref)
    if not catalogue.is_local:
        removed = await catalogue.store.remove(ref) or removed
    catalogue.invalidate()
    return removed
