"""Admission control (a few servers start at once, the others wait in order),
the spawn figures' pure parts, and a cancelled readiness check that logs
nothing (the hub's "Exception after Future was cancelled" tracebacks)."""

import asyncio
import json
import logging
import socket

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tljh_repo2docker import admission, spawnmetrics
from tljh_repo2docker.spawner import fetch_quietly


def test_waiting_message():
    assert admission.waiting_message(1) == "1 server is starting before yours"
    assert admission.waiting_message(7) == "7 servers are starting before yours"


def test_admission_deadline_keeps_time_for_the_start():
    assert admission.admission_deadline(120) == 90  # 30 s kept for the start
    assert admission.admission_deadline(40) == 20  # never less than half
    assert admission.admission_deadline(0) == 0


async def _run_storm(limit: int, n: int):
    gate = admission.Gate(limit)
    admitted, most, reports = [], 0, {}

    async def one(i: int):
        nonlocal most
        reports[i] = []
        await gate.acquire(reports[i].append)
        admitted.append(i)
        most = max(most, gate.active)
        await asyncio.sleep(0.01)
        gate.release()

    tasks = []
    for i in range(n):
        tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.sleep(0)  # they arrive in this order
    await asyncio.gather(*tasks)
    return gate, admitted, most, reports


def test_gate_limits_and_keeps_order():
    gate, admitted, most, reports = asyncio.run(_run_storm(2, 6))
    assert most == 2
    assert admitted == list(range(6))
    assert gate.active == 0 and gate.waiting == 0
    # the first two never wait; the last one sees the servers ahead go down
    assert reports[0] == [] and reports[1] == []
    assert reports[2] == [2]
    # (reports coalesce when two places free in the same moment)
    assert reports[5][0] == 5
    assert reports[5] == sorted(set(reports[5]), reverse=True)


def test_positions_go_down_one_by_one():
    async def scenario():
        gate = admission.Gate(2)
        await gate.acquire()
        await gate.acquire()
        seen = []
        others = [asyncio.ensure_future(gate.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        last = asyncio.ensure_future(gate.acquire(seen.append))
        await asyncio.sleep(0)
        for _ in range(3):
            gate.release()
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.wait_for(last, 1)
        await asyncio.gather(*others)
        assert seen == [4, 3, 2]
        assert gate.active == 2 and gate.waiting == 0

    asyncio.run(scenario())


def test_no_limit():
    gate, admitted, most, reports = asyncio.run(_run_storm(0, 5))
    assert most == 5 and all(r == [] for r in reports.values())


def test_cancelled_waiter_leaves_the_queue():
    async def scenario():
        gate = admission.Gate(1)
        await gate.acquire()
        seen = []
        first = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(gate.acquire(seen.append))
        await asyncio.sleep(0)
        assert gate.waiting == 2 and seen == [2]
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0)
        assert gate.waiting == 1 and seen == [2, 1]
        gate.release()
        await second
        assert gate.active == 1 and gate.waiting == 0
        gate.release()
        assert gate.active == 0

    asyncio.run(scenario())


def test_place_granted_then_cancelled_passes_on():
    async def scenario():
        gate = admission.Gate(1)
        await gate.acquire()
        first = asyncio.ensure_future(gate.acquire())
        second = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        gate.release()  # handed to first, which is cancelled before it runs
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)
        assert gate.active == 1 and gate.waiting == 0

    asyncio.run(scenario())


def test_waiting_too_long_times_out_and_leaves():
    async def scenario():
        gate = admission.Gate(1)
        await gate.acquire()
        with pytest.raises(admission.AdmissionTimeout) as e:
            await gate.acquire(timeout=0.05)
        assert e.value.args[0] == 1
        assert gate.waiting == 0 and gate.active == 1

    asyncio.run(scenario())


# --- figures ---------------------------------------------------------------------
def test_environment_labels_are_bounded():
    labels = spawnmetrics.EnvironmentLabels(limit=2)
    assert [labels.label(n) for n in ("a", "b", "c", "a", None)] == [
        "a",
        "b",
        spawnmetrics.OTHER,
        "a",
        spawnmetrics.OTHER,
    ]


def test_outcomes_and_refusal_reasons():
    assert spawnmetrics.outcome_of(None) == "success"
    assert spawnmetrics.outcome_of(asyncio.CancelledError()) == "timeout"
    assert spawnmetrics.outcome_of(RuntimeError(), 504) == "timeout"
    assert spawnmetrics.outcome_of(RuntimeError(), 400) == "refused"
    assert spawnmetrics.outcome_of(RuntimeError(), 503) == "refused"
    assert spawnmetrics.outcome_of(RuntimeError(), 500) == "failure"
    assert spawnmetrics.outcome_of(RuntimeError()) == "failure"
    assert spawnmetrics.refusal_reason(400) == "invalid_options"
    assert spawnmetrics.refusal_reason(410) == "image_gone"
    assert spawnmetrics.refusal_reason(503, "busy") == "busy"
    assert spawnmetrics.refusal_reason(418, "made up") == "other"


def test_records_rotate_and_read_back(tmp_path):
    path = str(tmp_path / "spawns.jsonl")
    for i in range(30):
        line = spawnmetrics.record_line(
            user=f"u{i}",
            server="",
            environment="env",
            outcome="success",
            seconds=i,
            queued=0,
            when=1000 + i,
        )
        spawnmetrics.append_record(path, line, max_bytes=1000)
    with open(path, "a") as f:
        f.write("not json\n")
    records = spawnmetrics.read_records(path, since=1020)
    assert sorted(r["user"] for r in records) == [f"u{i}" for i in range(20, 30)]
    assert (tmp_path / "spawns.jsonl.1").exists()
    # only one older file is kept: the first records are gone
    assert min(r["time"] for r in spawnmetrics.read_records(path, 0)) > 1000
    assert json.loads(line)["seconds"] == 29


# --- a cancelled readiness check -------------------------------------------------------
def test_cancelled_readiness_check_logs_nothing(caplog):
    """JupyterHub cancels start() at its start_timeout; a readiness request
    then in flight must not log "Exception after Future was cancelled". The
    plain fetch (what the spawner did) shows that this test sees the log."""

    async def cancel_in_flight(fetch, port: int):
        request = HTTPRequest(f"http://127.0.0.1:{port}/", request_timeout=0.3)
        task = asyncio.ensure_future(fetch(AsyncHTTPClient(), request))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)  # the request times out meanwhile

    def plain(client, request):
        return client.fetch(request)

    # a server that accepts connections and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        caplog.set_level(logging.ERROR, logger="tornado.application")
        asyncio.run(cancel_in_flight(plain, port))
        assert "Exception after Future was cancelled" in caplog.text
        caplog.clear()
        asyncio.run(cancel_in_flight(fetch_quietly, port))
        assert caplog.text == ""
