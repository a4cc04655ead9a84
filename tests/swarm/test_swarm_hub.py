"""A whole hub in swarm mode (issue 12): a real JupyterHub and proxy on the
host, configured only by the plugin's TLJH hook (tljh-config keys
``registry``, ``registry_scheme``, ``swarm.*``), against the harness's
registry and swarm of one manager and two workers.

The hub listens on the host's address on the cluster network (the tasks'
servers call its API there); it reaches each server at its node's address
and host-mode port. Environments are built on the host, pushed to the
registry and pre-pulled on the workers; the picker lists the registry's
catalogue.

It checks, in order: the build pushes and the picker lists the registry's
catalogue; a build is startable at once while the hub's listing is cached; a
spawn lands on a worker with its limits, user, home and labels and answers
through the proxy; a file outlives a restart on the other worker; five
stop/starts of one named server each reach the new task; three concurrent
spawns; a server outlives a hub restart.

The tests of this module run in order and share the hub, the swarm and one
built environment.
"""

from __future__ import annotations

import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tljh_repo2docker import labels

from ..conftest import run_cli
from ..dockerfixtures import docker, make_git_repo
from ..hubprocess import hub_settings_for
from .cluster import Cluster
from .conftest import write_notice

pytestmark = [pytest.mark.swarm, pytest.mark.docker]

MEMORY = 512 * 2**20
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def hub_settings(cluster: Cluster, hub_name):
    """The tljh-config section of a hub on this swarm (overrides conftest's)."""
    return hub_settings_for(
        hub_name,
        cluster.homes,  # the same path on the host and on every node
        image_prefix=f"{cluster.registry}/{hub_name}/",
        registry=cluster.registry,
        registry_scheme="http",
        server_start_timeout=120,
        swarm={
            "enabled": True,
            "manager": cluster.manager.docker_host,
            "hub_ip": cluster.gateway,
            "prepull": True,
        },
    )


@pytest.fixture(scope="module")
def swarm_hub(hub, cluster: Cluster, request):
    """The hub; afterwards every server stopped through it and no service
    left on the swarm (the harness removes the rest)."""
    yield hub
    users = hub.api("GET", "/users").json()
    for user in users:
        for server in user.get("servers", {}):
            path = f"/users/{user['name']}/server" + (f"s/{server}" if server else "")
            hub.api("DELETE", path)
            hub.wait_stopped(user["name"], server)
    write_notice(
        request, "=== swarm hub timings (s) ===\n" + json.dumps(TIMINGS, indent=1, sort_keys=True)
    )
    assert hub_services(cluster, hub.settings["hub_name"]) == []


def hub_services(cluster: Cluster, hub_name: str, user: str = "") -> list[dict]:
    """This hub's server services on the swarm (as ``docker inspect`` shows them)."""
    args = ["service", "ls", "-q", "--filter", f"label={labels.HUB}={hub_name}"]
    if user:
        args += ["--filter", f"label={labels.USER}={user}"]
    ids = cluster.docker(cluster.manager, *args).stdout.split()
    return json.loads(cluster.docker(cluster.manager, "inspect", *ids).stdout) if ids else []


def running_task(cluster: Cluster, hub_name: str, user: str) -> tuple[dict, dict]:
    """The user's one service and its running task."""
    (service,) = hub_services(cluster, hub_name, user)
    return service, cluster.wait_task(service["ID"], timeout=30)


@pytest.fixture(scope="module")
def built(swarm_hub, cluster: Cluster, tmp_path_factory, hub_name) -> str:
    """``demo``, built by the CLI with the hub's own config: pushed to the
    registry, pre-pulled; its host copy removed so that only the registry
    has it. Its image reference."""
    repo = make_git_repo(tmp_path_factory.mktemp("swarm-repo") / "env", marker=hub_name)
    start = time.monotonic()
    result = run_cli(
        swarm_hub, "build", f"file://{repo}", "--ref", "v1", "--name", "demo", "--mem-limit", "512M"
    )
    TIMINGS["build + push + prepull"] = round(time.monotonic() - start, 1)
    image = result.stdout.strip().splitlines()[-1].split()[-1]
    assert image.startswith(f"{cluster.registry}/{hub_name}/demo:"), result.stdout
    docker("rmi", image)
    return image


