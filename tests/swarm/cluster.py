"""A real Docker Swarm on this machine, for tests (issue 12).

What :meth:`Cluster.start` makes, all labelled with a run id and removed by
:meth:`Cluster.close` (see ``../shared/ENVIRONMENT.md``, "Docker Swarm and a
registry", for why each piece looks the way it does):

- one **internal** Docker network: its nodes reach each other, the registry
  and the host (its gateway address), and nothing beyond this machine;
- a **registry** (Debian's ``docker-registry``, no auth, deletes allowed),
  published on the host's ``127.0.0.1:<port>``, which the host engine may push
  to over plain HTTP, and reachable from the nodes as ``registry:5000``;
- **nodes**: Docker-in-Docker containers, one manager and N workers, each
  engine with DNS pointed at 127.0.0.1 (nothing listens there: no query
  leaves the machine) and its API socket in a host folder, so the host's
  ``docker -H`` (or a hub's Docker client) talks to it directly;
- every node forwards its own ``127.0.0.1:<port>`` to the registry, so one
  image reference (``127.0.0.1:<port>/name:tag``) means the same image on the
  host and in every node;
- **homes**: one host folder mounted at the same path in every node (no NFS
  in this kernel), so that path means the same files for a hub on the host
  and for servers on any worker, as an NFS export mounted everywhere would.

The kernel has no IPVS: services use ``--endpoint-mode dnsrr`` and host-mode
published ports, reached at the node's address on the cluster network.

The registry and node images are built FROM the local debootstrap base
(``scripts/setup-host``) and cached under a tag made from a hash of their
build context, so a warm machine only starts containers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parent / "images"
BASE_IMAGE = "tljh-repo2docker-dev/base:bookworm"
IMAGE_REPO = "tljh-repo2docker-dev/swarm-{name}"  # {name}: registry or node
# How each kind of object is removed (volumes with their data).
REMOVE = {
    "container": ["docker", "rm", "-f", "-v"],
    "network": ["docker", "network", "rm"],
    "volume": ["docker", "volume", "rm", "-f"],
    "image": ["docker", "rmi", "-f"],
}
# Everything a run makes carries LABEL=<run id> and PID_LABEL=<pid of the
# test process>: close() removes its own run's objects, sweep() those of
# earlier runs whose process is gone (killed before it could clean up).
LABEL = "tljh-repo2docker-dev.swarm"
PID_LABEL = "tljh-repo2docker-dev.swarm.pid"
TMP_PREFIX = "tljh-swarm-"
REGISTRY_ALIAS = "registry"  # its name on the cluster network
REGISTRY_PORT = 5000  # inside its container

# Docker-in-Docker without --privileged (which fails here: root lacks
# CAP_SYS_RESOURCE); the same flags as the TLJH box (tests/tljh/box.py),
# plus --init (node-init is not PID 1) and a tmpfs for /var/run.
NODE_FLAGS = shlex.split("""
    --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
    --security-opt apparmor=unconfined --security-opt systempaths=unconfined
    --device-cgroup-rule 'a *:* rwm' --cgroupns=private
    --init --tmpfs /run --tmpfs /var/run
""")
# Task states after which a task never runs again (docker/swarmkit's names).
FINAL_STATES = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


class ClusterError(AssertionError):
    pass


def run(args, *, input=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    """Run a host command; on failure raise with its output."""
    result = subprocess.run(
        [str(a) for a in args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise ClusterError(
            f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def wait_for(what: str, probe, timeout: float, interval: float = 0.2):
    """Call ``probe`` until it returns something true; that value, or
    ClusterError after ``timeout`` seconds with the last probe's result."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def missing_prerequisites() -> str:
    """What the host lacks to form the cluster ('' when nothing)."""
    if shutil.which("docker") is None:
        return "docker CLI not found (run scripts/setup-host)"
    if run(["docker", "info"], check=False, timeout=60).returncode != 0:
        return "the Docker engine is not running (run scripts/setup-host)"
    if not image_id(BASE_IMAGE):
        return f"image {BASE_IMAGE} is missing (run scripts/setup-host)"
    return ""


