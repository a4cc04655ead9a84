"""Unit tests for tljh_repo2docker.runner: JSON log lines, a streamed subprocess, cancel.

run_logged runs tiny real Python subprocesses; no Docker or repo2docker involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import textwrap
import time

import pytest

from tljh_repo2docker import runner
from tljh_repo2docker.runner import LogLine

# --- parse_log_line -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('{"phase": "building", "message": "Step 1/5\\n"}\n', LogLine("building", "Step 1/5\n")),
        ('{"phase": "fetching", "message": "Cloning"}', LogLine("fetching", "Cloning")),
        (
            '{"message": "Picked Git content provider.\\n", "phase": "fetching"}\n',
            LogLine("fetching", "Picked Git content provider.\n"),
        ),
        (
            '{"phase": "failed", "message": "Error during build"}',
            LogLine("failed", "Error during build"),
        ),
        ('{"phase": "built", "message": "", "imageName": "x"}', LogLine("built", "")),
        ('{"message": "no phase\\n"}', LogLine("building", "no phase\n")),
        ('{"phase": 3, "message": "bad phase"}', LogLine("building", "bad phase")),
        ('{"phase": null, "message": "null phase"}', LogLine("building", "null phase")),
        ('{"phase": "building"}', LogLine("building", "")),
        ('{"phase": "building", "message": null}', LogLine("building", "")),
        ('{"phase": "building", "message": 42}', LogLine("building", "42")),
        ('{"phase": "building", "message": ["a", 1]}', LogLine("building", "['a', 1]")),
        ("{}", LogLine("building", "")),
        (
            '{"message": "<script>alert(1)</script>"}',
            LogLine("building", "<script>alert(1)</script>"),
        ),
        ('{"message": "caf\\u00e9 \\u2713"}', LogLine("building", "café ✓")),
    ],
)
def test_parse_log_line_json(raw, expected):
    assert runner.parse_log_line(raw) == expected


@pytest.mark.parametrize(
    "raw, message",
    [
        ("Step 1/5 : FROM ubuntu\n", "Step 1/5 : FROM ubuntu\n"),
        ("no newline", "no newline\n"),
        ("", "\n"),
        ("\n", "\n"),
        ("{not json\n", "{not json\n"),
        ('{"phase": "failed", "message": "cut', '{"phase": "failed", "message": "cut\n'),
        ("Traceback (most recent call last):\n", "Traceback (most recent call last):\n"),
    ],
)
def test_parse_log_line_plain_text(raw, message):
    assert runner.parse_log_line(raw) == LogLine("building", message)


@pytest.mark.parametrize("raw", ["[1, 2]", "42", '"a string"', "null", "true", "3.5"])
def test_parse_log_line_json_not_a_dict(raw):
    assert runner.parse_log_line(raw + "\n") == LogLine("building", raw + "\n")


def test_parse_log_line_only_strips_the_newline():
    assert runner.parse_log_line("  indented\n").message == "  indented\n"


def test_parse_log_line_huge_line():
    raw = json.dumps({"phase": "building", "message": "x" * 100_000}) + "\n"
    assert runner.parse_log_line(raw) == LogLine("building", "x" * 100_000)


# --- helpers for run_logged ---------------------------------------------------


def python(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


def run(argv, **kwargs):
    lines = []
    code = asyncio.run(runner.run_logged(argv, lines.append, **kwargs))
    return code, lines


def pid_alive(pid):
    """True for a running process; a zombie (killed, not yet reaped) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_dead(pids, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.02)
    return [p for p in pids if pid_alive(p)]


def kill_leftovers(pids):
    for pid in pids:
        if pid and pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# A child that starts a grandchild `sleep 1000` in its process group, reports both pids
