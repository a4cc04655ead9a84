"""The container build backend (issue 12): repo2docker runs in a labelled
container of the builder image, so that cancel and the clean-up after a
killed service go through the Docker API, not ``/proc`` of one host.

Real Docker, the real builder image (made from the local base image, cached
by its tag), real repo2docker builds of local Dockerfile repositories, and
the service's BuildManager on a real SQLite database.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time

import aiodocker
import pytest

from tljh_repo2docker import builderimage, buildrunners, labels
from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.catalogue import Catalogue
from tljh_repo2docker.runner import LogLine
from tljh_repo2docker.service import store
from tljh_repo2docker.service.buildlog import BuildLog
from tljh_repo2docker.service.builds import BuildManager, Credentials

from .dockerfixtures import commit_change, docker, make_git_repo, remove_hub_objects
from .hubprocess import OFFLINE_R2D_CONFIG
from .swarm.cluster import BASE_IMAGE

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def builder(docker_ready) -> str:
    """The builder image, made before any test times a build (about 30 s
    the first time on a machine, then a lookup)."""

    async def make() -> str:
        async with aiodocker.Docker() as client:
            return await builderimage.ensure(client, BASE_IMAGE)

    return asyncio.run(make())


@pytest.fixture
def hub(builder):
    name = f"test-{secrets.token_hex(4)}"
    yield name
    leftovers = docker("ps", "-aq", "--filter", f"label={buildrunners.BUILD_OF}={name}").split()
    if leftovers:
        docker("rm", "-f", *leftovers, check=False)
    remove_hub_objects(name)


@pytest.fixture
def repo(tmp_path, hub):
    return make_git_repo(tmp_path / "env", marker=hub)


def settings_for(hub: str) -> BuildSettings:
    return BuildSettings(
        hub_name=hub,
        image_prefix=f"{hub}/",
        build_backend="container",
        builder_base_image=BASE_IMAGE,
        allow_local_repos=True,
    )


def build_containers(hub: str, all_states: bool = True) -> list[str]:
    flags = ["-a"] if all_states else []
    return docker("ps", "-q", *flags, "--filter", f"label={buildrunners.BUILD_OF}={hub}").split()


def messages(build: store.Build) -> list[str]:
    stored = BuildLog().resume(build.log_head, build.log_tail, build.log_lines)
    return [entry["message"] for _, entry in stored.entries_from(0)]


async def until(predicate, timeout: float = 120, what: str = ""):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.1)


class Harness:
    """A BuildManager with the container backend, as the service makes it."""

    def __init__(self, tmp_path, hub: str, repo):
        self.hub, self.repo = hub, repo
        self.sessions = store.open_store(f"sqlite:///{tmp_path}/builds.sqlite")
        self.settings = settings_for(hub)

    async def __aenter__(self):
        self.docker = aiodocker.Docker()
        self.catalogue = Catalogue(self.hub, watch_events=False)
        self.catalogue._docker = self.docker
        return self

    def manager(self) -> BuildManager:
        return BuildManager(
            self.sessions,
            self.settings,
            self.docker,
            self.catalogue,
            log_flush_interval=0.1,
        )

    def environment(self, db) -> store.Environment:
        env = db.query(store.Environment).filter_by(name="env").one_or_none()
        if env is None:
            env = store.Environment(
                name="env", display_name="Env", repo=f"file://{self.repo}", ref="v1"
            )
            db.add(env)
            db.flush()
        return env

    async def start_slow(self, manager: BuildManager, step: str) -> store.Build:
        """Build ``main`` (whose Dockerfile ends with ``RUN <step>``); return
        once repo2docker is at that step."""
        with self.sessions() as db:
            env = self.environment(db)
            env.ref = "main"
            db.commit()
            build = manager.start(db, env, "admin")
        await until(lambda: step in manager.logs[build.id].text(), what=step)
        return build

    def row(self, build_id: int) -> store.Build:
        with self.sessions() as db:
            return db.get(store.Build, build_id)

    async def __aexit__(self, *exc):
        await self.catalogue.close()
        await self.docker.close()


def test_a_build_runs_in_a_labelled_builder_container_that_is_gone_after(
    docker_ready, tmp_path, hub, repo
):
    async def scenario():
        async with Harness(tmp_path, hub, repo) as h:
            manager = h.manager()
            assert isinstance(manager.runner, buildrunners.ContainerRunner)
            seen: list[dict] = []

            async def watch():
                while True:
                    for cid in build_containers(hub):
                        found = docker("inspect", cid, check=False)  # may be gone already
                        if found:
                            seen.append(json.loads(found)[0])
                    if seen:
                        return
                    await asyncio.sleep(0.05)

            watcher = asyncio.ensure_future(watch())
            with h.sessions() as db:
                build = manager.start(db, h.environment(db), "admin")
            await manager.wait(build.id)
            watcher.cancel()
            done = h.row(build.id)
            assert done.status == store.SUCCEEDED, messages(done)
            assert done.pid is None, "no process of this host stands for the build"
            assert seen, "the build ran in a container labelled for this hub"
            config = seen[0]["Config"]
            assert config["Labels"][buildrunners.BUILD_ID] == str(build.id)
            assert config["Image"].startswith("tljh-repo2docker/builder:")
            assert "repo2docker" in " ".join(config["Cmd"])
            assert seen[0]["HostConfig"]["NetworkMode"] == "host"
            # the local repository is readable in the builder, and only read
            mounts = {m["Target"]: m for m in seen[0]["HostConfig"]["Mounts"]}
            assert mounts[str(repo)]["Source"] == str(repo) and mounts[str(repo)]["ReadOnly"]
            ssh = ["/root/.ssh"] if os.path.isdir(os.path.expanduser("~/.ssh")) else []
            assert set(mounts) == {str(repo), "/var/run/docker.sock", *ssh}, "nothing else"
            image = json.loads(docker("inspect", done.image))[0]
            assert image["Config"]["Labels"][labels.HUB] == hub
            assert image["Config"]["Labels"][labels.COMMIT] == done.commit
            assert any("Built image" in m for m in messages(done))
            assert build_containers(hub) == [], "the builder container is removed"
            await manager.shutdown()

    asyncio.run(scenario())


def test_cancel_stops_the_builder_container_and_keeps_no_image(docker_ready, tmp_path, hub, repo):
    commit_change(repo, "RUN sleep 300")

    async def scenario():
        async with Harness(tmp_path, hub, repo) as h:
            manager = h.manager()
            build = await h.start_slow(manager, "sleep 300")
            assert build_containers(hub, all_states=False), "a builder container runs it"
            assert manager.cancel(build.id)
            await manager.wait(build.id)
            done = h.row(build.id)
            assert done.status == store.CANCELLED
            assert build_containers(hub) == [], "cancel removed the builder container"
            await manager.shutdown()

    asyncio.run(scenario())


def test_a_stopping_service_removes_its_builder_and_queues_the_build_again(
    docker_ready, tmp_path, hub, repo
):
    commit_change(repo, "RUN sleep 301")

    async def scenario():
        async with Harness(tmp_path, hub, repo) as h:
            manager = h.manager()
            build = await h.start_slow(manager, "sleep 301")
            await manager.shutdown()
            stopped = h.row(build.id)
            assert stopped.status == store.QUEUED, "runs again at the next start"
            assert build_containers(hub) == [], "no builder outlives the service's stop"

    asyncio.run(scenario())


def test_a_killed_services_builder_is_removed_and_its_build_runs_again(
    docker_ready, tmp_path, hub, repo
):
    """What a service killed mid-build leaves: a running builder container and
    a row that says ``running``. The next start finds the container through
    the engine by its labels (no pid, no /proc), removes it, and builds again."""

    async def scenario():
        async with Harness(tmp_path, hub, repo) as h:
            image = await h.manager().runner.image()
            with h.sessions() as db:
                env = h.environment(db)
                row = store.Build(
                    environment_id=env.id,
                    ref="v1",
                    requested_by="admin",
                    status=store.RUNNING,
                    trusted=True,
                    resumable=True,
                    started_at=store.utcnow(),
                )
                db.add(row)
                db.commit()
                build_id = row.id
            # the killed service's builder, still running
            name = buildrunners.container_name(hub, str(build_id))
            old = docker(
                "run", "-d", "--name", name,
                "--label", f"{buildrunners.BUILD_OF}={hub}",
                "--label", f"{buildrunners.BUILD_ID}={build_id}",
                "--entrypoint", "sleep", image, "600",
            )  # fmt: skip
            assert build_containers(hub, all_states=False)

            manager = h.manager()
            assert await manager.recover() == (1, 0)
            # before the build runs again (its task has not started yet)
            assert old not in docker("ps", "-aq", "--no-trunc"), "recovery removed it"
            await manager.wait(build_id)
            done = h.row(build_id)
            assert done.status == store.SUCCEEDED, messages(done)
            assert any("service restarted" in m for m in messages(done))
            assert build_containers(hub) == []
            await manager.shutdown()

    asyncio.run(scenario())


def test_credentials_reach_the_builder_on_stdin_never_its_configuration(docker_ready, hub):
    """A private repository's token goes to git in the builder, but
    ``docker inspect`` (which anyone with the socket can run) never shows
    it, and nothing else of the service's environment is passed."""
    token_env = Credentials("alice", "tok-" + secrets.token_hex(8)).git_env()
    secret = token_env["GIT_CONFIG_VALUE_0"]
    env = {**token_env, "JUPYTERHUB_API_TOKEN": "hub-secret", "GIT_TERMINAL_PROMPT": "0"}
    probe = (
        "import os, sys, time;"
        "print(os.environ.get('GIT_CONFIG_VALUE_0'));"
        "print(os.environ.get('JUPYTERHUB_API_TOKEN'));"
        "sys.stdout.flush(); time.sleep(8)"
    )

    async def scenario():
        client = aiodocker.Docker()
        try:
            runner = buildrunners.ContainerRunner(client, hub, BASE_IMAGE)
            lines: list[LogLine] = []
            task = asyncio.ensure_future(
                runner.run(["python", "-c", probe], lines.append, env=env, job="probe")
            )
            await until(
                lambda: any(line.message == "None\n" for line in lines),
                timeout=60,
                what="the probe's output",
            )
            [cid] = build_containers(hub)
            inspected = docker("inspect", cid)
            code = await task
        finally:
            await client.close()
        return code, [line.message.strip() for line in lines], inspected

    code, output, inspected = asyncio.run(scenario())
    assert code == 0
    first = output.index(f"Running repo2docker in the builder container tljh-r2d-build-{hub}-probe")
    assert output[first + 1 : first + 3] == [secret, "None"], (
        "git gets the token; the hub's token stays behind"
    )
    assert secret not in inspected
    assert "hub-secret" not in inspected
    assert build_containers(hub) == []