def test_build_pushes_and_the_picker_lists_the_registry(swarm_hub, built, cluster, hub_name):
    repository, tag = built[len(cluster.registry) + 1 :].rsplit(":", 1)
    assert repository in cluster.registry_json("/v2/_catalog")["repositories"]
    config = cluster.image_config(repository, tag)
    assert config["config"]["Labels"][labels.ENVIRONMENT] == "demo"
    assert config["config"]["Labels"][labels.HUB] == hub_name
    # pre-pulled: every worker holds it already
    for node in cluster.workers:
        assert cluster.docker(node, "images", "-q", built).stdout.strip(), node.hostname
    # not on the host's engine any more: the picker can only have it from the registry
    assert docker("images", "-q", built) == ""
    page = swarm_hub.login("alice").get(swarm_hub.url + "/hub/spawn").text
    assert 'value="demo"' in page, page[-3000:]
    assert tag in page  # the short commit
    assert "512M memory" in page


def test_a_new_build_starts_at_once_while_the_hubs_listing_is_warm(
    swarm_hub, built, cluster, tmp_path_factory, hub_name
):
    """The hub hears no events from a registry: its listing is cached for
    seconds. A server asked for right after a build must still start."""
    session = swarm_hub.login("ivan")
    assert 'value="demo"' in session.get(swarm_hub.url + "/hub/spawn").text  # listing cached
    assert 'value="fresh"' not in session.get(swarm_hub.url + "/hub/spawn").text
    repo = make_git_repo(tmp_path_factory.mktemp("fresh-repo") / "env", marker=f"{hub_name}-2")
    result = run_cli(swarm_hub, "build", f"file://{repo}", "--ref", "v1", "--name", "fresh")
    image = result.stdout.strip().splitlines()[-1].split()[-1]
    docker("rmi", image)
    swarm_hub.user_token("ivan")
    r = swarm_hub.api("POST", "/users/ivan/server", json={"environment": "fresh"})
    assert r.status_code in (201, 202), r.text
    swarm_hub.wait_ready("ivan", timeout=120)
    (service,) = hub_services(cluster, hub_name, "ivan")
    assert service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(image)
    stop(swarm_hub, "ivan")


def start(hub, user: str, server: str = "") -> float:
    """Start through the REST API, wait until ready; seconds it took."""
    path = f"/users/{user}/server" + (f"s/{server}" if server else "")
    began = time.monotonic()
    r = hub.api("POST", path, json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, server, timeout=120)
    return time.monotonic() - began


def stop(hub, user: str, server: str = ""):
    path = f"/users/{user}/server" + (f"s/{server}" if server else "")
    r = hub.api("DELETE", path)
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped(user, server)


def server_api(hub, user: str, token: str, path: str = "", server: str = "") -> requests.Response:
    """A request through the hub's proxy to the user's server."""
    prefix = f"/user/{user}/" + (f"{server}/" if server else "")
    return requests.get(
        f"{hub.url}{prefix}api{path}", headers={"Authorization": f"token {token}"}, timeout=30
    )


def test_spawn_lands_on_a_worker_as_the_user_with_limits_and_labels(
    swarm_hub, built, cluster, hub_name
):
    token = swarm_hub.user_token("alice")
    TIMINGS["first start (alice)"] = round(start(swarm_hub, "alice"), 1)
    service, task = running_task(cluster, hub_name, "alice")
    assert cluster.task_node(task).role == "worker"
    spec = service["Spec"]["TaskTemplate"]
    container = spec["ContainerSpec"]
    assert container["Image"].startswith(built)
    assert container["User"] == "1000:100"  # the home's owner, never root
    assert container["Labels"][labels.USER] == "alice"
    assert container["Labels"][labels.HUB] == hub_name
    assert container["Labels"][labels.ENVIRONMENT] == "demo"
    assert spec["Resources"]["Reservations"]["MemoryBytes"] == MEMORY
    assert spec["Resources"]["Limits"]["MemoryBytes"] == MEMORY
    assert cluster.task_exec(task, ["id", "-u"]).stdout.strip() == "1000"
    # the worker's own engine shows the server's labels (what its admin sees)
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    (on_node,) = json.loads(cluster.docker(cluster.task_node(task), "inspect", cid).stdout)
    assert on_node["Config"]["Labels"][labels.USER] == "alice"
    assert on_node["Config"]["Labels"][labels.SERVER] == "true"
    # the home on the shared storage, the user's own
    home = os.path.join(cluster.homes, "jupyter-alice")
    assert container["Mounts"] == [{"Type": "bind", "Source": home, "Target": "/home/jovyan"}]
    assert os.stat(home).st_uid == 1000
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    # through the hub's proxy, to the task's node and port
    r = server_api(swarm_hub, "alice", token)
    assert r.status_code == 200, r.text
    assert "version" in r.json()


