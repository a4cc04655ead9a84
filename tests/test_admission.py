"""Admission control (a few servers start at once, the others wait in order),
the spawn figures' pure parts, and a cancelled readiness check that logs
nothing (the hub's "Exception after Future was cancelled" tracebacks)."""

import asyncio
import json
import logging
import socket
import time

import pytest

from tljh_repo2docker import admission, spawnmetrics
from tljh_repo2docker.spawnermixin import http_answers


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


# --- the readiness check ------------------------------------------------------------
def serve(handler):
    """A TCP server on a free loopback port running ``handler(reader, writer)``."""

    async def start():
        return await asyncio.start_server(handler, "127.0.0.1", 0)

    return start


async def answers_http(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def accepts_and_closes(reader, writer):
    # what Docker's port proxy does while the server in the container does not listen
    writer.close()


async def never_answers(reader, writer):
    await asyncio.sleep(3600)


def probe(handler, timeout=0.3):
    async def scenario():
        server = await serve(handler)()
        port = server.sockets[0].getsockname()[1]
        try:
            return await http_answers("127.0.0.1", port, "/user/a/", timeout=timeout)
        finally:
            server.close()

    return asyncio.run(scenario())


def test_readiness_is_any_http_answer():
    assert probe(answers_http) is True


def test_a_port_proxy_without_a_server_behind_is_not_ready():
    assert probe(accepts_and_closes) is False


def test_a_silent_server_is_not_ready_once_the_check_times_out():
    started = time.monotonic()
    assert probe(never_answers, timeout=0.3) is False
    assert time.monotonic() - started < 2


def test_nothing_listening_is_not_ready():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert asyncio.run(http_answers("127.0.0.1", port, "/")) is False


@pytest.mark.parametrize("path", ["/a b", "/a\r\nX: y", "relative"])
def test_the_request_path_cannot_inject_a_header(path):
    with pytest.raises(ValueError):
        asyncio.run(http_answers("127.0.0.1", 1, path))


def test_a_cancelled_check_closes_its_connection_and_logs_nothing(caplog):
    """JupyterHub cancels start() at its start_timeout, maybe mid-check."""
    closed = asyncio.Event

    async def scenario():
        gone = closed()

        async def watch(reader, writer):
            await reader.read()  # until the client closes its side
            gone.set()

        server = await asyncio.start_server(watch, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(http_answers("127.0.0.1", port, "/", timeout=5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(gone.wait(), 2)
        server.close()

    caplog.set_level(logging.WARNING)
    asyncio.run(scenario())
    assert "Exception" not in caplog.text