def test_only_git_and_proxy_settings_reach_the_builder():
    env = {
        "GIT_CONFIG_COUNT": "1",
        "SSH_ASKPASS": "/bin/true",
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "localhost",
        "JUPYTERHUB_API_TOKEN": "x",
        "PATH": "/usr/bin",
        "HOME": "/root",
    }
    assert buildrunners.builder_env(env) == {
        "GIT_CONFIG_COUNT": "1",
        "SSH_ASKPASS": "/bin/true",
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "localhost",
    }


def test_only_a_file_repository_is_mounted():
    assert buildrunners.repo_path("file:///srv/repos/my%20env") == "/srv/repos/my env"
    assert buildrunners.repo_path("FILE:///srv/r/../r2") == "/srv/r2"
    assert buildrunners.repo_path("https://example.org/r.git") == ""


def test_config_files_reach_the_builder_by_content_not_by_mount(docker_ready, hub, tmp_path):
    """The service may see another /tmp than the engine (TLJH's systemd unit):
    a config file is sent, and written at the same path in the builder."""
    config = tmp_path / "private-tmp" / "r2d-config.py"
    config.parent.mkdir()
    config.write_text("c.Repo2Docker.content_providers = []  # sent\n")
    probe = f"print(open({str(config)!r}).read().strip())"

    async def scenario():
        async with aiodocker.Docker() as client:
            runner = buildrunners.ContainerRunner(client, hub, BASE_IMAGE)
            lines: list[LogLine] = []
            code = await runner.run(
                ["python", "-c", probe], lines.append, job="config", files=[str(config)]
            )
            missing: list[LogLine] = []
            code_missing = await runner.run(
                ["python", "-c", "1"], missing.append, job="nofile", files=[str(config) + "x"]
            )
            return code, lines, code_missing, missing

    code, lines, code_missing, missing = asyncio.run(scenario())
    assert code == 0
    assert lines[-1].message == "c.Repo2Docker.content_providers = []  # sent\n"
    assert code_missing != 0 and "cannot read a repo2docker config file" in missing[-1].message
    assert build_containers(hub) == []