# in a JSON log line ("pids <child> <grandchild>") and then waits forever.
SPAWNER = """
import json, os, signal, subprocess, time
if {ignore_term}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild
grandchild = subprocess.Popen(["sleep", "1000"])
message = f"pids {{os.getpid()}} {{grandchild.pid}}"
print(json.dumps({{"phase": "building", "message": message}}), flush=True)
while True:
    time.sleep(1)
"""


def spawner(ignore_term=False):
    return python(SPAWNER.format(ignore_term=ignore_term))


class PidCatcher:
    """on_line callback that records the pids SPAWNER reports."""

    def __init__(self):
        self.pids = []
        self.lines = []
        self.started = asyncio.Event()

    def __call__(self, line):
        self.lines.append(line)
        if line.message.startswith("pids "):
            self.pids = [int(p) for p in line.message.split()[1:]]
            self.started.set()


async def start_then_cancel(catcher, argv, **kwargs):
    """Run argv until it reported its pids, cancel; return seconds from cancel to done."""
    task = asyncio.create_task(runner.run_logged(argv, catcher, **kwargs))
    await asyncio.wait_for(catcher.started.wait(), 10)
    assert all(pid_alive(p) for p in catcher.pids)
    start = time.monotonic()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    seconds = time.monotonic() - start
    if not done:
        kill_leftovers(catcher.pids)  # so that the test fails instead of hanging
        with contextlib.suppress(BaseException):
            await task
        pytest.fail("cancelling run_logged did not finish within 10 s")
    with pytest.raises(asyncio.CancelledError):
        task.result()
    return seconds


# --- run_logged -----------------------------------------------------------------


def test_run_logged_streams_lines_and_returns_exit_code():
    code, lines = run(
        python(
            """
            import json, sys
            print(json.dumps({"phase": "fetching", "message": "Cloning\\n"}), flush=True)
            print(json.dumps({"phase": "building", "message": "Step 1/2\\n"}), flush=True)
            print("plain text", flush=True)
            print(json.dumps([1, 2]), flush=True)
            sys.stderr.write("from stderr\\n"); sys.stderr.flush()
            print(json.dumps({"phase": "failed", "message": "boom"}), flush=True)
            sys.exit(3)
            """
        )
    )
    assert code == 3
    assert lines == [
        LogLine("fetching", "Cloning\n"),
        LogLine("building", "Step 1/2\n"),
        LogLine("building", "plain text\n"),
        LogLine("building", "[1, 2]\n"),
        LogLine("building", "from stderr\n"),
        LogLine("failed", "boom"),
    ]


def test_run_logged_success_and_no_output():
    assert run(python("pass")) == (0, [])


def test_run_logged_last_line_without_newline():
    code, lines = run(python("import sys; sys.stdout.write('partial')"))
    assert code == 0
    assert lines == [LogLine("building", "partial\n")]


def test_run_logged_exit_code_of_a_signal():
    code, _ = run(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert code == -signal.SIGKILL


def test_run_logged_passes_env():
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "R2D_TEST_VALUE": "x y"}
    code, lines = run(
        python("import os; print(os.environ.get('R2D_TEST_VALUE'), 'HOME' in os.environ)"),
        env=env,
    )
    assert code == 0
    assert lines == [LogLine("building", "x y False\n")]


def test_run_logged_no_stdin():
    code, lines = run(python("import sys; print(repr(sys.stdin.read()))"))
    assert code == 0
    assert lines == [LogLine("building", "''\n")]


def test_run_logged_invalid_utf8_is_replaced():
    code, lines = run(python("import sys; sys.stdout.buffer.write(b'bad \\xff byte\\n')"))
    assert code == 0
    assert lines == [LogLine("building", "bad \ufffd byte\n")]


def test_run_logged_survives_a_line_over_the_limit():
    code, lines = run(
        python(
            """
            import sys
            print("before", flush=True)
            sys.stdout.write("x" * 3_000_000 + "\\n")
            print("after", flush=True)
            """
        )
    )
    assert code == 0
    assert lines[0] == LogLine("building", "before\n")
    assert lines[-1] == LogLine("building", "after\n")
    assert LogLine("building", "(log line too long, cut)\n") in lines
    assert all(len(line.message) <= 1024 * 1024 + 1 for line in lines)


