"""Repo2DockerSpawner: DockerSpawner that starts only catalogue images.

The backend for one host: the server is a container on this host's Docker
engine. What does not depend on that (catalogue, form, validation, limits,
homes, progress, admission, metrics) is in ``spawnermixin.py``; the Swarm
backend is ``swarmspawner.py``. Here:

- the container carries the server's labels and runs as the home's owner,
  never root, confined as ``hardening.py`` says (no capabilities, no new
  privileges, seccomp, pids and memory limits);
- course and project folders are seeded from the image through this
  host's engine;
- a container that exits while starting fails the start with its log.
"""

from __future__ import annotations

import asyncio
import inspect
import os

import docker.errors
from dockerspawner import DockerSpawner
from traitlets import default

from . import hardening, labels, projects
from .builder import BuildSettings

# the mixin's helpers, imported from here by the tests and benchmarks
from .spawnermixin import (  # noqa: F401
    Repo2DockerSpawnerMixin,
    SpawnError,
    _catalogues,
    ready_poll_delay,
    shared_catalogue,
    status_check_interval,
)


class Repo2DockerSpawner(Repo2DockerSpawnerMixin, DockerSpawner):
    """One host: each server is a container on this host's Docker engine."""

    @default("remove")
    def _default_remove(self):
        # Containers go on stop; homes are bind mounts and stay.
        return True

    @default("pull_policy")
    def _default_pull_policy(self):
        # Catalogue images are built here; there is nothing to pull.
        return "never"

    @default("extra_host_config")
    def _default_extra_host_config(self):
        # Not auto_remove: a server that dies while starting keeps its log
        # until start() has read it (then start() removes the container).
        return {"auto_remove": False}

    async def _start_container(self, info, user: str, settings: BuildSettings):
        create = await self._configured_create_kwargs()
        # Labels let an admin (and the tests) find every server container.
        create["labels"] = {
            **create.get("labels", {}),
            labels.SERVER: "true",
            labels.HUB: settings.hub_name,
            labels.USER: self.user.name,
            labels.SERVER_NAME: self.name,
            labels.ENVIRONMENT: info.environment,
        }
        # whatever USER the image ends with
        create["user"] = user
        self.extra_create_kwargs = create
        host = hardening.host_config(await self._configured_host_config(), self.pids_limit)
        host.setdefault("auto_remove", False)
        self.extra_host_config = host

        self._progress(40, f"Starting a container from {info.display_name}")
        try:
            # DockerSpawner's start, not the mixin's (next in this class's MRO)
            ip, port = await DockerSpawner.start(self)
        except docker.errors.NotFound as e:
            self.catalogue.invalidate()
            raise SpawnError(
                410, f"The image of {info.display_name} is gone; pick another environment."
            ) from e
        except (docker.errors.DockerException, OSError) as e:
            raise SpawnError(503, f"The Docker engine failed to start your server: {e}") from e
        except RuntimeError:
            # DockerSpawner finds no port when the server exited at once:
            # say why (its log), not "Failed to get port info"
            if self.object_id:
                await self._fail_if_exited()
            raise
        return ip, port

    async def _copy_from_image(self, info, home: str, name: str, owner, skip_empty: bool) -> bool:
        """The image's home into ``<home>/<name>`` through this host's engine
        (``projects.seed_project``: staged where no user reaches, then moved
        in with one rename that replaces nothing)."""
        return await asyncio.to_thread(
            projects.seed_project,
            self.client,
            info.image,
            f"/home/{self.build_settings.user_name}",
            os.path.join(home, name),
            owner.uid,
            # the servers' group, not the home's (maybe an admin group)
            self.build_settings.user_gid,
            staging_root=projects.staging_root(self.homes_dir),
            skip_empty=skip_empty,
        )

    async def _configured_host_config(self) -> dict:
        if not hasattr(self, "_admin_host_config"):
            self._admin_host_config = self.extra_host_config
        value = self._eval_if_callable(self._admin_host_config)
        if inspect.isawaitable(value):
            value = await value
        return dict(value or {})

    async def _fail_if_exited(self):
        obj = await self.get_object()
        state = (obj or {}).get("State") or {}
        if obj is None or state.get("Running"):
            return
        try:
            raw = await self.docker("logs", self.container_id, tail=20)
            tail = raw.decode(errors="replace").strip()
        except docker.errors.DockerException:
            tail = ""
        message = f"Your server exited with code {state.get('ExitCode')} while starting."
        message += " " + hardening.exit_reason(tail, getattr(self, "_run_as_uid", None))
        if tail:
            message += " Last lines of its log:\n" + tail
        self.log.error("%s: %s", self._log_name, message)
        raise SpawnError(500, message)
