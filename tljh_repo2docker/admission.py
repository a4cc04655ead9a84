"""Admission control for server starts in one hub process.

Twenty students pressing Start at once on a 2-core machine all compete for
the same CPU: every start gets slower and many miss the start timeout. A few
starts at a time finish sooner, one after another, so at most ``limit``
servers start at once and the others wait in the order they came, told how
many start before them.

``Gate`` is the small asyncio part; the rest is pure.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


class AdmissionTimeout(Exception):
    """A server waited too long for its turn."""


def waiting_message(ahead: int) -> str:
    if ahead == 1:
        return "1 server is starting before yours"
    return f"{ahead} servers are starting before yours"


def admission_deadline(start_timeout: float, ready_reserve: float = 30.0) -> float:
    """Seconds a server may wait for its turn within JupyterHub's
    ``start_timeout`` (which counts the wait too): what is left once the
    start itself has ``ready_reserve`` seconds, or half of ``start_timeout``
    when that is shorter (the wait gets the other half)."""
    start_timeout = max(0.0, float(start_timeout))
    reserve = min(ready_reserve, start_timeout / 2)
    return start_timeout - reserve


class _Waiter:
    __slots__ = ("granted", "moved")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.granted: asyncio.Future = loop.create_future()
        self.moved: asyncio.Future = loop.create_future()


class Gate:
    """At most ``limit`` holders at once (0: no limit); the others wait first
    come, first served. A freed place goes straight to the first waiter, so
    that a late arrival cannot pass the queue."""

    def __init__(self, limit: int = 0):
        self.limit = limit
        self.active = 0
        self._queue: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _ahead(self, waiter: _Waiter) -> int:
        return self.active + self._queue.index(waiter)

    def _notify(self):
        for waiter in self._queue:
            if not waiter.moved.done():
                waiter.moved.set_result(None)

    async def acquire(
        self, report: Callable[[int], None] | None = None, timeout: float | None = None
    ) -> None:
        """Wait for a place; ``report(ahead)`` each time the number of servers
        ahead changes. AdmissionTimeout after ``timeout`` seconds."""
        if self.limit <= 0 or (self.active < self.limit and not self._queue):
            self.active += 1
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop)
        self._queue.append(waiter)
        deadline = None if timeout is None else loop.time() + timeout
        reported = None
        try:
            while not waiter.granted.done():
                ahead = self._ahead(waiter)
                if report is not None and ahead != reported:
                    reported = ahead
                    report(ahead)
                if waiter.moved.done():
                    waiter.moved = loop.create_future()
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise AdmissionTimeout(ahead)
                await asyncio.wait(
                    {waiter.granted, waiter.moved},
                    timeout=left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        except BaseException:
            # cancelled (the hub gave up) or timed out: leave the queue; a
            # place handed over meanwhile goes on to the next waiter
            if waiter.granted.done() and not waiter.granted.cancelled():
                self.release()
            else:
                waiter.granted.cancel()
                if waiter in self._queue:
                    self._queue.remove(waiter)
                self._notify()
            raise

    def release(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.granted.done():
                waiter.granted.set_result(None)  # the place passes on: active unchanged
                self._notify()
                return
        self.active = max(0, self.active - 1)
        self._notify()


_gate: Gate | None = None


def process_gate(limit: int) -> Gate:
    """The one gate of this hub process (the limit is per process)."""
    global _gate
    if _gate is None:
        _gate = Gate(limit)
    _gate.limit = limit
    return _gate
