"""Run repo2docker as a subprocess: stream its JSON log lines, allow cancel.

The child runs in its own process group so that cancelling kills repo2docker
and everything it started (docker buildx, git) together.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LogLine:
    phase: str
    message: str


def parse_log_line(raw: str) -> LogLine:
    """One line of ``repo2docker --json-logs`` output; plain text passes through."""
    raw = raw.rstrip("\n")
    try:
        data = json.loads(raw)
    except ValueError:
        return LogLine("building", raw + "\n")
    if not isinstance(data, dict):
        return LogLine("building", raw + "\n")
    message = data.get("message")
    if not isinstance(message, str):
        message = "" if message is None else str(message)
    phase = data.get("phase")
    return LogLine(phase if isinstance(phase, str) else "building", message)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that have not exited yet (zombies excluded)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and ")"
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return members


async def wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Until every process of the group has exited (SIGKILL is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while live_group_members(pgid) and loop.time() < deadline:
        kill_group(pgid, signal.SIGKILL)
        await asyncio.sleep(0.02)


async def run_logged(
    argv: list[str],
    on_line: Callable[[LogLine], None],
    *,
    env: dict[str, str] | None = None,
    grace: float = 5.0,
    on_spawn: Callable[[int], None] | None = None,
) -> int:
    """Run ``argv``, call ``on_line`` for each output line, return the exit code.

    Cancelling the awaiting task sends SIGTERM to the process group, then
    SIGKILL after ``grace`` seconds, and re-raises CancelledError.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
        limit=1024 * 1024,
    )
    if on_spawn is not None:
        on_spawn(proc.pid)
    try:
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than the limit: skip its rest
                raw = b"(log line too long, cut)\n"
            if not raw:
                break
            on_line(parse_log_line(raw.decode(errors="replace")))
        return await proc.wait()
    except BaseException:
        # cancelled, or on_line failed: never leave repo2docker running
        kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except asyncio.TimeoutError:
            pass
        kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        await wait_group_gone(proc.pid)
        raise
