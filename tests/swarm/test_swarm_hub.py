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
stop/starts of one named server each reach the new task; 3 and then 20
concurrent spawns; a server outlives a hub restart; a rename, a new limit,
hiding and going back to an older commit reach the picker and the next spawn
from the service's database (the registry's labels unchanged); a version in
use on a worker is kept and a deleted one leaves the registry; a picker start and a
launch link copy the repository's files into the home through a job on a
worker; a worker that leaves the swarm: its user's server counts as stopped,
the picker says why, and the next start lands on the other worker.

The tests of this module run in order and share the hub, the swarm and one
built environment.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
import requests

from tljh_repo2docker import labels, providers

from ..conftest import run_cli
from ..dockerfixtures import SINGLEUSER_IMAGE, docker, make_course_repo, make_git_repo
from ..hubprocess import hub_settings_for
from ..test_launch import events as build_events
from ..test_service_api import service_pid
from .cluster import BASE_IMAGE, Cluster
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
        # with a registry, builds run in builder containers (auto); the
        # default base (debian:bookworm-slim) cannot be pulled here
        builder_base_image=BASE_IMAGE,
        # 20 servers starting at once on two Docker-in-Docker workers of this
        # 2-core machine took 81 s (the hub, the workers and the servers
        # share the two cores): room for a busy CI machine
        server_start_timeout=240,
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
    assert "in the builder container tljh-r2d-build-" in result.stdout, result.stdout[-2000:]
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


def start(hub, user: str, server: str = "", interval: float = 0.1) -> float:
    """Start through the REST API, wait until ready; seconds it took."""
    path = f"/users/{user}/server" + (f"s/{server}" if server else "")
    began = time.monotonic()
    r = hub.api("POST", path, json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, server, timeout=250, interval=interval)
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


@pytest.mark.parametrize("count", [3, 20])
def test_concurrent_spawns_all_reach_ready_on_both_workers(
    swarm_hub, built, cluster, hub_name, count
):
    users = [f"storm{count}-{n}" for n in range(count)]
    tokens = {user: swarm_hub.user_token(user) for user in users}
    began = time.monotonic()
    with ThreadPoolExecutor(len(users)) as pool:
        # one check a second each: 20 users asking 10 times a second would
        # keep the hub busier than the starts do
        took = list(pool.map(lambda user: start(swarm_hub, user, interval=1.0), users))
    TIMINGS[f"{count} concurrent starts (all; slowest)"] = [
        round(time.monotonic() - began, 1),
        round(max(took), 1),
    ]
    nodes = []
    for user in users:
        service, task = running_task(cluster, hub_name, user)
        assert service["Spec"]["Labels"][labels.USER] == user
        nodes.append(cluster.task_node(task))
        r = server_api(swarm_hub, user, tokens[user])
        assert r.status_code == 200, (user, r.text)
    assert {node.role for node in nodes} == {"worker"}
    if count >= 20:  # Swarm spreads tasks over the nodes that fit them
        assert len({node.hostname for node in nodes}) == len(cluster.workers)
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(lambda user: stop(swarm_hub, user), users))
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


def rebuild(hub, token: str, name: str, changes: dict) -> dict:
    """PATCH ``name`` with ``changes``, build it again, wait for the end."""
    r = hub.service_api("PATCH", f"/environments/{name}", token, json=changes)
    assert r.status_code == 200, r.text
    r = hub.service_api("POST", f"/environments/{name}/builds", token, json={})
    assert r.status_code in (201, 202), r.text
    build_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while True:
        build = hub.service_api("GET", f"/environments/{name}/builds/{build_id}", token).json()
        if build["status"] not in ("queued", "running"):
            assert build["status"] == "succeeded", build
            if not build["cached"]:
                # with a registry, repo2docker runs in a labelled builder container
                r = hub.service_api("GET", f"/environments/{name}/builds/{build_id}/log", token)
                assert "in the builder container tljh-r2d-build-" in r.text, r.text[-2000:]
            return build
        assert time.monotonic() < deadline, build
        time.sleep(0.5)


def started_image(hub, cluster: Cluster, hub_name: str, user: str) -> tuple[str, dict]:
    """Start ``user``'s server in ``back``; the image and resources of its
    service (the server is stopped again)."""
    r = hub.api("POST", f"/users/{user}/server", json={"environment": "back"})
    assert r.status_code in (201, 202), r.text
    try:
        hub.wait_ready(user, timeout=120)
        (service,) = hub_services(cluster, hub_name, user)
        template = service["Spec"]["TaskTemplate"]
        return template["ContainerSpec"]["Image"], template["Resources"]
    finally:
        stop(hub, user)


