"""What every Repo2Docker spawner does, whatever runs the server (issue 12).

``Repo2DockerSpawnerMixin`` holds what does not depend on where a server
runs: the catalogue and the spawn form, the server-side check of the choice,
limits, homes, hardening decisions, progress, admission, the bookkeeping of
refused servers, and metrics. Its backends start the server:

- ``spawner.Repo2DockerSpawner``: a container on this host's engine (DockerSpawner);
- ``swarmspawner.Repo2DockerSwarmSpawner``: a service on a Docker Swarm (SwarmSpawner).

A backend provides ``_start_container`` (start the server, return where it
answers), ``_fail_if_exited`` (SpawnError when it is gone while starting),
``open_course_folder`` and ``prepare_project`` (seeding from the image).

- the spawn form lists the catalogue (newest build of each environment);
- the choice is validated on the server side, whether it comes from the form
  or from ``user_options`` sent to the REST API: anything else is a 400;
- per-image memory/CPU limits from the image labels;
- the user's persistent home is prepared and bind-mounted; a launch-link
  server sees only its project folder unless asked otherwise;
- the server runs as the home's owner, never root;
- progress events, and errors that say what went wrong;
- start() returns only once the server answers HTTP, so the hub's first
  readiness check succeeds instead of backing off; the polling backs off
  when many servers start at once (``ready_poll_delay``);
- a server that failed to start or died is removed with its anonymous
  volumes, even when JupyterHub does not call stop();
- admission control: at most ``max_concurrent_starts`` servers of this hub
  process start at once, the others wait their turn (``admission.py``);
- figures: Prometheus metrics for ``/hub/metrics`` and one record per start
  for the status page (``spawnmetrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import os
import re
import stat
import time
from functools import cached_property
from urllib.parse import urlsplit

import docker.errors
import requests
from jupyterhub.spawner import Spawner
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import maybe_future
from tornado import web
from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from . import (
    access,
    admission,
    hardening,
    homes,
    projects,
    serverrecords,
    spawnmetrics,
    tljhconfig,
    validation,
)
from .aiotime import within
from .assets import jinja_env
from .builder import BuildSettings
from .catalogue import Catalogue, DockerUnavailable
from .envrecords import EnvironmentRecords
from .hubconfig import SERVICE_NAME
from .swarmseed import SeedFailed

_catalogues: dict[tuple, Catalogue] = {}
_templates = jinja_env()
# images whose home has nothing to copy (a picker start asks once per image)
_NOTHING_TO_COPY: set[str] = set()
# what a failed copy from an image raises (either backend)
_COPY_ERRORS = (
    docker.errors.DockerException,
    requests.RequestException,  # docker-py's connection errors
    OSError,
    projects.ProjectError,
    SeedFailed,
)


def _refresh(folder: str) -> None:
    """Read ``folder`` once: on NFS this revalidates the control node's cached
    view of it, so a folder another node just made is seen."""
    try:
        os.listdir(folder)
    except OSError:
        pass  # _kind / lstat say what is there


def _kind(path: str) -> str | None:
    """What is at ``path``: "folder", "other" (a file, a link) or None; never follows links."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return "other"  # unreadable: neither copied into nor opened
    return "folder" if stat.S_ISDIR(mode) else "other"


# spawner state: why the last server stopped when nobody asked (the picker says it)
STOPPED_BECAUSE_KEY = "tljh_repo2docker_stopped_because"


def shared_catalogue(
    hub_name: str, max_age: float, settings: BuildSettings | None = None
) -> Catalogue:
    """One catalogue (and one cache) per hub process, shared by all spawners.
    With a registry in ``settings`` (issue 12) it lists the registry."""
    if settings is None:
        settings = BuildSettings()
    registry = (settings.image_prefix, settings.registry_scheme) if settings.registry else None
    db_url = settings.db_url
    key = (hub_name, max_age, db_url, registry)
    if key not in _catalogues:
        options = settings.catalogue_options(max_age) if registry else {}
        if db_url:
            # what admins change lives in the service's database (issue 12)
            options["records"] = EnvironmentRecords(db_url, max_age=max_age)
        _catalogues[key] = Catalogue(hub_name, **{"max_age": max_age, **options})
    return _catalogues[key]


