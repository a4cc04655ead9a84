"""Repo2DockerSwarmSpawner on a real swarm (issue 12): start() in this
process, its Docker client on the manager, the hub's address the host's
on the cluster network; the server's task runs on a worker and answers.

No hub process: the single-user server only asks the hub API for its
version as it starts (and exits when nothing answers), so a stub on the
host's cluster address answers that; the hub's side is another suite's."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from jupyterhub import __version__ as jupyterhub_version
from jupyterhub.objects import Hub, Server
from traitlets.config import Config

from tljh_repo2docker import labels
from tljh_repo2docker.labels import ImageInfo
from tljh_repo2docker.spawnermixin import SpawnError
from tljh_repo2docker.swarmspawner import Repo2DockerSwarmSpawner

from .cluster import Cluster

pytestmark = [pytest.mark.swarm, pytest.mark.docker]

SINGLEUSER_IMAGE = os.environ.get(
    "TLJH_R2D_SINGLEUSER_IMAGE", "tljh-repo2docker-dev/singleuser:latest"
)
MEMORY = 512 * 2**20


class OneImageCatalogue:
    """The catalogue of one environment (the registry's catalogue is another step)."""

    def __init__(self, info: ImageInfo):
        self.info = info

    async def find(self, environment=None, image=None):
        return self.info if environment in (None, self.info.environment) else None

    async def find_version(self, environment, commit):
        return None

    async def environments(self, fresh=False):
        return [self.info]

    async def images(self, fresh=False):
        return [self.info]

    def invalidate(self):
        pass


def catalogue_entry(image: str) -> ImageInfo:
    return ImageInfo(
        image=image,
        image_id="sha256:" + "e" * 64,
        environment="course",
        display_name="Course",
        repo="https://example.org/r",
        ref="main",
        commit="e" * 40,
        mem_limit=MEMORY,
        cpu_limit=0.5,
        built_at="2026-12-01T00:00:00Z",
    )


@pytest.fixture(scope="module")
def pushed(cluster: Cluster) -> str:
    ref = cluster.push(SINGLEUSER_IMAGE, f"swarm-spawner/singleuser:{cluster.run_id}")
    cluster.prepull(ref)
    return ref


class StubHubAPI(http.server.BaseHTTPRequestHandler):
    """What a starting single-user server asks the hub: its version; and
    where it reports activity. Nothing else is answered."""

    def _answer(self):
        self.send_response(200 if self.path.startswith("/hub/api") else 404)
        self.send_header("X-JupyterHub-Version", jupyterhub_version)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub_api(cluster: Cluster):
    """The stub on the host's address on the cluster network (nodes reach it)."""
    server = http.server.ThreadingHTTPServer((cluster.gateway, 0), StubHubAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_spawner(cluster: Cluster, hub_api: int, monkeypatch):
    # dockerspawner keeps one client per class: this cluster's manager
    monkeypatch.setattr(Repo2DockerSwarmSpawner, "_client", None)

    def make(image: str, name: str = "alice", **traits) -> Repo2DockerSwarmSpawner:
        c = Config()
        c.Repo2DockerSpawner.homes_dir = cluster.homes  # the same path on every node
        c.Repo2DockerSpawner.spawn_record_file = ""
        c.Repo2DockerSwarmSpawner.client_kwargs = {"base_url": cluster.manager.docker_host}
        c.Repo2DockerSwarmSpawner.start_timeout = 90
        for key, value in traits.items():
            setattr(c.Repo2DockerSwarmSpawner, key, value)
        user = SimpleNamespace(
            name=name, groups=[], admin=False, url=f"/user/{name}/", escaped_name=name
        )
        hub = Hub(ip=cluster.gateway, port=hub_api, base_url="/hub/")
        spawner = Repo2DockerSwarmSpawner(config=c, user=user, hub=hub)
        spawner.server = Server(base_url=f"/user/{name}/")
        spawner.user_options = {"environment": "course"}
        monkeypatch.setattr(
            Repo2DockerSwarmSpawner, "catalogue", OneImageCatalogue(catalogue_entry(image))
        )
        return spawner

    return make


def inspect(cluster: Cluster, *args) -> list[dict]:
    return json.loads(cluster.docker(cluster.manager, "inspect", *args).stdout)


def services(cluster: Cluster) -> list[str]:
    return cluster.docker(cluster.manager, "service", "ls", "-q").stdout.split()


def test_start_lands_on_a_worker_as_the_user_with_limits_and_home(cluster, pushed, make_spawner):
    spawner = make_spawner(pushed)
    ip, port = asyncio.run(spawner.start())
    try:
        service = inspect(cluster, spawner.service_id)[0]
        spec = service["Spec"]["TaskTemplate"]
        container = spec["ContainerSpec"]
        # labels and user in the container spec, so every node's engine shows them
        assert container["Labels"][labels.USER] == "alice"
        assert container["Labels"][labels.ENVIRONMENT] == "course"
        assert container["Labels"][labels.SERVER] == "true"
        assert container["User"] == "1000:100"  # the home's owner, never root
        assert container["CapabilityDrop"] == ["ALL"]
        # Swarm places by reservation: reserved what the server may use
        assert spec["Resources"]["Reservations"]["MemoryBytes"] == MEMORY
        assert spec["Resources"]["Limits"]["MemoryBytes"] == MEMORY
        assert spec["Resources"]["Limits"]["NanoCPUs"] == 500_000_000
        assert spec["Resources"]["Limits"]["Pids"] == 1024  # no fork bombs
        assert spec["Placement"]["Constraints"] == ["node.role==worker"]
        assert spec["RestartPolicy"]["Condition"] == "none"
        assert service["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
        home = os.path.join(cluster.homes, "jupyter-alice")
        assert container["Mounts"] == [
            {"Type": "bind", "Source": home, "Target": "/home/jovyan"}  # read-write
        ]
        assert os.stat(home).st_uid == 1000

        task = cluster.tasks(spawner.service_id)[0]
        assert task["Status"]["State"] == "running"
        node = cluster.task_node(task)
        assert node.role == "worker"
        # the task's own address (its node, its host-mode port), not a name
        assert (ip, port) == cluster.task_address(task, spawner.port)
        # the server answers there, and its process runs as the home's owner
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/user/alice/api", timeout=10) as r:
                assert r.status == 200
        except urllib.error.HTTPError as error:  # any HTTP answer is the server's
            assert error.code < 500, error
        uid = cluster.task_exec(task, ["id", "-u"]).stdout.strip()
        assert uid == "1000"
        # a file the server writes is in the shared home, seen from the host
        cluster.task_exec(task, ["sh", "-c", "echo from-the-worker > /home/jovyan/proof"])
        with open(os.path.join(home, "proof")) as f:
            assert f.read() == "from-the-worker\n"
    finally:
        asyncio.run(spawner.stop())
    assert spawner.service_id == ""
    assert services(cluster) == []


def test_image_the_nodes_cannot_pull_fails_with_dockers_reason(cluster, make_spawner):
    missing = f"{cluster.registry}/swarm-spawner/no-such-image:{cluster.run_id}"
    spawner = make_spawner(missing, name="bob")
    with pytest.raises(SpawnError) as failure:
        asyncio.run(spawner.start())
    message = failure.value.jupyterhub_message
    assert message.startswith("The swarm could not start your server (rejected): ")
    assert "no-such-image" in message and "No such image" in message, message
    assert services(cluster) == []  # the failed service is removed


def test_constraint_no_node_meets_fails_with_the_schedulers_reason(cluster, pushed, make_spawner):
    spawner = make_spawner(
        pushed,
        name="carol",
        placement_constraints=["node.labels.role==nowhere"],
        unschedulable_timeout=1.0,
    )
    with pytest.raises(SpawnError) as failure:
        asyncio.run(spawner.start())
    message = failure.value.jupyterhub_message
    assert message.startswith("No node of the swarm can run your server: ")
    assert "no suitable node" in message, message
    assert services(cluster) == []
