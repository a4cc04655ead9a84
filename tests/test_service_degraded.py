"""No failure of the environments service takes the hub down, and each says
what is wrong: a corrupt or locked store, bad settings, Docker missing (at
start, during a creation), ``kill -9`` mid-build, an image removed by hand,
a CLI build, a version delete submitted twice, and the queue's cap at a
hand-off."""

from __future__ import annotations

import asyncio
import html
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.buildjob import BuildResult
from tljh_repo2docker.catalogue import DockerUnavailable
from tljh_repo2docker.service import builds as builds_module
from tljh_repo2docker.service import degraded, dockerops, store

from .conftest import run_cli
from .dockerfixtures import commit_change, docker, make_git_repo
from .hubprocess import HubProcess, free_port
from .serviceprocess import DockerForwarder, ServiceProcess

SUFFIX = secrets.token_hex(3)
NO_HUB = type("NoHub", (), {"url": "http://127.0.0.1:9", "token": "unused"})()


# --- the queue's cap at a hand-off, logs kept as they come (no Docker) ----------------
class StubCatalogue:
    def invalidate(self):
        pass


def make_manager(tmp_path, **kwargs) -> builds_module.BuildManager:
    sessions = store.open_store(f"sqlite:///{tmp_path}/db.sqlite")
    return builds_module.BuildManager(sessions, BuildSettings(), None, StubCatalogue(), **kwargs)


def add_environments(manager, count: int) -> list[store.Environment]:
    with manager.sessions() as db:
        envs = [
            store.Environment(name=f"e{i}", display_name=f"e{i}", repo="file:///x", ref="HEAD")
            for i in range(count)
        ]
        db.add_all(envs)
        db.commit()
        return envs


def fake_run_build(after_exit: float, lines: int = 0, inside: float = 0.05):
    """run_build's contract: the slot is held while 'repo2docker' runs; after
    it exits, checking the image still takes ``after_exit`` seconds."""

    async def run(settings, request, on_line, *, docker, env, slot, on_running, **callbacks):
        async with slot:
            on_running()
            for n in range(lines):
                on_line(_Line("building", f"line {n}\n"))
            await asyncio.sleep(inside)
        await asyncio.sleep(after_exit)
        return BuildResult(f"img/{request.name}:abc", "abc", cached=True)

    return run


class _Line:
    def __init__(self, phase, message):
        self.phase, self.message = phase, message


def test_the_database_never_shows_more_builds_running_than_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(builds_module, "run_build", fake_run_build(after_exit=0.3))
    manager = make_manager(tmp_path, concurrency=2)
    envs = add_environments(manager, 4)

    async def scenario():
        with manager.sessions() as db:
            started = [manager.start(db, db.merge(e), "admin") for e in envs]
        most = 0
        while any(not t.done() for t in manager.tasks.values()):
            with manager.sessions() as db:
                running = db.scalars(
                    select(store.Build).where(store.Build.status == store.RUNNING)
                ).all()
            most = max(most, len(running))
            await asyncio.sleep(0.01)
        return most, [b.id for b in started]

    most, ids = asyncio.run(scenario())
    assert most == 2, f"{most} builds showed running with a cap of 2"
    with manager.sessions() as db:
        assert {db.get(store.Build, i).status for i in ids} == {store.SUCCEEDED}


def test_a_running_builds_log_reaches_the_database_as_it_comes(tmp_path, monkeypatch):
    monkeypatch.setattr(
        builds_module, "run_build", fake_run_build(after_exit=0, lines=30, inside=1.0)
    )
    manager = make_manager(tmp_path, log_flush_interval=0.1)
    (env,) = add_environments(manager, 1)

    async def scenario():
        with manager.sessions() as db:
            build = manager.start(db, db.merge(env), "admin")
        await asyncio.sleep(0.6)  # repo2docker still 'runs'
        with manager.sessions() as db:
            row = db.get(store.Build, build.id)
            seen = (row.status, row.log_lines, row.log_head)
        await manager.wait(build.id)
        return seen

    status, lines, head = asyncio.run(scenario())
    assert status == store.RUNNING
    assert lines >= 30 and "line 29" in head, (lines, head[-200:])