def image_id(tag: str) -> str:
    result = run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def cached_image(name: str) -> tuple[str, bool]:
    """The image built from ``images/<name>`` on the base image, rebuilt only
    when its files or the base changed; (tag, built now)."""
    context = IMAGES_DIR / name
    digest = hashlib.sha256(image_id(BASE_IMAGE).encode())
    for path in sorted(context.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    repo = IMAGE_REPO.format(name=name)
    tag = f"{repo}:{digest.hexdigest()[:16]}"
    if image_id(tag):
        return tag, False
    run(
        ["docker", "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, context],
        timeout=1200,
    )
    # Older builds are of no further use; one a running cluster still uses
    # is refused by docker and stays.
    listed = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repo]).stdout
    for other in listed.split():
        if other != tag:
            run(["docker", "rmi", other], check=False)
    return tag, True


def free_port() -> int:
    """A free port on the host's 127.0.0.1, below the ephemeral range.

    Every node listens on the same port (its forward to the registry), and a
    node's engine hands out ephemeral ports (32768 and up) for host-mode
    published ports: the two must never meet."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError("no free port on 127.0.0.1 between 20000 and 32000")


def process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Remove what earlier runs left behind when their process was killed
    (objects labelled :data:`LABEL` whose :data:`PID_LABEL` process is gone).
    A run still going on (another test process) is left alone."""
    removed = []
    for kind, remove in REMOVE.items():
        for name, pid in labelled(kind):
            if not process_alive(pid):
                run([*remove, name], check=False, timeout=120)
                removed.append(f"{kind} {name}")
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        pid = folder.name[len(TMP_PREFIX) :].split("-")[0]
        if not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"folder {folder}")
    return removed


def labelled(kind: str, value: str = "") -> list[tuple[str, str]]:
    """(name or id, pid label) of the host's objects of ``kind`` labelled
    :data:`LABEL` (``=value`` when given)."""
    selector = f"label={LABEL}={value}" if value else f"label={LABEL}"
    pid = f'{{{{.Label "{PID_LABEL}"}}}}'
    if kind == "image":
        # `docker images --format` has no .Label: ask each image
        ids = sorted(set(run(["docker", "images", "-q", "--filter", selector]).stdout.split()))
        pid = f'{{{{index .Config.Labels "{PID_LABEL}"}}}}'
        inspect = ["docker", "image", "inspect", "-f", pid]
        return [(image, run([*inspect, image], check=False).stdout.strip()) for image in ids]
    listing = {
        "container": ["docker", "ps", "-a", "--format", f"{{{{.Names}}}}\t{pid}"],
        "network": ["docker", "network", "ls", "--format", f"{{{{.Name}}}}\t{pid}"],
        "volume": ["docker", "volume", "ls", "--format", f"{{{{.Name}}}}\t{pid}"],
    }[kind]
    lines = run([*listing, "--filter", selector]).stdout.splitlines()
    return sorted(tuple(line.split("\t", 1)) for line in lines if "\t" in line)


def created(stamp: str) -> tuple[str, int]:
    """A sort key for Docker's timestamps, whose fractions of a second have
    from 0 to 9 digits (2026-12-01T16:58:19.7614Z)."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, int((fraction or "0").ljust(9, "0")[:9])


@dataclass
class Node:
    """One swarm node: a container running a Docker engine."""

    container: str  # its container's name on the host
    hostname: str  # its name in the swarm (node.hostname)
    role: str  # "manager" or "worker"
    socket: str  # its engine's API socket, on the host
    ip: str = ""  # on the cluster network: where its host-mode ports are
    swarm_id: str = ""

    @property
    def docker_host(self) -> str:
        """For DOCKER_HOST or docker-py's base_url, from the host."""
        return f"unix://{self.socket}"