def ready_poll_delay(attempt: int, starting: int, first: float, maximum: float) -> float:
    """Seconds before readiness check ``attempt`` (0, 1, ...) of one server
    while ``starting`` servers (this one included) wait in this process.

    The delay grows by half each check from ``first``, up to ``2 * first *
    starting``: a lone spawn keeps being checked every few milliseconds
    (it is ready a moment after it answers), while many at once share about
    ``1 / (2 * first)`` checks per second in total instead of each polling
    that often. Never more than ``maximum``, never less than ``first``.
    """
    starting = max(1, starting)
    grown = first * 1.5 ** min(max(0, attempt), 64)  # 1.5**64 is plenty; no overflow
    return max(first, min(grown, 2 * first * starting, maximum))


def status_check_interval(starting: int) -> float:
    """Seconds between two looks at a starting container's state (has it
    exited?) while ``starting`` servers wait in this process. A lone start
    that crashes says why within half a second; while many start, each look
    (a Docker inspect in a thread) is rarer, so that twenty starts cost the
    hub about as many inspects a second as four. Never more than 5 s."""
    return min(5.0, 0.5 * max(1.0, starting / 4))


class SpawnError(web.HTTPError):
    """An HTTP error whose message JupyterHub shows on the spawn page as is."""

    def __init__(self, status: int, message: str, refusal: str = ""):
        super().__init__(status, "%s", message, reason=None)
        self.jupyterhub_message = message
        self.refusal = refusal  # a spawnmetrics.REFUSAL_REASONS label, else by status


async def http_answers(host: str, port: int, path: str, timeout: float = 2.0) -> bool:
    """Whether an HTTP server answers at ``host:port`` (any status line).

    The readiness check of a starting server, made many times a second
    while many start: a bare connection, one request line and the first
    bytes of the answer, not a full HTTP client request (which cost the
    hub several times more CPU per check). A connection Docker's port proxy
    accepts and closes because the server does not listen yet reads as no
    answer. Safe to cancel: the connection is closed whatever happens.
    """
    if any(c in path for c in "\r\n ") or not path.startswith("/"):
        raise ValueError(f"not a request path: {path!r}")
    try:
        return await within(timeout, _status_line_starts(host, port, path))
    except (OSError, asyncio.TimeoutError, EOFError):
        return False


async def _status_line_starts(host: str, port: int, path: str) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        return await reader.read(5) == b"HTTP/"
    finally:
        writer.close()