# --- reasons -------------------------------------------------------------------------
def test_no_docker_socket_is_a_reason_not_a_crash(monkeypatch):
    import aiodocker.docker

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(aiodocker.docker, "_sock_search_paths", [Path("/nonexistent.sock")])
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent-docker-config")

    async def scenario():
        lazy = dockerops.LazyDocker()
        with pytest.raises(DockerUnavailable) as info:
            await lazy.images.list()
        return info.value

    exc = asyncio.run(scenario())
    message = degraded.reason(exc)
    assert message and "Docker" in message and "socket" in message


def test_a_locked_database_is_a_503_reason():
    from sqlalchemy.exc import OperationalError

    locked = OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    assert degraded.reason(locked) == degraded.DB_LOCKED
    assert degraded.reason(ValueError("x")) is None


# --- start-up failures: a degraded service, never an exit ----------------------------
def wait_for(predicate, timeout: float = 20, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_a_corrupt_store_gives_503_with_the_reason_then_starts_by_itself(tmp_path):
    db = tmp_path / "corrupt.sqlite"
    db.write_bytes(b"this is not a database" * 200)
    service = ServiceProcess(NO_HUB, tmp_path / "svc", {"db_url": f"sqlite:///{db}"})
    service.start("--EnvironmentsService.startup_retry_seconds=0.3")
    try:
        health = service.get("health")
        assert health.status_code == 503
        assert "database" in health.json()["checks"]["startup"]["message"]
        api = service.get("api/v1/environments")
        assert api.status_code == 503
        assert api.json() == {"status": 503, "message": api.json()["message"]}
        assert "database cannot be opened" in api.json()["message"]
        page = service.get("new")
        assert page.status_code == 503 and "database cannot be opened" in page.text
        # the root page answers 200: JupyterHub's start-up probe takes a 5xx
        # there for "not up" and then exits
        root = service.get("")
        assert root.status_code == 200 and "database cannot be opened" in root.text
        time.sleep(1)
        assert service.alive(), "the service must not exit (the hub would go down)"
        # the administrator moves the broken file away: it starts for real
        db.rename(tmp_path / "corrupt.sqlite.broken")

        def started():
            try:  # the real service takes over the port: a moment without
                checks = service.get("health").json()["checks"]
            except requests.ConnectionError:
                return False
            return "startup" not in checks and checks["store"]["ok"]

        assert wait_for(started), service.log_tail()
    finally:
        service.stop()


def test_bad_settings_give_503_with_the_reason(tmp_path):
    settings = {"db_url": f"sqlite:///{tmp_path}/db.sqlite", "max_image_disk": "lots"}
    service = ServiceProcess(NO_HUB, tmp_path / "svc", settings)
    service.start()
    try:
        r = service.get("api/v1/environments")
        assert r.status_code == 503, r.text
        assert "max_image_disk" in r.json()["message"], r.json()
        time.sleep(0.5)
        assert service.alive()
    finally:
        service.stop()
    assert service.proc.returncode == 0


# --- with a real hub and Docker -----------------------------------------------------
docker_test = pytest.mark.docker


@pytest.fixture(scope="module")
def admin_token(hub):
    return hub.user_token("admin")


@pytest.fixture(scope="module")
def alone(hub, tmp_path_factory):
    """A second environments service, started alone, on its own database."""
    directory = tmp_path_factory.mktemp("alone")
    settings = {**hub.settings, "db_url": f"sqlite:///{directory}/alone.sqlite"}
    service = ServiceProcess(hub, directory, settings).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("slow") / "repo", marker=hub_name + "-slow")
    commit_change(path, "RUN for i in $(seq 1 40); do echo step-$i-of-forty; done")
    commit_change(path, "RUN sleep 300")
    return path


def create(service, token, name, repo) -> requests.Response:
    return service.request(
        "POST", "api/v1/environments", token, json={"name": name, "repo": repo, "ref": "HEAD"}
    )