def test_what_admins_change_reaches_pickers_and_spawns_from_the_database(
    swarm_hub, cluster, tmp_path_factory, hub_name
):
    """A pushed image cannot be relabelled: its display name, limits and
    sharing, and which version is current, come to the hub from the
    service's database (envrecords.py), not from the registry's labels."""
    admin = swarm_hub.user_token("admin")
    swarm_hub.user_token("kim")
    repo = make_git_repo(tmp_path_factory.mktemp("back-repo") / "env", marker=f"{hub_name}-b")
    (repo / "Dockerfile").write_text(f"FROM {SINGLEUSER_IMAGE}\nRUN echo v2 > /tmp/marker\n")
    for args in (["add", "."], ["commit", "-qm", "second"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=repo,
            check=True,
        )
    first = swarm_hub.build_environment("back", f"file://{repo}", "v1", admin)
    assert first["status"] == "succeeded", first
    second = rebuild(swarm_hub, admin, "back", {"ref": "main"})
    assert second["commit"] != first["commit"] and not second["cached"]
    image, _ = started_image(swarm_hub, cluster, hub_name, "kim")
    assert image.startswith(second["image"]), image

    # back to the first commit: already in the registry, made current by the database
    back = rebuild(swarm_hub, admin, "back", {"ref": "v1"})
    assert back["cached"] and back["commit"] == first["commit"], back
    image, _ = started_image(swarm_hub, cluster, hub_name, "kim")
    assert image.startswith(first["image"]), image

    changes = {"display_name": "Back, renamed", "mem_limit": "256M"}
    r = swarm_hub.service_api("PATCH", "/environments/back", admin, json=changes)
    assert r.status_code == 200, r.text
    # the hub reads the database itself: with the service frozen (it cannot
    # answer anything), the picker and a spawn still get the new values
    service = service_pid(swarm_hub)
    os.kill(service, signal.SIGSTOP)
    try:
        time.sleep(1)  # past the hub's cache of the records (0.5 s)
        page = swarm_hub.login("kim").get(swarm_hub.url + "/hub/spawn").text
        assert "Back, renamed" in page
        _, resources = started_image(swarm_hub, cluster, hub_name, "kim")
    finally:
        os.kill(service, signal.SIGCONT)
    assert resources["Limits"]["MemoryBytes"] == 256 * 2**20
    assert resources["Reservations"]["MemoryBytes"] == 256 * 2**20
    # the registry's image still says what it was built with
    repository, tag = first["image"][len(cluster.registry) + 1 :].rsplit(":", 1)
    pushed = cluster.image_config(repository, tag)["config"]["Labels"]
    assert pushed[labels.DISPLAY_NAME] != "Back, renamed"
    assert pushed[labels.MEM_LIMIT] == ""

    r = swarm_hub.service_api(
        "PATCH", "/environments/back", admin, json={"visibility": "groups:nobody-here"}
    )
    assert r.status_code == 200, r.text
    assert 'value="back"' not in swarm_hub.login("kim").get(swarm_hub.url + "/hub/spawn").text
    r = swarm_hub.api("POST", "/users/kim/server", json={"environment": "back"})
    assert r.status_code == 400, r.text
    r = swarm_hub.service_api("DELETE", "/environments/back", admin)
    assert r.status_code == 204, r.text


def test_a_version_in_use_on_a_worker_stays_and_a_deleted_one_leaves_the_registry(
    swarm_hub, built, cluster, hub_name
):
    """The service asks the swarm, not this host's engine, which versions
    servers use; a delete takes the version out of the registry the workers
    pull from, not only out of this host's engine (where it no longer is)."""
    admin = swarm_hub.user_token("admin")
    r = swarm_hub.service_api("GET", "/environments/fresh/versions", admin)
    assert r.status_code == 200, r.text
    (version,) = r.json()["versions"]
    repository, tag = version["image"][len(cluster.registry) + 1 :].rsplit(":", 1)
    manifest = f"/v2/{repository}/manifests/{tag}"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    assert cluster.registry_get(manifest, accept)[0] == 200

    swarm_hub.user_token("judy")
    r = swarm_hub.api("POST", "/users/judy/server", json={"environment": "fresh"})
    assert r.status_code in (201, 202), r.text
    swarm_hub.wait_ready("judy", timeout=120)
    try:
        r = swarm_hub.service_api("GET", "/environments/fresh/versions", admin)
        assert r.json()["versions"][0]["in_use"] is True, r.text
        r = swarm_hub.service_api(
            "DELETE", f"/environments/fresh/versions/{version['commit']}", admin
        )
        assert r.status_code == 409, r.text
        assert "a server uses" in r.json()["message"]
        assert cluster.registry_get(manifest, accept)[0] == 200
    finally:
        stop(swarm_hub, "judy")

    r = swarm_hub.service_api("DELETE", f"/environments/fresh/versions/{version['commit']}", admin)
    assert r.status_code == 204, r.text
    assert cluster.registry_get(manifest, accept)[0] == 404
    r = swarm_hub.service_api("GET", "/environments/fresh/versions", admin)
    assert r.json()["versions"] == [], r.text
    # the hub's picker learns it on its next listing (no events from a registry)
    deadline = time.monotonic() + 60
    while 'value="fresh"' in swarm_hub.login("judy").get(swarm_hub.url + "/hub/spawn").text:
        assert time.monotonic() < deadline, "the picker still offers the deleted version"
        time.sleep(2)


@pytest.fixture(scope="module")
def course_repo(tmp_path_factory, hub_name):
    return make_course_repo(tmp_path_factory.mktemp("course-repo") / "course", marker=hub_name)


def assert_seeded(folder: str):
    """The repository's visible files, the user's own; nothing hidden."""
    with open(os.path.join(folder, "lesson.md")) as f:
        assert f.read() == "# Lesson 1\n"
    with open(os.path.join(folder, "data", "points.csv")) as f:
        assert f.read() == "x,y\n1,2\n"
    assert not os.path.exists(os.path.join(folder, ".hidden"))
    assert os.stat(os.path.join(folder, "lesson.md")).st_uid == 1000
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".tljh-r2d-seed")]


