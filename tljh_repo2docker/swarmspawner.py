"""Repo2DockerSwarmSpawner: the servers of catalogue images as Docker Swarm
services on worker nodes (issue 12).

Everything users see (catalogue, form, validation, limits, homes, progress,
admission, metrics) is the mixin's (``spawnermixin.py``), as for one host.
What differs, and why:

- one service per server, its task on a worker (``placement_constraints``);
  the server's labels and its user (the home's owner, never root) are in the
  service's container spec, so every node's engine shows them;
- the memory reservation equals the limit: Swarm places tasks by their
  reservations only, so without one it would pile servers on one node;
- no restarts: a server that dies stays dead and the hub sees it, instead of
  Swarm starting it again elsewhere behind the hub's back;
- a task the nodes reject (an image they cannot pull, a constraint or memory
  no node meets) fails the start with Docker's own reason;
- the kernel here has no IPVS: endpoint mode ``dnsrr`` and a host-mode
  published port; the hub reaches the task at its node's address and that
  port. Never the service name: Swarm's DNS answers for a recreated service
  stay cached for minutes (``../shared/ENVIRONMENT.md``);
- homes are bind mounts of ``homes_dir``, which must be shared storage mounted
  at the same path on every node (NFS in production).

- course and project folders are copied from the image by a one-shot job of
  the image on a worker, as the home's owner (``swarmseed.py``): the hub's
  node may not hold the image;
- a server counts as stopped when its node leaves the swarm or Swarm
  replaces its task, with the reason on the picker (``poll``).

Docker 20.10 services take neither ``no-new-privileges`` nor a seccomp
profile, so the confinement is the user, no capabilities and the pids and
memory limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import docker.errors
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Placement,
    Resources,
    RestartPolicy,
    TaskTemplate,
)
from dockerspawner import SwarmSpawner
from traitlets import Float, List, Unicode, default

from . import hardening, labels, swarmseed
from .builder import BuildSettings
from .spawnermixin import Repo2DockerSpawnerMixin, SpawnError

# Task states after which a task never runs (swarmkit's names).
FINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


def newest_task(tasks: list[dict]) -> dict | None:
    """The most recently created of a service's tasks."""
    # Docker's timestamps have 0-9 digits of fractions: compare them padded
    return max(tasks, key=lambda t: _stamp(t.get("CreatedAt", "")), default=None)


def _stamp(value: str) -> tuple[str, str]:
    seconds, _, fraction = value.rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")


# Seconds a task's node must stay down (seen by two polls) before its server
# counts as stopped: Swarm calls a node down after ~15 s without heartbeats.
NODE_DOWN_GRACE = 20.0
TASK_KEY = "tljh_repo2docker_task"

# Swarm service names are DNS labels: at most 63 characters.
MAX_SERVICE_NAME = 63


def service_name_within(name: str, limit: int = MAX_SERVICE_NAME) -> str:
    """``name``, or when too long its start and a hash of the whole (pure):
    a long user name and a launch server's name together pass the limit."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - len(digest) - 1].rstrip('-._')}-{digest}"


def task_failure(task: dict) -> str:
    """Docker's reason for a task that ended or cannot be placed ('' if none)."""
    status = task.get("Status") or {}
    return str(status.get("Err") or status.get("Message") or "").strip()


def published_port(task: dict, target: int) -> int | None:
    """The host-mode port of the task's node that leads to ``target``."""
    for mapping in (task.get("Status") or {}).get("PortStatus", {}).get("Ports") or []:
        if mapping.get("TargetPort") == target and mapping.get("PublishMode") == "host":
            return int(mapping["PublishedPort"])
    return None


def node_address(node: dict) -> str:
    """Where other hosts reach a swarm node (its advertised address)."""
    addr = (node.get("Status") or {}).get("Addr") or ""
    if addr in ("", "0.0.0.0"):  # noqa: S104 (a value Docker reports, not a bind)
        # managers may report 0.0.0.0 here; their manager address is right
        addr = ((node.get("ManagerStatus") or {}).get("Addr") or "").rsplit(":", 1)[0]
    return addr