@docker_test
def test_a_locked_store_answers_503_at_once_and_reads_go_on(alone, admin_token, git_repo):
    name = f"locked-{SUFFIX}"
    db_path = alone.settings["db_url"].removeprefix("sqlite:///")
    assert alone.get("api/v1/environments", admin_token).status_code == 200
    held, release = threading.Event(), threading.Event()

    def writer():  # another process's writer holds the lock up to 10 s
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE schema_version SET version = version")
        held.set()
        release.wait(10)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        held.wait(5)
        t0 = time.monotonic()
        r = create(alone, admin_token, name, f"file://{git_repo}")
        took = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert "locked" in r.json()["message"]
        assert took < 2, f"a locked store stalled the request {took:.1f} s"
        t0 = time.monotonic()
        listing = alone.get("api/v1/environments", admin_token)
        assert listing.status_code == 200
        assert time.monotonic() - t0 < 1
    finally:
        release.set()
        thread.join()
    # nothing was saved: the same request now succeeds
    assert alone.get(f"api/v1/environments/{name}", admin_token).status_code == 404
    r = create(alone, admin_token, name, f"file://{git_repo}")
    assert r.status_code == 201, r.text
    build = alone.wait_build(admin_token, name, r.json()["latest_build"]["id"])
    assert build["status"] == "succeeded", build


@docker_test
def test_docker_missing_refuses_a_creation_and_saves_nothing(hub, admin_token, git_repo, tmp_path):
    name = f"nodocker-{SUFFIX}"
    forwarder = DockerForwarder(tmp_path / "docker.sock")
    settings = {**hub.settings, "db_url": f"sqlite:///{tmp_path}/db.sqlite"}
    service = ServiceProcess(hub, tmp_path / "svc", settings, forwarder.docker_host)
    service.start()
    try:
        r = create(service, admin_token, name, f"file://{git_repo}")
        assert r.status_code == 503, r.text
        assert "Docker" in r.json()["message"]
        listing = service.get("api/v1/environments", admin_token)
        assert listing.status_code == 503 and "Docker" in listing.json()["message"]
        page = service.get("", admin_token)
        assert "Docker" in page.text
        assert service.alive()
        # a 503 is an answer, not a crash: no traceback in the service's log
        assert "Traceback" not in service.log_path.read_text(errors="replace")
        forwarder.on()  # Docker is back: no restart needed
        r = create(service, admin_token, name, f"file://{git_repo}")
        assert r.status_code == 201, r.text  # not 409: nothing was saved before
        build = service.wait_build(admin_token, name, r.json()["latest_build"]["id"])
        assert build["status"] == "succeeded", build
    finally:
        service.stop()
        forwarder.off()


def log_text(service, token, name, build_id, until: str | None = None) -> str:
    """The build's log from the SSE stream: to its end, or until a line
    containing ``until`` (a running build's stream stays open)."""
    r = service.get(f"api/v1/environments/{name}/builds/{build_id}/log", token, stream=True)
    assert r.status_code == 200
    messages = []
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: status") and until is None:
            break
        if line.startswith("data: "):
            messages.append(line[6:])
            if until is not None and until in line:
                break
    r.close()
    return "\n".join(messages)


@docker_test
def test_kill_9_mid_build_keeps_the_log(hub, admin_token, slow_repo, tmp_path):
    name = f"killed-{SUFFIX}"
    settings = {**hub.settings, "db_url": f"sqlite:///{tmp_path}/db.sqlite"}
    service = ServiceProcess(hub, tmp_path / "svc", settings).start()
    try:
        r = create(service, admin_token, name, f"file://{slow_repo}")
        assert r.status_code == 201, r.text
        build_id = r.json()["latest_build"]["id"]

        assert "sleep 300" in log_text(service, admin_token, name, build_id, until="sleep 300")
        build = service.get(f"api/v1/environments/{name}/builds/{build_id}", admin_token)
        assert build.json()["status"] == "running", build.json()
        time.sleep(3)  # more than one write interval
        service.kill()
        service.start()  # recovery ends the orphaned repo2docker and runs the build again
        build = service.get(f"api/v1/environments/{name}/builds/{build_id}", admin_token).json()
        assert build["status"] in ("queued", "running"), build
        assert build["log_lines"] > 40, build
        text = log_text(service, admin_token, name, build_id, until="starts again")
        assert "step-40-of-forty" in text and "sleep 300" in text
        assert "The environments service restarted: this build starts again" in text
        r = service.request(
            "POST", f"api/v1/environments/{name}/builds/{build_id}/cancel", admin_token
        )
        assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
    finally:
        service.stop()