def test_a_picker_start_copies_the_course_files_on_a_worker(
    swarm_hub, cluster, hub_name, course_repo
):
    """The control node no longer holds the image (only the registry and
    the workers do): the copy runs as a job on a worker, as the user."""
    result = run_cli(
        swarm_hub, "build", f"file://{course_repo}", "--ref", "main", "--name", "course"
    )
    image = result.stdout.strip().splitlines()[-1].split()[-1]
    docker("rmi", image)
    swarm_hub.user_token("lena")
    r = swarm_hub.api("POST", "/users/lena/server", json={"environment": "course"})
    assert r.status_code in (201, 202), r.text
    swarm_hub.wait_ready("lena", timeout=250)
    assert_seeded(os.path.join(cluster.homes, "jupyter-lena", "course"))
    service, _ = running_task(cluster, hub_name, "lena")
    env = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "JUPYTERHUB_DEFAULT_URL=/lab/tree/course" in env, env
    # the copy job is gone; only the server's service is left
    assert [s["Spec"]["Name"] for s in hub_services(cluster, hub_name, "lena")] == [
        service["Spec"]["Name"]
    ]
    stop(swarm_hub, "lena")


def test_a_launch_link_builds_copies_and_opens_the_project_on_a_worker(
    swarm_hub, cluster, hub_name, course_repo
):
    token = swarm_hub.user_token("admin")  # file:// repositories: admins only
    spec_path = "git/" + quote(f"file://{course_repo}", safe="") + "/main"
    events = build_events(swarm_hub, token, spec_path, timeout=300)
    assert events[-1]["phase"] == "ready", events[-3:]
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    assert_seeded(os.path.join(cluster.homes, "jupyter-admin", spec.server_name))
    (service,) = hub_services(cluster, hub_name, "admin")
    task = cluster.wait_task(service["ID"], timeout=30)
    assert cluster.task_node(task).role == "worker"
    # the project folder is the server's root: the repository's files at its top
    url = events[-1]["url"]
    r = requests.get(f"{url}files/lesson.md?token={events[-1]['token']}", timeout=30)
    assert r.status_code == 200 and r.text == "# Lesson 1\n", r.text
    stop(swarm_hub, "admin", spec.server_name)


def test_a_worker_leaving_stops_its_servers_with_a_reason_and_the_next_start_lands_elsewhere(
    swarm_hub, built, cluster, hub_name
):
    """Last: it takes a worker out of this module's swarm for good. The
    manager keeps calling a departed node's task "running"; the spawner asks
    about the node too, so the hub's own polls (every 30 s) count the server
    as stopped once two of them found the node down, the picker says why,
    and a new start runs on the other worker with the same home."""
    token = swarm_hub.user_token("kim")
    start(swarm_hub, "kim")
    _, task = running_task(cluster, hub_name, "kim")
    gone = cluster.task_node(task)
    r = requests.put(
        f"{swarm_hub.url}/user/kim/api/contents/kept.txt",
        json={"type": "file", "format": "text", "content": "before the node left"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    began = time.monotonic()
    cluster.docker(gone, "swarm", "leave", "--force")
    deadline = time.monotonic() + 180  # down at two of the hub's checks, 30 s apart
    while "" in swarm_hub.api("GET", "/users/kim").json()["servers"]:
        assert time.monotonic() < deadline, (
            f"the hub still counts kim's server as running:\n{swarm_hub.log_tail()}"
        )
        time.sleep(1)
    TIMINGS["node left → server counted stopped"] = round(time.monotonic() - began, 1)
    picker = swarm_hub.login("kim").get(swarm_hub.url + "/hub/spawn").text
    assert 'id="r2d-last-stop"' in picker, picker[-3000:]
    assert f"({gone.hostname}) left the hub" in picker  # the ' is escaped
    assert "Your files are safe" in picker

    start(swarm_hub, "kim")
    _, task = running_task(cluster, hub_name, "kim")
    now = cluster.task_node(task)
    assert now.role == "worker" and now.hostname != gone.hostname
    r = server_api(swarm_hub, "kim", token, "/contents/kept.txt")
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "before the node left"
    stop(swarm_hub, "kim")
    assert 'id="r2d-last-stop"' not in swarm_hub.login("kim").get(swarm_hub.url + "/hub/spawn").text