def test_the_backend_follows_the_setting_and_the_registry():
    assert BuildSettings().build_runner(None).kind == "process"
    assert BuildSettings(registry="127.0.0.1:5000").build_runner(None).kind == "container"
    assert BuildSettings(build_backend="container").build_runner(None).kind == "container"
    process = BuildSettings(registry="127.0.0.1:5000", build_backend="process")
    assert process.build_runner(None).kind == "process"


def test_the_builder_image_is_made_once_and_then_only_looked_up(docker_ready, monkeypatch):
    reads = []
    real = builderimage.context_files
    monkeypatch.setattr(
        builderimage, "context_files", lambda base: reads.append(base) or real(base)
    )
    monkeypatch.setattr(builderimage, "_tags", {})

    async def twice():
        async with aiodocker.Docker() as client:
            return [await builderimage.ensure(client, BASE_IMAGE) for _ in range(2)]

    first, second = asyncio.run(twice())
    assert first == second
    assert docker("images", "-q", first) != ""
    assert reads == [BASE_IMAGE], "the host's binaries are read once, not per build"


def test_an_admins_ready_made_builder_image_is_used_as_it_is(docker_ready, hub, monkeypatch):
    """``builder_image``: nothing is made; a missing one fails the build
    with the setting's name, never a traceback."""

    async def scenario():
        async with aiodocker.Docker() as client:
            made = await builderimage.ensure(client, BASE_IMAGE)
            monkeypatch.setattr(builderimage, "ensure", None)  # must not be called
            lines: list[LogLine] = []
            given = BuildSettings(hub_name=hub, build_backend="container", builder_image=made)
            code = await given.build_runner(client).run(
                ["python", "-c", "print('ran')"], lines.append, job="given"
            )
            missing = BuildSettings(
                hub_name=hub, build_backend="container", builder_image="no-such/builder:1"
            )
            failed: list[LogLine] = []
            code_missing = await missing.build_runner(client).run(
                ["python", "-c", "print('ran')"], failed.append, job="missing"
            )
        return code, lines, code_missing, failed

    code, lines, code_missing, failed = asyncio.run(scenario())
    assert code == 0 and [line.message for line in lines][-1] == "ran\n"
    assert code_missing != 0
    assert "no-such/builder:1 (repo2docker.builder_image) is not on this Docker engine" in (
        failed[-1].message
    )
    assert build_containers(hub) == []


def test_a_stopped_command_line_build_takes_its_builder_container_with_it(
    docker_ready, tmp_path, hub, repo
):
    """``tljh-repo2docker build`` stopped with SIGTERM (a timeout, systemd)
    ends like Ctrl-C: its builder container is removed, nothing is built."""
    commit_change(repo, "RUN sleep 302")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "repo2docker:\n"
        f"  hub_name: {hub}\n"
        f"  image_prefix: {hub}/\n"
        "  build_backend: container\n"
        f"  builder_base_image: {BASE_IMAGE}\n"
    )
    cli = subprocess.Popen(
        [
            sys.executable, "-m", "tljh_repo2docker", "build", f"file://{repo}",
            "--ref", "main", "--name", "env", "--allow-local-repos",
            "--repo2docker-config", OFFLINE_R2D_CONFIG,
        ],
        env={**os.environ, "TLJH_INSTALL_PREFIX": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not build_containers(hub, all_states=False):
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "no builder container started"
            time.sleep(0.2)
        time.sleep(2)  # into repo2docker's build
        cli.terminate()
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 143, (out, err)
    assert "stopped" in err
    assert build_containers(hub) == [], "the builder container went with the command"
