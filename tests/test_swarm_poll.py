"""How the swarm spawner decides whether a server still runs (poll), from
what the manager says about its task and the task's node. The real swarm
(a worker leaving) is in tests/swarm/test_swarm_hub.py; here each answer
the manager can give, without one."""

from __future__ import annotations

import asyncio

import docker.errors

from tljh_repo2docker.swarmspawner import NODE_DOWN_GRACE, Repo2DockerSwarmSpawner


def task(task_id="t1", state="running", node="n1", created="2026-12-01T10:00:00.1Z"):
    return {"ID": task_id, "NodeID": node, "CreatedAt": created, "Status": {"State": state}}


def node(state="ready", hostname="worker1"):
    return {"Status": {"State": state}, "Description": {"Hostname": hostname}}


def spawner_with(tasks, nodes, started=None):
    spawner = Repo2DockerSwarmSpawner()
    spawner.object_id = "service-1"
    if started is not None:
        spawner._task = started

    async def listed():
        return tasks

    async def call(method, *args, **kwargs):
        assert method == "inspect_node", method
        if args[0] not in nodes:
            raise docker.errors.NotFound("no such node")
        return nodes[args[0]]

    spawner._tasks = listed
    spawner.docker = call
    return spawner


def poll(spawner):
    return asyncio.run(spawner.poll())


def test_a_task_running_on_a_ready_node_runs():
    spawner = spawner_with([task()], {"n1": node()}, started=task())
    assert poll(spawner) is None
    assert not getattr(spawner, "stopped_because", "")


def test_after_a_hub_restart_the_task_is_judged_by_its_node_alone():
    assert poll(spawner_with([task()], {"n1": node()})) is None


def test_a_node_that_left_or_is_gone_stops_the_server_with_a_reason():
    for nodes in ({"n1": node("down")}, {}):
        spawner = spawner_with([task()], nodes, started=task())
        assert poll(spawner) is None  # once may be a hiccup
        assert poll(spawner) is None  # and so is twice within the grace
        spawner._node_down_since -= NODE_DOWN_GRACE  # as if the hub polled again later
        assert poll(spawner) is not None
        assert "(worker1)" in spawner.stopped_because or not nodes
        assert "left the hub's swarm" in spawner.stopped_because


def test_a_node_back_before_the_second_look_keeps_the_server():
    nodes = {"n1": node("down")}
    spawner = spawner_with([task()], nodes, started=task())
    assert poll(spawner) is None
    nodes["n1"] = node("ready")
    assert poll(spawner) is None
    spawner._node_down_since = None
    nodes["n1"] = node("down")
    assert poll(spawner) is None  # a new hiccup starts a new grace
    assert not getattr(spawner, "stopped_because", "")


def test_after_a_hub_restart_a_replaced_task_is_still_seen(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(
        Repo2DockerSwarmSpawner, "user", SimpleNamespace(name="ann", id=1), raising=False
    )
    before = spawner_with([task()], {"n1": node()}, started=task())
    state = before.get_state()
    assert state["tljh_repo2docker_task"] == "t1"
    moved = task("t2", node="n1", created="2026-12-01T10:05:00Z")
    after = spawner_with([task(), moved], {"n1": node()})
    after.load_state(state)
    assert poll(after) == "task replaced"
    after.clear_state()
    assert "tljh_repo2docker_task" not in after.get_state()


def test_a_node_the_manager_is_still_unsure_of_keeps_the_server():
    assert poll(spawner_with([task()], {"n1": node("unknown")}, started=task())) is None


def test_a_replaced_task_stops_the_server():
    moved = task("t2", node="n2", created="2026-12-01T10:05:00Z")
    spawner = spawner_with([task(), moved], {"n1": node(), "n2": node()}, started=task())
    assert poll(spawner) == "task replaced"
    assert "moved it to another machine" in spawner.stopped_because


def test_an_ended_task_or_no_task_is_stopped_without_blame_on_a_node():
    spawner = spawner_with([task(state="failed")], {"n1": node()}, started=task())
    assert poll(spawner) is not None
    assert not getattr(spawner, "stopped_because", "")
    assert poll(spawner_with([], {})) == 0


def test_service_names_stay_within_swarms_limit():
    from tljh_repo2docker.swarmspawner import service_name_within

    short = "jupyter-hub-ann"
    assert service_name_within(short) == short
    long = "jupyter-test-675bd964-admin--git-course-repo0-course-113801da-and-more"
    made = service_name_within(long)
    assert len(made) == 63 and made.startswith("jupyter-test-675bd964-admin--git-course")
    assert made != service_name_within(long + "x")  # distinct names stay distinct
    assert service_name_within(long) == made  # and stable


def test_a_spawners_service_name_is_within_the_limit(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(
        Repo2DockerSwarmSpawner, "user", SimpleNamespace(name="a" * 40, id=1), raising=False
    )
    monkeypatch.setattr(
        Repo2DockerSwarmSpawner, "name", "git-course-repo0-course-113801da", raising=False
    )
    spawner = Repo2DockerSwarmSpawner()
    assert len(spawner.object_name) == 63, spawner.object_name
    assert spawner.object_name.startswith("jupyter-" + "a" * 40)
