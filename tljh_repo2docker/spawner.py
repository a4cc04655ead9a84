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
import stat

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

# images whose home has nothing to copy (a picker start asks Docker once)
_NOTHING_TO_COPY: set[str] = set()


def _kind(path: str) -> str | None:
    """What is at ``path``: "folder", "other" (a file, a link) or None; never follows links."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return "other"  # unreadable: neither copied into nor opened
    return "folder" if stat.S_ISDIR(mode) else "other"


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

    async def open_course_folder(self, info, home: str, owner):
        """A picker start: copy the environment's files once into
        ``~/<environment>`` and open that folder (issue 11). The home stays
        whole; a folder already there (the user's own copy) is never touched.
        A copy that fails costs the folder, not the server."""
        folder = projects.course_folder(info.environment)
        target = os.path.join(home, folder)
        if info.image_id not in _NOTHING_TO_COPY and _kind(target) is None:
            self._progress(30, f"Copying the files of {info.display_name} into ~/{folder}")
            try:
                seeded = await asyncio.to_thread(
                    projects.seed_project,
                    self.client,
                    info.image,
                    f"/home/{self.build_settings.user_name}",
                    target,
                    owner.uid,
                    self.build_settings.user_gid,
                    staging_root=projects.staging_root(self.homes_dir),
                    skip_empty=True,
                )
            except (docker.errors.DockerException, OSError, projects.ProjectError) as e:
                self.log.warning("%s: could not copy into ~/%s: %s", self._log_name, folder, e)
                return
            if not seeded and _kind(target) is None:
                _NOTHING_TO_COPY.add(info.image_id)  # ask Docker once per image
        landing = projects.course_landing(self.default_url, folder)
        if landing and _kind(target) == "folder":
            self.default_url = landing

    async def prepare_project(self, info, home: str, project: str, owner) -> str:
        """Seed ``~/<project>`` once from the image; its host path.

        The server's root is the project folder whatever is mounted, so the
        default URL stays the hub's (``/lab``) and paths relative to the
        repository work from the server's root.
        """
        user_home = f"/home/{self.build_settings.user_name}"
        target = os.path.join(home, projects.valid_project(project))
        try:
            await asyncio.to_thread(
                projects.seed_project,
                self.client,
                info.image,
                user_home,
                target,
                owner.uid,
                # the servers' group, not the home's (maybe an admin group)
                self.build_settings.user_gid,
                staging_root=projects.staging_root(self.homes_dir),
            )
        except (docker.errors.DockerException, OSError, projects.ProjectError) as e:
            raise SpawnError(500, f"Could not prepare your project folder {project}: {e}") from e
        try:
            folder = os.lstat(target)
        except OSError as e:
            raise SpawnError(500, f"Could not prepare your project folder {project}") from e
        if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != owner.uid:
            # e.g. a symlink the user's other server put there: never mounted
            raise SpawnError(
                409,
                f"~/{project} is not a folder of yours; rename or remove it to launch here.",
            )
        return target

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
