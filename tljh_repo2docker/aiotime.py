"""Time limits on awaits that keep a cancel.

Before Python 3.12, ``asyncio.wait_for`` can lose a cancel that arrives
just as the awaited call finishes: the caller goes on as if never asked to
stop (an image event watcher once waited forever that way). Where
``asyncio.timeout`` exists (3.11+) it is used instead.
"""

from __future__ import annotations

import asyncio


def cancel_requested() -> bool:
    """Whether the running task has been asked to stop (known from 3.11)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling and cancelling())


async def within(seconds: float, awaitable):
    """``awaitable`` with a time limit (asyncio.TimeoutError when it passes)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable
