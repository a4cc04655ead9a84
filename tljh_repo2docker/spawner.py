"""Repo2DockerSpawner: DockerSpawner that starts only catalogue images.

- the spawn form lists the catalogue (newest build of each environment);
- the choice is validated on the server side, whether it comes from the form
  or from ``user_options`` sent to the REST API: anything else is a 400;
- per-image memory/CPU limits from the image labels;
- the user's persistent home is prepared and bind-mounted;
- progress events, and errors that say what went wrong;
- start() returns only once the server answers HTTP, so the hub's first
  readiness check succeeds instead of backing off.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from functools import cached_property

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Unicode, default

from . import access, homes, labels, projects, validation
from .assets import jinja_env
from .builder import BuildSettings
from .catalogue import Catalogue, DockerUnavailable

_catalogues: dict[tuple[str, float], Catalogue] = {}
_templates = jinja_env()


def shared_catalogue(hub_name: str, max_age: float) -> Catalogue:
    """One catalogue (and one cache) per hub process, shared by all spawners."""
    key = (hub_name, max_age)
    if key not in _catalogues:
        _catalogues[key] = Catalogue(hub_name, max_age=max_age)
    return _catalogues[key]


class SpawnError(web.HTTPError):
    """An HTTP error whose message JupyterHub shows on the spawn page as is."""

    def __init__(self, status: int, message: str):
        super().__init__(status, "%s", message, reason=None)
        self.jupyterhub_message = message


class Repo2DockerSpawner(DockerSpawner):
    homes_dir = Unicode(
        "/home",
        config=True,
        help="Host directory holding the users' homes (TLJH: /home/jupyter-<name>).",
    )
    default_environment = Unicode(
        "",
        config=True,
        help="Environment started when a request names none (REST API without options).",
    )
    catalogue_max_age = Float(
        0.5, config=True, help="Seconds a catalogue listing is served before a refresh."
    )
    ready_poll_interval = Float(
        0.01, config=True, help="Seconds between checks that a new server answers HTTP."
    )

    @default("cmd")
    def _default_cmd(self):
        # Never the image's CMD: repo2docker images default to a plain notebook server.
        return ["jupyterhub-singleuser"]

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
        # until stop() removes it, so the spawn page can show why.
        return {"auto_remove": False}

    @default("prefix")
    def _default_prefix(self):
        # Container names are global to the engine: hubs that share one
        # (distinct hub_name) must not take each other's containers.
        hub = self.build_settings.hub_name
        return "jupyter" if hub == "default" else f"jupyter-{hub}"

    @default("options_form")
    def _default_options_form(self):
        return Repo2DockerSpawner.render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return Repo2DockerSpawner.form_to_options

    @cached_property
    def build_settings(self) -> BuildSettings:
        # The same traitlets config the builder reads: one hub name, one uid.
        return BuildSettings(config=self.config)

    @property
    def catalogue(self) -> Catalogue:
        return shared_catalogue(self.build_settings.hub_name, self.catalogue_max_age)

    # --- what this user may start --------------------------------------------
    def viewer(self) -> access.Viewer:
        return access.Viewer(
            name=self.user.name,
            groups=frozenset(g.name for g in getattr(self.user, "groups", []) or []),
            admin=bool(getattr(self.user, "admin", False)),
        )

    async def visible_environments(self) -> list:
        viewer = self.viewer()
        return [
            info
            for info in await self.catalogue.environments()
            if access.can_see(info.owner, info.visibility, viewer)
        ]

    # --- spawn form -----------------------------------------------------------
    @staticmethod
    async def render_options_form(spawner: Repo2DockerSpawner) -> str:
        try:
            environments = await spawner.visible_environments()
        except DockerUnavailable as e:
            return _templates.get_template("spawn_form.html").render(environments=[], error=str(e))
        versions: dict[str, list] = {}
        for info in await spawner.catalogue.images():
            versions.setdefault(info.environment, []).append(info)
        for builds in versions.values():
            builds.sort(key=lambda i: i.built_at, reverse=True)
        return _templates.get_template("spawn_form.html").render(
            environments=environments,
            versions=versions,
            selected=spawner.default_environment,
            format_bytes=validation.format_bytes,
        )

    @staticmethod
    def form_to_options(formdata: dict) -> dict:
        environment = (formdata.get("environment") or [""])[0]
        options = {"environment": environment}
        # each environment has its own version selector: version-<name>
        version = (formdata.get(f"version-{environment}") or ["latest"])[0]
        if version and version != "latest":
            options["version"] = version
        return options

    # --- choosing the image ---------------------------------------------------
    async def resolve_choice(self, options: dict):
        """The catalogue entry ``options`` asks for; SpawnError 400 otherwise."""
        if not isinstance(options, dict):
            raise SpawnError(400, "user options must be a JSON object")
        environment = options.get("environment")
        image = options.get("image")
        version = options.get("version") or "latest"
        if environment is None and image is None:
            environment = self.default_environment or None
        if not isinstance(version, str) or not (
            version == "latest" or re.fullmatch(r"[0-9a-f]{7,64}", version)
        ):
            raise SpawnError(400, "'version' must be 'latest' or a commit hash")
        if options.get("project") is not None:
            try:
                projects.valid_project(options["project"])
            except projects.ProjectError as e:
                raise SpawnError(400, str(e)) from None
        if environment is not None and not isinstance(environment, str):
            raise SpawnError(400, "'environment' must be a string")
        if environment is None and image is not None and not isinstance(image, str):
            raise SpawnError(400, "'image' must be a string")
        viewer = self.viewer()
        try:
            info = None
            if environment is not None or image is not None:
                info = await self.lookup(environment, image, version)
            if info is not None and not access.can_see(info.owner, info.visibility, viewer):
                # shared a moment ago? ask Docker before refusing
                self.catalogue.invalidate()
                info = await self.lookup(environment, image, version)
            if info is not None and not access.can_see(info.owner, info.visibility, viewer):
                info = None  # private: answered exactly like a name that does not exist
            if info is None:
                known = [e.environment for e in await self.visible_environments()]
        except DockerUnavailable as e:
            raise SpawnError(503, f"Cannot list environments: {e}") from e
        if info is None:
            asked = environment if environment is not None else image
            if asked is None:
                raise SpawnError(
                    400, "Choose an environment. Available: " + (", ".join(known) or "none yet")
                )
            raise SpawnError(
                400,
                f"{str(asked)[:100]!r} is not an environment of this hub. "
                "Available: " + (", ".join(known) or "none yet"),
            )
        return info

    if "apply_user_options" in DockerSpawner.class_traits():
        # JupyterHub >= 5.3 hands user options to this hook first (and warns
        # when nothing takes them). start() validates them: its refusals
        # reach the user as a 400 without a traceback in the hub's log.
        @default("apply_user_options")
        def _default_apply_user_options(self):
            def validated_in_start(spawner, user_options):
                return None

            return validated_in_start

    async def lookup(self, environment, image, version):
        if environment is not None:
            if version == "latest":
                return await self.catalogue.find(environment=environment)
            return await self.catalogue.find_version(environment, version)
        return await self.catalogue.find(image=image)

    async def check_allowed(self, image):
        # DockerSpawner calls this for user_options["image"]: same rule.
        return (await self.resolve_choice({"image": image})).image

    # --- progress -------------------------------------------------------------
    def _progress(self, percent: int, message: str):
        self._progress_events.append({"progress": percent, "message": message})
        self._progress_changed.set()

    async def progress(self):
        seen = 0
        while True:
            events = getattr(self, "_progress_events", [])
            while seen < len(events):
                yield events[seen]
                seen += 1
            if getattr(self, "_start_done", True) and seen >= len(events):
                return
            self._progress_changed.clear()
            try:
                await asyncio.wait_for(self._progress_changed.wait(), 1)
            except asyncio.TimeoutError:
                pass

    # --- start ----------------------------------------------------------------
    async def start(self):
        self._progress_events = []
        self._progress_changed = asyncio.Event()
        self._start_done = False
        try:
            return await self._start()
        finally:
            self._start_done = True
            self._progress_changed.set()

    async def _start(self):
        self._progress(10, "Checking the environment")
        info = await self.resolve_choice(self.user_options or {})
        self.image = info.image
        if info.mem_limit is not None:
            self.mem_limit = info.mem_limit
        if info.cpu_limit is not None:
            self.cpu_limit = info.cpu_limit

        self._progress(25, "Preparing your home directory")
        path = homes.home_path(self.homes_dir, self.user.name)
        settings = self.build_settings
        try:
            owner = await asyncio.to_thread(
                homes.prepare_home, path, settings.user_id, settings.user_id
            )
        except homes.HomeError as e:
            raise SpawnError(500, f"Your home directory is not usable: {e}") from e
        self.volumes = {path: {"bind": f"/home/{settings.user_name}", "mode": "rw"}}
        project = (self.user_options or {}).get("project")
        if project and settings.project_folders:
            self._progress(30, "Preparing your project folder")
            await self.prepare_project(info, path, project, owner)
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
        if owner.uid != settings.user_id:
            create["user"] = f"{owner.uid}:{owner.gid}"
        self.extra_create_kwargs = create

        self._progress(40, f"Starting a container from {info.display_name}")
        try:
            ip, port = await super().start()
        except docker.errors.NotFound as e:
            self.catalogue.invalidate()
            raise SpawnError(
                410, f"The image of {info.display_name} is gone; pick another environment."
            ) from e
        except (docker.errors.DockerException, OSError) as e:
            raise SpawnError(503, f"The Docker engine failed to start your server: {e}") from e

        self._progress(70, "Waiting for the server to answer")
        await self.wait_until_answering(ip, port)
        self._progress(95, "Server ready")
        return ip, port

    async def stop(self, now=False):
        if not self.object_id:
            # start() failed before a container existed: nothing to stop.
            self.clear_state()
            return
        await super().stop(now=now)

    async def prepare_project(self, info, home: str, project: str, owner):
        """Seed ``~/<project>`` once from the image; open the server there."""
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
                owner.gid,
            )
        except (docker.errors.DockerException, OSError) as e:
            raise SpawnError(500, f"Could not prepare your project folder {project}: {e}") from e
        self.default_url = f"/lab/tree/{project}"

    async def _configured_create_kwargs(self) -> dict:
        # What the admin configured (a dict or a callable), before start()
        # added this server's own labels and user to the same trait.
        if not hasattr(self, "_admin_create_kwargs"):
            self._admin_create_kwargs = self.extra_create_kwargs
        value = self._eval_if_callable(self._admin_create_kwargs)
        if inspect.isawaitable(value):
            value = await value
        return dict(value or {})

    async def wait_until_answering(self, ip: str, port: int):
        """Poll the new server until any HTTP answer; fail early if it exits."""
        url = f"http://{ip}:{port}{self.server.base_url if self.server else '/'}"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.start_timeout
        next_status_check = 0.0
        while time.monotonic() < deadline:
            try:
                await client.fetch(HTTPRequest(url, request_timeout=2, follow_redirects=False))
                return
            except HTTPClientError as e:
                if e.code != 599:
                    return  # any real HTTP status means the server is up
            except OSError:
                pass
            now = time.monotonic()
            if now >= next_status_check:
                next_status_check = now + 0.5
                await self._fail_if_exited()
            await asyncio.sleep(self.ready_poll_interval)
        raise SpawnError(504, f"Your server did not answer within {self.start_timeout} s")

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
        if tail:
            message += " Last lines of its log:\n" + tail
        self.log.error("%s: %s", self._log_name, message)
        raise SpawnError(500, message)
