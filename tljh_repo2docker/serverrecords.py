"""Named servers that were never more than a refused start.

JupyterHub creates a named server's record before its spawner starts. When the
spawner refuses the start (no such environment, a private one, bad options),
the record stays, and it counts toward ``named_server_limit_per_user``: a few
mistyped launches and a user can start nothing. The spawner forgets such a
record once the hub has finished with the failed start, exactly as the hub's
own "delete server" does, but only when the server never ran (its state
carries no sign of a start that succeeded) and nothing runs in it now.
"""

from __future__ import annotations

import asyncio

# Key in the spawner's saved state: set once a start succeeded, kept on stop.
RAN_KEY = "tljh_r2d_ran"


def is_forgettable(name: str, ran: bool, active: bool, pending) -> bool:
    """Only a named server that never ran and is idle now."""
    return bool(name) and not ran and not active and not pending


async def forget_refused_server(spawner, wait: float = 10.0, interval: float = 0.1):
    """Remove ``spawner``'s named-server record after a refused first start.

    Runs as a task: the hub is still handling the failure when the spawner
    raises, so this waits until the spawner is neither pending nor active.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while spawner.pending or spawner.active:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    user = spawner.user
    name = spawner.name
    if not is_forgettable(name, getattr(spawner, "_ran", False), spawner.active, spawner.pending):
        return False
    if user.spawners.get(name) is not spawner or name not in user.orm_spawners:
        return False  # replaced or removed meanwhile
    db = spawner.db
    await user._delete_spawner(spawner)
    db.delete(spawner.orm_spawner)
    user.spawners.pop(name, None)
    db.commit()
    spawner.log.info("Forgot %s: its first start was refused", spawner._log_name)
    return True