def test_run_logged_many_lines_in_order():
    code, lines = run(python("for i in range(2000): print(i)"))
    assert code == 0
    assert [line.message for line in lines] == [f"{i}\n" for i in range(2000)]


def test_run_logged_missing_program():
    with pytest.raises(FileNotFoundError):
        run(["/nonexistent/repo2docker-does-not-exist"])


def test_run_logged_child_runs_in_its_own_session():
    code, lines = run(
        python("import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())")
    )
    assert code == 0
    assert lines == [LogLine("building", "True True\n")]


def test_cancel_kills_the_whole_process_group():
    catcher = PidCatcher()
    try:
        seconds = asyncio.run(start_then_cancel(catcher, spawner()))
        assert len(catcher.pids) == 2
        assert wait_dead(catcher.pids) == []
        assert seconds < 3  # SIGTERM was enough; no need to wait for the grace period
    finally:
        kill_leftovers(catcher.pids)


def test_cancel_kills_with_sigkill_after_grace():
    catcher = PidCatcher()
    try:
        seconds = asyncio.run(start_then_cancel(catcher, spawner(ignore_term=True), grace=0.3))
        assert len(catcher.pids) == 2
        assert wait_dead(catcher.pids) == []
        assert 0.25 <= seconds < 3
    finally:
        kill_leftovers(catcher.pids)


def test_cancel_reaps_the_child():
    catcher = PidCatcher()
    try:
        asyncio.run(start_then_cancel(catcher, spawner()))
        child = catcher.pids[0]
        # run_logged waited for it: no zombie left behind by us.
        assert not os.path.exists(f"/proc/{child}")
    finally:
        kill_leftovers(catcher.pids)


def test_cancel_after_exit_is_harmless():
    async def main():
        lines = []
        task = asyncio.create_task(runner.run_logged(python("print('done')"), lines.append))
        code = await task
        task.cancel()  # already done: nothing to kill, nothing raised
        return code, lines

    assert asyncio.run(main()) == (0, [LogLine("building", "done\n")])


def test_kill_group_of_a_gone_process_is_harmless():
    async def main():
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await proc.wait()
        return proc.pid

    pid = asyncio.run(main())
    runner.kill_group(pid)  # no exception
    runner.kill_group(pid, signal.SIGTERM)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_callback_error_does_not_leave_processes_running():
    catcher = PidCatcher()

    def on_line(line):
        catcher(line)
        if catcher.pids:
            raise RuntimeError("log store failed")

    async def main():
        try:
            await runner.run_logged(spawner(), on_line)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the callback's error was swallowed")
        # the grandchild is what matters: nothing else will ever kill it
        survivors = wait_dead(catcher.pids[1:], timeout=1)
        # Clean up while the loop still runs, so that the leaked subprocess transport
        # is finalised here and not after the loop has closed.
        kill_leftovers(catcher.pids)
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0)
        return survivors

    try:
        assert asyncio.run(main()) == []
    finally:
        kill_leftovers(catcher.pids)


def test_on_spawn_gets_the_child_pid():
    spawned = []

    async def main():
        catcher = PidCatcher()
        task = asyncio.create_task(runner.run_logged(spawner(), catcher, on_spawn=spawned.append))
        await asyncio.wait_for(catcher.started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return catcher.pids

    pids = asyncio.run(main())
    try:
        assert spawned == [pids[0]]
    finally:
        kill_leftovers(pids)


def test_live_group_members_sees_this_process_and_not_others():
    import os

    from tljh_repo2docker.runner import live_group_members

    assert os.getpid() in live_group_members(os.getpgrp())
    assert live_group_members(2**22 + 7) == []