@docker_test
def test_an_image_removed_by_hand_needs_a_rebuild(alone, admin_token, hub_name, tmp_path):
    name = f"removed-{SUFFIX}"
    repo = make_git_repo(tmp_path / "repo", marker=f"{hub_name}-removed")
    r = create(alone, admin_token, name, f"file://{repo}")
    assert r.status_code == 201, r.text
    build = alone.wait_build(admin_token, name, r.json()["latest_build"]["id"])
    assert build["status"] == "succeeded", build
    env = alone.get(f"api/v1/environments/{name}", admin_token).json()
    assert env["status"] == "succeeded" and env["size"]
    docker("rmi", "-f", build["image"])
    time.sleep(1)  # what the service shows of Docker is at most half a second old
    env = alone.get(f"api/v1/environments/{name}", admin_token).json()
    assert (env["status"], env["image"], env["size"]) == ("needs_rebuild", None, None), env
    listed = {
        e["name"]: e for e in alone.get("api/v1/environments", admin_token).json()["environments"]
    }
    assert listed[name]["status"] == "needs_rebuild" and listed[name]["size"] is None
    again = alone.request("POST", f"api/v1/environments/{name}/builds", admin_token, json={})
    assert again.status_code == 202, again.text
    assert alone.wait_build(admin_token, name, again.json()["id"])["status"] == "succeeded"
    env = alone.get(f"api/v1/environments/{name}", admin_token).json()
    assert env["status"] == "succeeded" and env["image"] == build["image"]


@docker_test
def test_an_environment_built_with_the_cli_is_listed_at_once(hub, admin_token, git_repo):
    name = f"cli-{SUFFIX}"

    def names():
        r = hub.service_api("GET", "/environments", token=admin_token)
        assert r.status_code == 200, r.text
        return {e["name"] for e in r.json()["environments"]}

    assert name not in names()  # the service has looked at Docker before
    run_cli(hub, "build", f"file://{git_repo}", "--ref", "v1", "--name", name)
    assert name in names(), "a CLI build must show on the first load"


@docker_test
def test_a_version_delete_of_an_unknown_commit_shows_the_page(hub, admin_token, git_repo):
    name = f"vdel-{SUFFIX}"
    r = hub.service_api(
        "POST",
        "/environments",
        token=admin_token,
        json={"name": name, "repo": f"file://{git_repo}", "ref": "v1"},
    )
    assert r.status_code == 201, r.text
    session = hub.login("admin")
    page = session.get(f"{hub.service_url}/environments/{name}", timeout=60)
    assert page.status_code == 200, page.text[:500]
    token = html.unescape(re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1))
    url = f"{hub.service_url}/environments/{name}/versions/deadbeef00/delete"
    for _ in range(2):  # a double submit
        r = session.post(url, data={"_xsrf": token}, timeout=60)
        assert r.status_code == 404, (r.status_code, r.text[:1000])
        assert f"{name} has no version deadbeef00" in r.text
        assert "v2/git/" in r.text  # the environment's page, with its launch link


@docker_test
def test_the_hub_stays_up_when_its_service_cannot_start(tmp_path, hub_settings):
    """The issue as users met it: a service database that cannot be opened
    made the service exit, JupyterHub exited, and its proxy answered 404."""
    prefix = tmp_path / "tljh"
    (prefix / "state").mkdir(parents=True)
    (prefix / "state" / "tljh-repo2docker.sqlite").write_bytes(b"not a database" * 300)
    settings = {**hub_settings, "service_port": free_port()}
    process = HubProcess(prefix, settings, token=secrets.token_hex(16))
    process.wait_service = lambda deadline: None  # it will not answer 403: it is degraded
    process.start()
    try:

        def degraded_answer():
            try:
                r = requests.get(process.service_url + "/api/v1/environments", timeout=5)
            except requests.ConnectionError:
                return None
            return r if r.status_code == 503 else None

        r = wait_for(degraded_answer, timeout=30)
        assert r is not None, process.log_tail()
        assert "database cannot be opened" in r.json()["message"]
        time.sleep(2)
        assert process.proc.poll() is None, "the hub must stay up"
        assert requests.get(process.url + "/hub/api", timeout=10).status_code == 200
        assert requests.get(process.url + "/hub/login", timeout=10).status_code == 200
    finally:
        process.stop()