class Repo2DockerSwarmSpawner(Repo2DockerSpawnerMixin, SwarmSpawner):
    placement_constraints = List(
        Unicode(),
        ["node.role==worker"],
        config=True,
        help="Swarm placement constraints of the servers' tasks (e.g. "
        "'node.labels.gpu==yes'); by default only on workers, never on the control node.",
    )
    seed_timeout = Float(
        300.0,
        config=True,
        help="Seconds the job that copies an environment's files into a home may take "
        "(it may have to pull the image on its worker first).",
    )
    unschedulable_timeout = Float(
        15.0,
        config=True,
        help="Seconds a server's task may wait while Swarm says no node fits it "
        "(constraints, memory) before the start fails with Swarm's reason.",
    )

    # a worker's engine (root squashed to nobody on NFS) resolves parked folders
    pins_traversable = True
    _node_down_since: float | None = None
    _task_id = ""

    # the task started, kept over hub restarts: a task Swarm replaced is seen
    def get_state(self):
        state = super().get_state()
        task_id = (getattr(self, "_task", None) or {}).get("ID") or self._task_id
        if task_id and self.service_id:
            state[TASK_KEY] = task_id
        return state

    def load_state(self, state):
        super().load_state(state)
        task_id = state.get(TASK_KEY)
        self._task_id = task_id if isinstance(task_id, str) else ""

    def clear_state(self):
        super().clear_state()
        self._task_id = ""

    @default("object_name")
    def _object_name_default(self):
        return service_name_within(super()._object_name_default())

    @classmethod
    def section_names(cls) -> list[str]:
        # the settings written for Repo2DockerSpawner (tljh-config's keys,
        # config.d files) hold here too: one configuration for both backends
        names = super().section_names()
        return [*names[:-1], "Repo2DockerSpawner", names[-1]]

    # --- starting the service ---------------------------------------------------
    async def _start_container(self, info, user: str, settings: BuildSettings):
        self._server_labels = {
            labels.SERVER: "true",
            labels.HUB: settings.hub_name,
            labels.USER: self.user.name,
            labels.SERVER_NAME: self.name,
            labels.ENVIRONMENT: info.environment,
        }
        self._server_user = user
        self._task = None
        self._task_id = ""
        self._node_down_since = None
        self.stopped_because = ""
        self._progress(40, f"Starting {info.display_name} on the swarm")
        try:
            # SwarmSpawner's start (DockerSpawner's, with a service): not the mixin's
            return await SwarmSpawner.start(self)
        except docker.errors.DockerException as e:
            raise SpawnError(503, f"The swarm failed to start your server: {e}") from e

    async def create_object(self):
        container = {
            **self.extra_container_spec,
            "image": self.image,
            "args": await self.get_command(),
            "env": self.get_env(),
            "mounts": self.mounts,
            # ours win over extra_container_spec: never root, never capabilities
            "user": self._server_user,
            "labels": {**self.extra_container_spec.get("labels", {}), **self._server_labels},
            "cap_drop": ["ALL"],
        }
        container.pop("cap_add", None)
        limit = self.mem_limit or None
        resources = Resources(
            **{
                "mem_limit": limit,
                # Swarm places by reservation only
                "mem_reservation": limit,
                "cpu_limit": int(self.cpu_limit * 1e9) if self.cpu_limit else None,
                **self.extra_resources_spec,
            }
        )
        if self.pids_limit and self.pids_limit > 0:
            resources.setdefault("Limits", {})["Pids"] = int(self.pids_limit)
        placement = Placement(
            **{"constraints": list(self.placement_constraints), **self.extra_placement_spec}
        )
        task = TaskTemplate(
            **{
                "container_spec": ContainerSpec(**container),
                "resources": resources,
                "placement": placement,
                "restart_policy": RestartPolicy(condition="none"),
                "networks": [self.network_name] if self.network_name else [],
                **self.extra_task_spec,
            }
        )
        endpoint = EndpointSpec(
            **{
                # no IPVS on these kernels: no virtual IP, no routing mesh
                "mode": "dnsrr",
                "ports": {None: (self.port, "tcp", "host")},
                **self.extra_endpoint_spec,
            }
        )
        return await self.docker(
            "create_service",
            task_template=task,
            endpoint_spec=endpoint,
            name=self.service_name,
            labels=self._server_labels,
        )

    async def _tasks(self) -> list[dict]:
        return await self.docker("tasks", filters={"service": self.service_id})

    async def start_object(self):
        """Wait until the service's task runs; SpawnError with Docker's
        reason when it ends first or no node will take it."""
        delay = 0.1
        unschedulable_since = None
        while True:
            task = newest_task(await self._tasks())
            state = ((task or {}).get("Status") or {}).get("State", "")
            if state == "running":
                self._task = task
                return
            if state in FINAL_STATES:
                reason = task_failure(task) or state
                self.log.error("%s: task %s: %s", self._log_name, state, reason)
                raise SpawnError(503, f"The swarm could not start your server ({state}): {reason}")
            reason = task_failure(task) if state == "pending" else ""
            if reason:
                # the scheduler's complaint ("no suitable node ..."): wait a
                # little for a node to free up or join, then say it
                unschedulable_since = unschedulable_since or time.monotonic()
                if time.monotonic() - unschedulable_since > self.unschedulable_timeout:
                    self.log.error("%s: task pending: %s", self._log_name, reason)
                    raise SpawnError(503, f"No node of the swarm can run your server: {reason}")
            else:
                unschedulable_since = None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    # --- is it still running? ----------------------------------------------------
    async def poll(self):
        """None while the server's task runs on a node of the swarm.

        A node that leaves the swarm (or dies) never reports its task again:
        the manager keeps calling it "running". So the node is asked too;
        when it is down or gone at two checks ``NODE_DOWN_GRACE`` apart (one
        is a network hiccup: stopping would end a live server) the server
        counts as stopped, with a reason the user sees on the picker
        (``stopped_because``)."""
        if not self.service_id:
            return 0
        try:
            task = newest_task(await self._tasks())
        except docker.errors.NotFound:
            return 0
        if task is None:
            return 0
        state = (task.get("Status") or {}).get("State", "")
        if state in FINAL_STATES:
            return f"task {state}: {task_failure(task) or 'ended'}"
        started = (getattr(self, "_task", None) or {}).get("ID") or self._task_id
        if started and task.get("ID") != started:
            # Swarm replaced the task (a drained node): a new process at a
            # new address that the hub's route does not lead to
            self.stopped_because = (
                "Your last server stopped: the swarm moved it to another machine. "
                "Your files are safe; start again."
            )
            self.log.error("%s: its task was replaced: counted as stopped", self._log_name)
            return "task replaced"
        node_id = task.get("NodeID")
        if not node_id:
            return None  # not placed yet: starting
        try:
            node = await self.docker("inspect_node", node_id)
        except docker.errors.NotFound:
            node = {}
        node_state = (node.get("Status") or {}).get("State", "gone")
        if node_state in ("ready", "unknown"):  # unknown: the manager is still finding out
            self._node_down_since = None
            return None
        now = time.monotonic()
        if self._node_down_since is None or now - self._node_down_since < NODE_DOWN_GRACE:
            self._node_down_since = self._node_down_since or now
            return None
        where = (node.get("Description") or {}).get("Hostname") or node_id[:12]
        self.stopped_because = (
            f"Your last server stopped: the machine it ran on ({where}) left the hub's swarm. "
            "Your files are safe; start again and it runs on another machine."
        )
        self.log.error(
            "%s: its node %s is %s: counted as stopped", self._log_name, where, node_state
        )
        return f"node {where} {node_state}"

    async def get_ip_and_port(self):
        # the task's node and its host-mode port: never the service name
        task = self._task
        port = published_port(task, self.port) if task else None
        if port is None:
            raise SpawnError(500, f"The swarm publishes no port for your server: {task!r:.500}")
        node = await self.docker("inspect_node", task["NodeID"])
        address = node_address(node)
        if not address:
            raise SpawnError(500, "The swarm does not say where your server's node is")
        return address, port

    async def _fail_if_exited(self):
        task = newest_task(await self._tasks()) if self.service_id else None
        state = ((task or {}).get("Status") or {}).get("State", "")
        if task is not None and state not in FINAL_STATES:
            return
        message = f"Your server stopped ({state or 'gone'}) while starting."
        if task is not None and task_failure(task):
            message += " " + task_failure(task)
        try:
            # a generator of chunks: read it in the thread too
            raw = await asyncio.to_thread(
                lambda: b"".join(
                    self.client.service_logs(self.service_id, stdout=True, stderr=True, tail=20)
                )
            )
            tail = raw.decode(errors="replace").strip()
        except docker.errors.DockerException:
            tail = ""
        if tail:
            message += " Last lines of its log:\n" + tail
        self.log.error("%s: %s", self._log_name, message)
        raise SpawnError(500, message)

    # --- seeding from the image: in a job on a worker --------------------------
    async def _copy_from_image(self, info, home: str, name: str, owner, skip_empty: bool) -> bool:
        """The control node may not hold the image: the copy runs as a
        one-shot Swarm job of the image on a worker, as the home's owner,
        with the (shared) home mounted beside the image's (``swarmseed.py``)."""
        settings = self.build_settings
        spec = swarmseed.job_spec(
            image=info.image,
            user=hardening.container_user(owner.uid, settings.user_gid),
            home=home,
            image_home=f"/home/{settings.user_name}",
            name=name,
            skip_empty=skip_empty,
            constraints=list(self.placement_constraints),
            hub_name=settings.hub_name,
            owner=self.user.name,
        )
        return await swarmseed.run_seed_job(
            self.client,
            spec,
            timeout=self.seed_timeout,
            unschedulable_timeout=self.unschedulable_timeout,
        )