def test_file_survives_a_restart_on_the_other_worker(swarm_hub, built, cluster, hub_name):
    token = swarm_hub.user_token("alice")
    _, task = running_task(cluster, hub_name, "alice")
    first = cluster.task_node(task)
    r = requests.put(
        f"{swarm_hub.url}/user/alice/api/contents/notes.txt",
        json={"type": "file", "format": "text", "content": f"written on {first.hostname}"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    stop(swarm_hub, "alice")
    # the node it ran on is drained: the next start must land on the other
    cluster.docker(cluster.manager, "node", "update", "--availability", "drain", first.hostname)
    try:
        TIMINGS["start on the other worker"] = round(start(swarm_hub, "alice"), 1)
        _, task = running_task(cluster, hub_name, "alice")
        second = cluster.task_node(task)
    finally:
        cluster.docker(
            cluster.manager, "node", "update", "--availability", "active", first.hostname
        )
    assert second.role == "worker" and second.hostname != first.hostname
    r = server_api(swarm_hub, "alice", token, "/contents/notes.txt")
    assert r.status_code == 200, r.text
    assert r.json()["content"] == f"written on {first.hostname}"
    with open(os.path.join(cluster.homes, "jupyter-alice", "notes.txt")) as f:
        assert f.read() == f"written on {first.hostname}"
    stop(swarm_hub, "alice")


def test_five_stop_starts_of_one_named_server_reach_each_new_task(
    swarm_hub, built, cluster, hub_name
):
    token = swarm_hub.user_token("dave")
    seen = []
    times = []
    for _ in range(5):
        times.append(round(start(swarm_hub, "dave", "nb"), 1))
        _, task = running_task(cluster, hub_name, "dave")
        # the hub reaches this task, not an earlier one a stale name would give
        r = server_api(swarm_hub, "dave", token, "/status", server="nb")
        assert r.status_code == 200, r.text
        seen.append((task["ID"], r.json()["started"], cluster.task_node(task).hostname))
        stop(swarm_hub, "dave", "nb")
        assert hub_services(cluster, hub_name, "dave") == []
    TIMINGS["5 stop/starts (s each)"] = times
    assert len({task_id for task_id, _, _ in seen}) == 5
    assert len({started for _, started, _ in seen}) == 5


def test_three_concurrent_spawns_all_reach_ready(swarm_hub, built, cluster, hub_name):
    users = ["erin", "frank", "grace"]
    tokens = {user: swarm_hub.user_token(user) for user in users}
    began = time.monotonic()
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(lambda user: start(swarm_hub, user), users))
    TIMINGS["3 concurrent starts"] = round(time.monotonic() - began, 1)
    nodes = set()
    for user in users:
        _, task = running_task(cluster, hub_name, user)
        nodes.add(cluster.task_node(task).role)
        r = server_api(swarm_hub, user, tokens[user])
        assert r.status_code == 200, (user, r.text)
    assert nodes == {"worker"}
    for user in users:
        stop(swarm_hub, user)
    assert hub_services(cluster, hub_name) == []


def test_a_server_outlives_a_hub_restart(swarm_hub, built, cluster, hub_name):
    """cleanup_servers is off: the service keeps running while the hub
    restarts, and the hub finds it again from its saved state."""
    token = swarm_hub.user_token("heidi")
    start(swarm_hub, "heidi")
    service, task = running_task(cluster, hub_name, "heidi")
    before = server_api(swarm_hub, "heidi", token, "/status").json()["started"]
    swarm_hub.stop()
    swarm_hub.start()
    assert [s["ID"] for s in hub_services(cluster, hub_name, "heidi")] == [service["ID"]]
    assert cluster.tasks(service["ID"])[0]["ID"] == task["ID"]
    r = server_api(swarm_hub, "heidi", token, "/status")
    assert r.status_code == 200, r.text
    assert r.json()["started"] == before
    stop(swarm_hub, "heidi")
    assert hub_services(cluster, hub_name, "heidi") == []
