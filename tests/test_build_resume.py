"""The build queue outlives the service (issue 12): a stopping service puts
its builds back in the queue, a starting one (also after ``kill -9``) runs
them again in order with their logs continued; a build given credentials,
which are never stored, ends ``interrupted``.

In-process, on a real SQLite database made by the service's store; repo2docker
is replaced by a stand-in that holds its slot until released (the real one
runs in tests/test_service_api.py and test_service_degraded.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiodocker
import pytest

from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.buildjob import BuildResult
from tljh_repo2docker.runner import LogLine
from tljh_repo2docker.service import builds as builds_module
from tljh_repo2docker.service import dockerops, store
from tljh_repo2docker.service.buildlog import BuildLog
from tljh_repo2docker.service.builds import BuildManager, Credentials


class StandIn:
    """repo2docker: logs a line, holds the slot until ``release`` is set."""

    def __init__(self):
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, settings, request, on_line, *, slot, on_running, **_):
        async with slot:
            on_running()
            self.started.append(request.name)
            on_line(LogLine("building", f"building {request.name} at {request.ref}\n"))
            await self.release.wait()
        return BuildResult(f"tljh-r2d/{request.name}:0123456789ab", "0" * 40, cached=True)


class Catalogue:
    def invalidate(self):
        pass


@pytest.fixture
def sessions(tmp_path):
    return store.open_store(f"sqlite:///{tmp_path}/builds.sqlite")


@pytest.fixture
def stand_in(monkeypatch):
    fake = StandIn()
    monkeypatch.setattr(builds_module, "run_build", fake)
    return fake


def manager(sessions) -> BuildManager:
    return BuildManager(
        sessions, BuildSettings(), docker=None, catalogue=Catalogue(), log_flush_interval=0.05
    )


def add_env(db, name: str) -> store.Environment:
    env = store.Environment(name=name, display_name=name, repo=f"https://h/{name}", ref="main")
    db.add(env)
    db.flush()
    return env


def row(sessions, build_id: int) -> store.Build:
    with sessions() as db:
        return db.get(store.Build, build_id)


def messages(build: store.Build) -> list[str]:
    stored = BuildLog().resume(build.log_head, build.log_tail, build.log_lines)
    return [entry["message"] for _, entry in stored.entries_from(0)]


async def until(predicate, timeout: float = 5):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_a_stopping_service_queues_its_builds_again_and_the_next_runs_them(sessions, stand_in):
    async def scenario():
        first = manager(sessions)
        with sessions() as db:
            a = first.start(db, add_env(db, "a"), "admin")
            b = first.start(db, add_env(db, "b"), "bob", exempt=False)
            c = first.start(db, add_env(db, "c"), "carol", Credentials("carol", "s3cret"))
        await until(lambda: stand_in.started == ["a"])
        await until(lambda: "building a" in "".join(messages(row(sessions, a.id))))
        await first.shutdown()

        stopped = {b_.id: row(sessions, b_.id) for b_ in (a, b, c)}
        assert stopped[a.id].status == store.QUEUED, "the running build is queued again"
        assert stopped[a.id].started_at is None and stopped[a.id].finished_at is None
        assert "starts again when it is back" in messages(stopped[a.id])[-1]
        assert stopped[b.id].status == store.QUEUED
        assert stopped[c.id].status == store.INTERRUPTED
        assert "credentials are never stored" in stopped[c.id].error
        assert (stopped[a.id].trusted, stopped[b.id].trusted) == (True, False)

        second = manager(sessions)
        assert await second.recover() == (2, 0)
        await until(lambda: stand_in.started == ["a", "a"])
        assert second.position(b.id) == 1, "b keeps its place behind a"
        # the log goes on: what was written before, then the new run
        await until(lambda: messages(row(sessions, a.id)).count("building a at main\n") == 2)
        stand_in.release.set()
        await second.wait(a.id)
        await second.wait(b.id)
        assert stand_in.started == ["a", "a", "b"]
        assert [row(sessions, i).status for i in (a.id, b.id, c.id)] == [
            store.SUCCEEDED,
            store.SUCCEEDED,
            store.INTERRUPTED,
        ]
        # the build's own permissions are kept: an admin's stays trusted
        assert row(sessions, a.id).trusted and not row(sessions, b.id).trusted

    asyncio.run(scenario())


def test_builds_a_killed_process_left_run_again_with_their_logs(sessions, stand_in):
    lines = [{"phase": "building", "message": f"line {n}\n"} for n in range(3)]
    with sessions() as db:
        env = add_env(db, "k")
        running = store.Build(
            environment_id=env.id,
            ref="v1",
            status=store.RUNNING,
            requested_by="admin",
            log_head="\n".join(json.dumps(line) for line in lines),
            log_lines=3,
            pid=None,
        )
        secret = store.Build(
            environment_id=add_env(db, "s").id,
            ref="main",
            status=store.QUEUED,
            requested_by="sam",
            resumable=False,
        )
        db.add_all([running, secret])
        db.commit()
        running_id, secret_id = running.id, secret.id

    async def scenario():
        again = manager(sessions)
        assert await again.recover() == (1, 1)
        await until(lambda: stand_in.started == ["k"])
        live = again.logs[running_id]
        numbered = [(n, e["message"]) for n, e in live.entries_from(0)]
        assert numbered[:4] == [
            (0, "line 0\n"),
            (1, "line 1\n"),
            (2, "line 2\n"),
            (3, "The environments service restarted: this build starts again\n"),
        ]
        assert numbered[4] == (4, "building k at v1\n"), "the build's own ref"
        stand_in.release.set()
        await again.wait(running_id)

    asyncio.run(scenario())
    assert row(sessions, running_id).status == store.SUCCEEDED
    refused = row(sessions, secret_id)
    assert refused.status == store.INTERRUPTED and refused.finished_at is not None
    assert "credentials are never stored" in refused.error
    assert "Interrupted" in messages(refused)[-1]


def test_builds_from_before_the_upgrade_are_not_run_again(tmp_path):
    """Schema 6 adds what a resume needs; a build an older version left
    active cannot have it, so it ends interrupted as before."""
    engine = store.make_engine(f"sqlite:///{tmp_path}/old.sqlite")
    store.migrate(engine, store.MIGRATIONS[:5])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO environments (name, display_name, repo, ref, created_by, created_at,"
            " updated_at) VALUES ('o', 'o', 'https://h/o', 'main', '', '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql(
            'INSERT INTO builds (environment_id, status, ref, "commit", image, cached,'
            " requested_by, created_at, error, log_head, log_tail, log_lines)"
            " VALUES (1, 'running', 'main', '', '', 0, 'admin', '2026-01-01', '', '', '', 0)"
        )
    sessions = store.open_store(f"sqlite:///{tmp_path}/old.sqlite")
    assert row(sessions, 1).resumable is False
    assert asyncio.run(manager(sessions).recover()) == (0, 1)
    assert row(sessions, 1).status == store.INTERRUPTED


def test_a_resumed_log_keeps_its_bounds_and_numbers():
    full = BuildLog(head_size=2, tail_size=3)
    for n in range(10):
        full.append("building", f"line {n}\n")
    again = BuildLog(head_size=2, tail_size=3).resume(*full.stored())
    assert again.entries_from(0) == full.entries_from(0)
    again.append("building", "line 10\n")
    kept = [(n, e["message"]) for n, e in again.entries_from(0)]
    assert kept[:2] == [(0, "line 0\n"), (1, "line 1\n")]
    assert kept[-3:] == [(8, "line 8\n"), (9, "line 9\n"), (10, "line 10\n")]
    # a short log whose head was still open stays open
    short = BuildLog(head_size=5, tail_size=3)
    short.append("building", "one\n")
    resumed = BuildLog(head_size=5, tail_size=3).resume(*short.stored())
    resumed.append("building", "two\n")
    assert [e["message"] for e in resumed.head] == ["one\n", "two\n"]


def test_without_docker_the_builder_containers_cannot_be_looked_for_but_the_queue_goes_on(
    sessions, stand_in, monkeypatch
):
    """With builder containers, recovery asks the engine for a predecessor's
    leftovers. An engine that does not answer must not stop the service
    from starting (it serves 503s with the reason, and its queue waits)."""
    with sessions() as db:
        env = add_env(db, "q")
        db.add(store.Build(environment_id=env.id, ref="v1", status=store.RUNNING, requested_by="a"))
        db.commit()

    # as the service makes its client, on a machine without a Docker socket
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(aiodocker.docker, "_sock_search_paths", [Path("/nonexistent.sock")])

    async def scenario():
        gone = dockerops.LazyDocker()
        try:
            settings = BuildSettings(build_backend="container", builder_base_image="base:x")
            again = BuildManager(sessions, settings, gone, Catalogue(), log_flush_interval=0.05)
            assert again.runner.kind == "container"
            assert await again.recover() == (1, 0)
            await until(lambda: stand_in.started == ["q"])
            stand_in.release.set()
            await again.shutdown()
        finally:
            await gone.close()

    asyncio.run(scenario())