class Cluster:
    """A registry and a swarm of one manager and ``workers`` workers.

    ``timings`` holds how long each step took, in seconds."""

    def __init__(self, workers: int = 2):
        self.run_id = os.urandom(4).hex()
        self.prefix = f"tljh-swarm-{self.run_id}"
        self.labels = [f"{LABEL}={self.run_id}", f"{PID_LABEL}={os.getpid()}"]
        self.network = self.prefix
        self.registry_container = f"{self.prefix}-registry"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{self.run_id}-"))
        # the shared homes: this path on the host and in every node
        self.homes = str(self.tmp / "homes")
        self.registry_port = 0
        self.swept: list[str] = []
        self.gateway = ""  # the host's address on the cluster network
        self.nodes: list[Node] = []
        for index in range(1 + workers):
            hostname = "manager" if index == 0 else f"worker{index}"
            self.nodes.append(
                Node(
                    container=f"{self.prefix}-{hostname}",
                    hostname=hostname,
                    role="manager" if index == 0 else "worker",
                    socket=str(self.tmp / hostname / "docker.sock"),
                )
            )
        self.timings: dict[str, float] = {}
        self.built: dict[str, bool] = {}
        self._host_tags: list[str] = []

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def registry(self) -> str:
        """The registry's host:port in image references, on the host and in nodes."""
        return f"127.0.0.1:{self.registry_port}"

    @contextlib.contextmanager
    def step(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - start, 2)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Cluster:
        with self.step("sweep of earlier runs"):
            self.swept = sweep()
        with self.step("images (build when changed)"):
            registry_image, self.built["registry"] = cached_image("registry")
            node_image, self.built["node"] = cached_image("node")
        with self.step("network + registry"):
            self._start_network()
            self._start_registry(registry_image)
        with self.step("node containers + engines"):
            self._start_nodes(node_image)
        with self.step("swarm init + joins + labels"):
            self._form_swarm()
        return self

    def start_registry(self) -> Cluster:
        """Only the registry, on the host's ``127.0.0.1:<port>`` (no network,
        no nodes): for tests of the registry API alone. close() removes it."""
        with self.step("sweep of earlier runs"):
            self.swept = sweep()
        with self.step("images (build when changed)"):
            registry_image, self.built["registry"] = cached_image("registry")
        with self.step("registry"):
            self._start_registry(registry_image, join_network=False)
        return self

    def _start_network(self) -> None:
        # --internal: the host drops whatever comes from this network for
        # another interface, so nothing a node sends leaves the machine;
        # the host itself (the gateway) stays reachable, as a hub would be.
        run(["docker", "network", "create", "--internal", *self._label_args(), self.network])
        ipam = json.loads(
            run(
                ["docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", self.network]
            ).stdout
        )
        self.gateway = ipam[0].get("Gateway") or ""
        if not self.gateway:
            raise ClusterError(f"network {self.network} has no gateway: {ipam}")
        Path(self.homes).mkdir(mode=0o755)

    def _start_registry(self, image: str, join_network: bool = True) -> None:
        # Published on the host's loopback (no port can be published from an
        # internal network, so it starts on the default bridge), then joined
        # to the cluster network under its alias.
        self.registry_port = free_port()
        args = ["docker", "run", "-d", "--name", self.registry_container, *self._label_args()]
        args += ["--network", "bridge", "--dns", "127.0.0.1"]
        args += ["-p", f"127.0.0.1:{self.registry_port}:{REGISTRY_PORT}"]
        run([*args, image])
        if join_network:
            connect = ["docker", "network", "connect", "--alias", REGISTRY_ALIAS, self.network]
            run([*connect, self.registry_container])
        wait_for("the registry", lambda: self.registry_get("/v2/")[0] == 200, timeout=30)

    def _start_nodes(self, image: str) -> None:
        address = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        for node in self.nodes:
            api = Path(node.socket).parent
            api.mkdir(parents=True)
            volume = f"{node.container}-docker"
            run(["docker", "volume", "create", *self._label_args(), volume])
            args = ["docker", "run", "-d", "--name", node.container, "--hostname", node.hostname]
            args += [*self._label_args(), *NODE_FLAGS, "--network", self.network]
            # the node's own lookups: cluster names through Docker's resolver,
            # anything else to 127.0.0.1, where nothing answers
            args += ["--dns", "127.0.0.1"]
            # overlay2 does not work on the container's overlay root: a volume
            args += ["-v", f"{volume}:/var/lib/docker", "-v", f"{api}:/api"]
            args += ["-v", f"{self.homes}:{self.homes}"]
            args += ["-e", f"REGISTRY={REGISTRY_ALIAS}:{REGISTRY_PORT}"]
            args += ["-e", f"REGISTRY_PORT={self.registry_port}"]
            run([*args, image])
            node.ip = run(["docker", "inspect", "-f", address, node.container]).stdout.strip()
        for node in self.nodes:
            try:
                wait_for(
                    f"the engine in {node.container}",
                    lambda node=node: self.docker(node, "version", check=False).returncode == 0,
                    timeout=60,
                )
            except ClusterError as error:
                raise ClusterError(f"{error}\n{self.node_log(node)}") from None

    def _form_swarm(self) -> None:
        self.docker(self.manager, "swarm", "init", "--advertise-addr", self.manager.ip)
        token = self.docker(self.manager, "swarm", "join-token", "-q", "worker").stdout.strip()

        manager = f"{self.manager.ip}:2377"

        def join(node: Node) -> None:
            args = ["--token", token, "--advertise-addr", node.ip, manager]
            self.docker(node, "swarm", "join", *args)

        with ThreadPoolExecutor(len(self.workers) or 1) as pool:
            list(pool.map(join, self.workers))

        def all_ready():
            rows = self.docker(
                self.manager, "node", "ls", "--format", "{{.ID}}\t{{.Hostname}}\t{{.Status}}"
            ).stdout.split("\n")
            ready = {}
            for row in filter(None, rows):
                node_id, hostname, status = row.split("\t")
                if status == "Ready":
                    ready[hostname] = node_id
            return ready if len(ready) == len(self.nodes) else None

        ready = wait_for("every node Ready", all_ready, timeout=60)
        for node in self.nodes:
            node.swarm_id = ready[node.hostname]
            label = f"role={node.role}"
            self.docker(self.manager, "node", "update", "--label-add", label, node.swarm_id)

    def close(self) -> None:
        """Remove everything this run made (also after a failed start)."""
        with self.step("close"):
            for tag in self._host_tags:
                run(["docker", "rmi", tag], check=False)  # the tag only
            for kind, remove in REMOVE.items():
                names = [name for name, _ in labelled(kind, self.run_id)]
                if names:
                    run([*remove, *names], check=False, timeout=300)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this run is still on the host (nothing after close())."""
        found = [
            f"{kind} {name}"
            for kind in ("container", "network", "volume", "image")
            for name, _ in labelled(kind, self.run_id)
        ]
        found += [f"tag {tag}" for tag in self._host_tags if image_id(tag)]
        if self.tmp.exists():
            found.append(f"folder {self.tmp}")
        return found

    def _label_args(self) -> list[str]:
        return [arg for label in self.labels for arg in ("--label", label)]

    # -- commands ------------------------------------------------------------
    def exec(self, node: Node, argv, *, input=None, check=True, timeout=120):
        """Run ``argv`` in the node's container (not in a task)."""
        args = ["docker", "exec", "-i", node.container, *argv]
        return run(args, input=input, check=check, timeout=timeout)

    def docker(self, node: Node, *args, check=True, timeout=120):
        """The host's docker CLI against the node's engine."""
        return run(["docker", "-H", node.docker_host, *args], check=check, timeout=timeout)

    def node_log(self, node: Node, lines: int = 40) -> str:
        result = run(["docker", "logs", "--tail", str(lines), node.container], check=False)
        return f"--- {node.container} log:\n{result.stdout}{result.stderr}"

    def node_by_id(self, swarm_id: str) -> Node:
        return next(node for node in self.nodes if node.swarm_id == swarm_id)

    # -- images and the registry ---------------------------------------------
    def image_with_labels(self, base: str, labels: dict[str, str]) -> str:
        """A label-only image FROM ``base`` (its layers are base's), built on
        the host and removed by close(); its tag."""
        tag = f"{self.prefix}/labelled:{os.urandom(3).hex()}"
        # this run's labels too, so that close() (or a later sweep) removes it
        everything = dict(label.split("=", 1) for label in self.labels) | labels
        label_args = [arg for k, v in everything.items() for arg in ("--label", f"{k}={v}")]
        run(
            ["docker", "build", "-q", "-t", tag, *label_args, "-"],
            input=f"FROM {base}\n",
            timeout=300,
        )
        return tag

    def push(self, image: str, name: str = "") -> str:
        """Tag ``image`` for the registry and push it from the host engine;
        the reference every node pulls. ``name`` defaults to the image's
        repository and tag."""
        ref = f"{self.registry}/{name or image}"
        if ":" not in ref.rsplit("/", 1)[-1]:
            ref += ":latest"
        with self.step(f"push {ref}"):
            run(["docker", "tag", image, ref])
            self._host_tags.append(ref)
            run(["docker", "push", "-q", ref], timeout=900)
        return ref

    def prepull(self, ref: str, nodes: list[Node] | None = None) -> None:
        """Pull ``ref`` on the given nodes (the workers) in parallel."""
        targets = self.workers if nodes is None else nodes
        with self.step(f"prepull {ref} on {len(targets)} nodes"):
            with ThreadPoolExecutor(len(targets) or 1) as pool:
                list(pool.map(lambda n: self.docker(n, "pull", "-q", ref, timeout=900), targets))

    def registry_get(self, path: str, accept: str = "") -> tuple[int, dict, bytes]:
        """GET on the registry's HTTP API from the host: (status, headers, body);
        status 0 when it does not answer."""
        request = urllib.request.Request(f"http://{self.registry}{path}")
        if accept:
            request.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()
        except OSError:
            return 0, {}, b""

    def registry_json(self, path: str, accept: str = ""):
        status, _, body = self.registry_get(path, accept)
        if status != 200:
            raise ClusterError(f"registry GET {path}: {status} {body[:500]!r}")
        return json.loads(body)

    def image_config(self, repository: str, tag: str) -> dict:
        """An image's config (labels in ``config.Labels``) as the registry
        holds it: the manifest, then its config blob."""
        manifest = self.registry_json(
            f"/v2/{repository}/manifests/{tag}",
            accept="application/vnd.docker.distribution.manifest.v2+json,"
            "application/vnd.oci.image.manifest.v1+json",
        )
        return self.registry_json(f"/v2/{repository}/blobs/{manifest['config']['digest']}")

    # -- services -------------------------------------------------------------
    def service_create(
        self,
        name: str,
        image: str,
        command=(),
        *,
        constraints=("node.role==worker",),
        ports=(),
        mounts=(),
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        user: str = "",
        restart: str = "none",
        extra=(),
    ) -> str:
        """``docker service create`` on the manager, in what works here:
        dnsrr endpoints (no IPVS) and host-mode ports (``ports``: container
        ports, each published on a port its node picks). ``mounts``:
        ``--mount`` values. The service's id."""
        args = ["service", "create", "--detach", "--quiet", "--name", name]
        args += ["--endpoint-mode", "dnsrr", "--restart-condition", restart]
        for constraint in constraints:
            args += ["--constraint", constraint]
        for port in ports:
            args += ["--publish", f"mode=host,target={port}"]
        for mount in mounts:
            args += ["--mount", mount]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for key, value in (labels or {}).items():
            args += ["--container-label", f"{key}={value}"]
        if user:
            args += ["--user", user]
        return self.docker(self.manager, *args, *extra, image, *command).stdout.strip()

    def service_rm(self, name: str) -> None:
        self.docker(self.manager, "service", "rm", name, check=False)

    def service_logs(self, name: str) -> str:
        result = self.docker(
            self.manager, "service", "logs", "--raw", name, check=False, timeout=30
        )
        return result.stdout + result.stderr

    def tasks(self, service: str) -> list[dict]:
        """The service's tasks as ``docker inspect`` shows them, newest first."""
        ids = self.docker(self.manager, "service", "ps", "-q", "--no-trunc", service).stdout.split()
        if not ids:
            return []
        tasks = json.loads(self.docker(self.manager, "inspect", *ids).stdout)
        return sorted(tasks, key=lambda task: created(task["CreatedAt"]), reverse=True)

    def wait_task(self, service: str, state: str = "running", timeout: float = 90) -> dict:
        """The service's newest task once it is in ``state``; ClusterError
        with Docker's reason if it ends in another state first."""

        def probe():
            tasks = self.tasks(service)
            if not tasks:
                return None
            task = tasks[0]
            current = task["Status"]["State"]
            if current == state:
                return task
            if current in FINAL_STATES:
                raise ClusterError(
                    f"task of {service} ended {current}: {task['Status'].get('Err', '')}"
                    f" {task['Status'].get('Message', '')}\n{self.service_logs(service)}"
                )
            return None

        return wait_for(f"a {state} task of {service}", probe, timeout=timeout)

    def task_node(self, task: dict) -> Node:
        return self.node_by_id(task["NodeID"])

    def task_address(self, task: dict, port: int) -> tuple[str, int]:
        """Where the host reaches a task's container ``port``: its node's
        address on the cluster network and the host-mode published port."""
        for mapping in task["Status"].get("PortStatus", {}).get("Ports") or []:
            if mapping["TargetPort"] == port and mapping["PublishMode"] == "host":
                return self.task_node(task).ip, mapping["PublishedPort"]
        raise ClusterError(f"task {task['ID']} publishes no host-mode port for {port}")

    def task_exec(self, task: dict, argv, *, check=True, timeout=60):
        """Run ``argv`` in a task's container, on its node."""
        container = task["Status"]["ContainerStatus"]["ContainerID"]
        return self.docker(
            self.task_node(task), "exec", container, *argv, check=check, timeout=timeout
        )