class Repo2DockerSpawnerMixin(LoggingConfigurable):
    """Everything but starting the server; first in a backend's bases
    (``class X(Repo2DockerSpawnerMixin, DockerSpawner)``), so that its
    defaults win over the backend's."""

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
        0.01,
        config=True,
        help="Seconds before the first checks that a new server answers HTTP; the checks "
        "back off when many servers start at once.",
    )
    ready_poll_max_interval = Float(
        0.5, config=True, help="Longest wait between checks that a new server answers HTTP."
    )
    pids_limit = Integer(
        1024,
        config=True,
        help="Most processes and threads one server may run (stops fork bombs); 0: no limit.",
    )
    # 10, measured on a 2-core machine (benchmarks/storm.py, 50 users at once):
    # 4 started 25 within the timeout, 10 started 40, no limit 5 (all shared
    # the CPU and missed the timeout together)
    max_concurrent_starts = Integer(
        10,
        config=True,
        help="Most servers this hub starts at once; the others wait their turn, told how "
        "many start before them; 0: no limit.",
    )
    spawn_record_file = Unicode(
        config=True,
        help="File of one JSON line per server start (time, outcome, reason) that the "
        "status page reads; '': none. Default: in TLJH's state directory.",
    )
    default_mem_limit = ByteSpecification(
        "2G",
        allow_none=True,
        config=True,
        help="Memory limit of servers whose environment sets none, when TLJH "
        "(limits.memory, i.e. Spawner.mem_limit) sets none either; None: no limit.",
    )

    # servers of this process between container start and first answer
    _starting = 0

    @default("start_timeout")
    def _default_start_timeout(self):
        # JupyterHub's 60 s bounds all of start(), the admission wait included;
        # 20 starts at once took up to 60 s on a busy 2-core machine
        return 120

    @default("spawn_record_file")
    def _default_spawn_record_file(self):
        return os.path.join(tljhconfig.state_dir(), "tljh-repo2docker-spawns.jsonl")

    @default("cmd")
    def _default_cmd(self):
        # Never the image's CMD: repo2docker images default to a plain notebook server.
        return ["jupyterhub-singleuser"]

    @default("prefix")
    def _default_prefix(self):
        # Container names are global to the engine: hubs that share one
        # (distinct hub_name) must not take each other's containers.
        hub = self.build_settings.hub_name
        return "jupyter" if hub == "default" else f"jupyter-{hub}"

    @default("options_form")
    def _default_options_form(self):
        return Repo2DockerSpawnerMixin.render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return Repo2DockerSpawnerMixin.form_to_options

    @cached_property
    def build_settings(self) -> BuildSettings:
        # The same traitlets config the builder reads: one hub name, one uid.
        return BuildSettings(config=self.config)

    @property
    def catalogue(self) -> Catalogue:
        return shared_catalogue(
            self.build_settings.hub_name, self.catalogue_max_age, self.build_settings
        )

    # --- what this user may start --------------------------------------------
    def viewer(self) -> access.Viewer:
        return access.Viewer(
            name=self.user.name,
            groups=frozenset(g.name for g in getattr(self.user, "groups", []) or []),
            admin=bool(getattr(self.user, "admin", False)),
            # a launch-made environment starts only through its launch link
            launching=access.started_by_service(getattr(self, "handler", None), SERVICE_NAME),
        )

    async def visible_environments(self) -> list:
        # the picker: never launch-made environments an admin has not promoted
        viewer = self.viewer()
        return [
            info
            for info in await self.catalogue.environments()
            if access.in_picker(info.owner, info.visibility, viewer)
        ]

    # --- spawn form -----------------------------------------------------------
    @staticmethod
    async def render_options_form(spawner: Repo2DockerSpawnerMixin) -> str:
        try:
            environments = await spawner.visible_environments()
        except DockerUnavailable as e:
            return _templates.get_template("spawn_form.html").render(environments=[], error=str(e))
        versions: dict[str, list] = {}
        for info in await spawner.catalogue.images():
            versions.setdefault(info.environment, []).append(info)
        for builds in versions.values():
            builds.sort(key=lambda i: i.order_key, reverse=True)
        # Preselected: the user's last choice (this server's, else that of the
        # server they started last), then the admin's default; without either,
        # nothing unless there is only one (a random first card may crash).
        own = spawner.user_options if isinstance(spawner.user_options, dict) else {}
        orm_user = getattr(spawner.user, "orm_user", None)
        started = sorted(
            (
                s
                for s in (orm_user.orm_spawners.values() if orm_user is not None else ())
                if isinstance(s.user_options, dict)
            ),
            key=lambda s: str(s.started or s.last_activity or ""),
            reverse=True,
        )
        wanted = [own.get("environment")]
        wanted += [s.user_options.get("environment") for s in started]
        wanted.append(spawner.default_environment)
        names = [info.environment for info in environments]
        selected = next(
            (w for w in wanted if isinstance(w, str) and w in names),
            names[0] if len(names) == 1 else "",
        )
        why = ""
        if selected and selected in wanted[:-1]:
            why = "last used"
        elif selected and selected == spawner.default_environment:
            why = "default"
        # many environments come in groups: the user's own, shared with their
        # groups, for everyone (the template shows groups above 6 environments)
        name = spawner.user.name
        own = [e for e in environments if e.owner == name]
        shared = [e for e in environments if e.owner != name and e.visibility.startswith("groups:")]
        rest = [e for e in environments if e not in own and e not in shared]
        hub_base = getattr(getattr(spawner, "hub", None), "base_url", None) or "/hub/"
        return _templates.get_template("spawn_form.html").render(
            environments=environments,
            stopped_because=getattr(spawner, "stopped_because", ""),
            versions=versions,
            selected=selected,
            selected_why=why,
            groups=[
                ("Your environments", own),
                ("Shared with your groups", shared),
                ("For everyone", rest),
            ],
            services_url=hub_base.rstrip("/").removesuffix("/hub") + "/services/",
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
        if not isinstance(options.get("whole_home", False), bool):
            raise SpawnError(400, "'whole_home' must be true or false")
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

    if "apply_user_options" in Spawner.class_traits():
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
        self._start_began = time.monotonic()
        self._started_environment = None
        self._queued_seconds = 0.0
        try:
            address = await self._start()
        except BaseException as e:
            self._count_start(e)
            # JupyterHub calls stop() only for servers that still run: a
            # container that exited (or never answered) would stay behind.
            if self.object_id:
                await self._discard_container()
            refused = isinstance(e, SpawnError) and e.status_code in (400, 404, 410)
            if refused and self._forgettable():
                # a refused first start must not leave a named server that
                # counts toward the user's limit (see serverrecords)
                self._forget_task = asyncio.ensure_future(serverrecords.forget_refused_server(self))
            raise
        finally:
            self._start_done = True
            self._progress_changed.set()
        self._ran = True
        self._count_start(None)
        return address

    def _count_start(self, error: BaseException | None):
        """Metrics and a record of one start; never fails the start."""
        status = getattr(error, "status_code", None)
        outcome = spawnmetrics.outcome_of(error, status)
        seconds = time.monotonic() - self._start_began
        reason = ""
        try:
            metrics = spawnmetrics.hub_metrics()
            metrics.observe(self._started_environment, outcome, seconds)
            if outcome == "refused":
                reason = spawnmetrics.refusal_reason(status, getattr(error, "refusal", ""))
                metrics.refused(reason)
            if error is not None:
                message = getattr(error, "jupyterhub_message", "") or str(error)
                if outcome == "timeout" and not message:
                    message = f"the hub gave up after its start_timeout ({self.start_timeout} s)"
                reason = f"{reason}: {message}" if reason else message
            if self.spawn_record_file:
                spawnmetrics.append_record(
                    self.spawn_record_file,
                    spawnmetrics.record_line(
                        user=self.user.name,
                        server=self.name or "",
                        environment=self._started_environment,
                        outcome=outcome,
                        seconds=seconds,
                        queued=self._queued_seconds,
                        reason=reason,
                    ),
                )
        except Exception as e:  # figures must never break a start
            self.log.warning("could not count the start of %s: %s", self._log_name, e)

    @contextlib.asynccontextmanager
    async def _admitted(self):
        """Hold one of the process's ``max_concurrent_starts`` places."""
        gate = admission.process_gate(self.max_concurrent_starts)
        metrics = spawnmetrics.hub_metrics()
        began = time.monotonic()

        def tell(ahead: int):
            self._progress(20, admission.waiting_message(ahead))

        metrics.waiting.inc()
        try:
            await gate.acquire(tell, timeout=admission.admission_deadline(self.start_timeout))
        except admission.AdmissionTimeout as e:
            raise SpawnError(
                503,
                f"The hub is busy: {e.args[0]} servers are starting before yours. "
                "Try again in a minute.",
                refusal="busy",
            ) from None
        finally:
            metrics.waiting.dec()
            self._queued_seconds = time.monotonic() - began
        metrics.starting.inc()
        try:
            yield
        finally:
            metrics.starting.dec()
            gate.release()

    def _forgettable(self) -> bool:
        return serverrecords.is_forgettable(
            self.name, getattr(self, "_ran", False), False, None
        ) and bool(getattr(self, "db", None))

    # The "ran" mark and why the last server stopped (when not by request)
    # survive stops (clear_state; the hub then makes a new spawner from the
    # saved state) and hub restarts: the picker says the reason afterwards.
    def get_state(self):
        state = super().get_state()
        if getattr(self, "_ran", False):
            state[serverrecords.RAN_KEY] = True
        if getattr(self, "stopped_because", ""):
            state[STOPPED_BECAUSE_KEY] = self.stopped_because
        return state

    def load_state(self, state):
        super().load_state(state)
        self._ran = bool(state.get(serverrecords.RAN_KEY)) or getattr(self, "_ran", False)
        reason = state.get(STOPPED_BECAUSE_KEY)
        self.stopped_because = reason[:500] if isinstance(reason, str) else ""

    def hub_unreachable_reason(self) -> str | None:
        """Why no container could reach the hub, or None.

        The hub binds the Docker bridge; when Docker was not running as the
        hub started, it fell back to 127.0.0.1, which a container cannot
        reach: every start would wait for a timeout and fail without a word.
        """
        if self.network_name == "host" or self.hub is None:
            return None
        host = urlsplit(self.hub.api_url).hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return None
        if not loopback:
            return None
        return (
            f"The hub listens on {host}, which containers cannot reach: Docker was not "
            "running when the hub started. An administrator must start Docker, then "
            "restart the hub (sudo tljh-config reload hub)."
        )

    async def _start(self):
        problem = self.hub_unreachable_reason()
        if problem:
            self.log.error("%s: %s", self._log_name, problem)
            raise SpawnError(503, problem)
        self._progress(10, "Checking the environment")
        options = self.user_options or {}
        info = await self.resolve_choice(options)
        self.image = info.image
        self._started_environment = info.environment
        self._apply_limits(info)
        # seeding a project and starting a container are the costly part
        async with self._admitted():
            return await self._start_admitted(info, options)

    async def _start_admitted(self, info, options: dict):
        self._progress(25, "Preparing your home directory")
        path = homes.home_path(self.homes_dir, self.user.name)
        settings = self.build_settings
        try:
            owner = await asyncio.to_thread(
                homes.prepare_home, path, settings.user_id, settings.user_gid
            )
            user = hardening.container_user(owner.uid, settings.user_gid)
        except (homes.HomeError, hardening.UnsafeUser) as e:
            raise SpawnError(500, f"Your home directory is not usable: {e}") from e
        self._run_as_uid = owner.uid
        mount_point = f"/home/{settings.user_name}"
        self.volumes = {path: {"bind": mount_point, "mode": "rw"}}
        self.notebook_dir = self._configured("notebook_dir")
        self.default_url = self._configured("default_url")
        project = options.get("project")
        only_project = None
        if not project and info.copy_files:
            await self.open_course_folder(info, path, owner)
        if project and settings.project_folders:
            self._progress(30, "Preparing your project folder")
            folder = await self.prepare_project(info, path, project, owner)
            if settings.launch_home_access == "home" or options.get("whole_home") is True:
                # opened wider on purpose: the whole home, the project as the root
                self.notebook_dir = f"{mount_point}/{project}"
            else:
                # launched code sees this project only, as its home
                only_project = folder
                self.notebook_dir = mount_point
        with contextlib.ExitStack() as pins:
            if only_project is not None:
                try:
                    source = pins.enter_context(
                        projects.pinned_folder(
                            only_project,
                            owner.uid,
                            projects.staging_root(self.homes_dir),
                            traversable=self.pins_traversable,
                        )
                    )
                except (OSError, projects.ProjectError) as e:
                    raise SpawnError(
                        409, f"~/{project} is not a folder of yours; rename or remove it: {e}"
                    ) from e
                self.volumes = {source: {"bind": mount_point, "mode": "rw"}}
            # once started, the container keeps its mount: the pin can go
            ip, port = await self._start_container(info, user, settings)

        self._progress(70, "Waiting for the server to answer")
        await self.wait_until_answering(ip, port)
        self._progress(95, "Server ready")
        return ip, port

    # --- what a backend provides ----------------------------------------------
    # Whether another machine's engine resolves a parked project folder's
    # path (see projects.pinned_folder): the swarm's workers do.
    pins_traversable = False

    async def _start_container(self, info, user: str, settings: BuildSettings):
        """Start the server (self.image, limits, volumes are set); its (ip, port)."""
        raise NotImplementedError

    async def _fail_if_exited(self):
        """SpawnError saying why, when the starting server is gone."""
        raise NotImplementedError

    async def _copy_from_image(self, info, home: str, name: str, owner, skip_empty: bool) -> bool:
        """Copy the image's home (its visible files and folders) once into
        ``<home>/<name>``, which must not exist; never touch what is there.
        True if copied; False if the name was taken meanwhile or (with
        ``skip_empty``) there was nothing to copy. Raises when it failed."""
        raise NotImplementedError

    # --- seeding from the image (both backends, through _copy_from_image) -----
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
                seeded = await self._copy_from_image(info, home, folder, owner, skip_empty=True)
            except _COPY_ERRORS as e:
                self.log.warning("%s: could not copy into ~/%s: %s", self._log_name, folder, e)
                return
            _refresh(home)
            if not seeded and _kind(target) is None:
                _NOTHING_TO_COPY.add(info.image_id)  # ask once per image
        landing = projects.course_landing(self.default_url, folder)
        if landing and _kind(target) == "folder":
            self.default_url = landing

    async def prepare_project(self, info, home: str, project: str, owner) -> str:
        """A launch: seed ``~/<project>`` once from the image; its host path.

        The server's root is the project folder whatever is mounted, so the
        default URL stays the hub's (``/lab``) and paths relative to the
        repository work from the server's root.
        """
        name = projects.valid_project(project)
        target = os.path.join(home, name)
        try:
            await self._copy_from_image(info, home, name, owner, skip_empty=False)
        except _COPY_ERRORS as e:
            raise SpawnError(500, f"Could not prepare your project folder {project}: {e}") from e
        _refresh(home)
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

    # --- the server's container or service (dockerspawner's object) ----------
    async def stop(self, now=False):
        if not self.object_id:
            # start() failed before a container existed: nothing to stop.
            self.clear_state()
            return
        await super().stop(now=now)

    async def run_post_stop_hook(self):
        # JupyterHub skips stop() when poll() says the server has exited, and
        # then forgets the container: remove it (and its anonymous volumes).
        if self.object_id:
            await self._discard_container()
        return await maybe_future(super().run_post_stop_hook())

    async def _discard_container(self):
        try:
            await self.stop_object()
        except docker.errors.DockerException:
            pass  # already gone or already stopped
        try:
            await self.remove_object()  # v=True: anonymous volumes go too
        except docker.errors.DockerException as e:
            self.log.warning("Could not remove container %s: %s", self.object_id[:12], e)
            return
        self.object_id = ""

    def _apply_limits(self, info):
        # the environment's own limits, else TLJH's (Spawner.mem_limit), else ours;
        # from the configured values each time, not from the previous start's
        mem = self._configured("mem_limit")
        self.mem_limit = info.mem_limit or mem or self.default_mem_limit or None
        cpu = self._configured("cpu_limit")
        self.cpu_limit = info.cpu_limit if info.cpu_limit is not None else cpu

    def _configured(self, name: str):
        """A trait's value as configured, before any start() changed it."""
        saved = self.__dict__.setdefault("_configured_values", {})
        if name not in saved:
            saved[name] = getattr(self, name)
        return saved[name]

    def get_env(self):
        env = super().get_env()
        # the mounted home, also for a uid that the image's passwd lacks
        env["HOME"] = f"/home/{self.build_settings.user_name}"
        if (self.user_options or {}).get("project"):
            # a launch-link server: Binder clients open it with ?token= (a
            # short-lived token for this one server, from the launch), which
            # JupyterHub >= 5 ignores unless allowed (issue 9)
            env["JUPYTERHUB_ALLOW_TOKEN_IN_URL"] = "1"  # noqa: S105 (a switch, not a secret)
        return env

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
        path = self.server.base_url if self.server else "/"
        deadline = time.monotonic() + self.start_timeout
        next_status_check = 0.0
        attempt = 0
        Repo2DockerSpawnerMixin._starting += 1
        try:
            while time.monotonic() < deadline:
                if await http_answers(ip, port, path):
                    return  # any real HTTP status means the server is up
                now = time.monotonic()
                if now >= next_status_check:
                    starting = Repo2DockerSpawnerMixin._starting
                    next_status_check = now + status_check_interval(starting)
                    await self._fail_if_exited()
                await asyncio.sleep(
                    ready_poll_delay(
                        attempt,
                        Repo2DockerSpawnerMixin._starting,
                        self.ready_poll_interval,
                        self.ready_poll_max_interval,
                    )
                )
                attempt += 1
        finally:
            Repo2DockerSpawnerMixin._starting -= 1
        raise SpawnError(504, f"Your server did not answer within {self.start_timeout} s")
