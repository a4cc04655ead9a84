"""Watch the Docker engine's image events so a catalogue refreshes on change.

The hub and the environments service are separate processes: a build, a
delete or a sharing change in the service cannot call the hub's
``Catalogue.invalidate()``. Both see the same Docker engine, though, and
every one of those changes is an image event there:

- a build ends with ``tag``: the classic builder emits it, and after a
  repo2docker build (BuildKit, silent on Docker 20.10) ``announce`` does;
- a relabel (``dockerops.relabel``: a label-only child image built over the
  same tag) gives ``tag`` on the new image; the old one loses the tag without
  an event, then ``untag``/``delete`` when it is removed;
- a delete gives ``untag`` (still carrying the image's labels) and then
  ``delete`` (which carries no labels).

So the engine is asked for ``type=image`` only and the event is judged here
(``is_relevant``): a server-side label filter would drop label-less
``delete`` events and a tag that a foreign image takes over from ours.

Events can still be missed: an image built with BuildKit by hand is never
announced, and nothing is heard while disconnected. The catalogue's timers stay
the safety net; this only makes the usual case immediate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import aiodocker

from . import labels
from .aiotime import cancel_requested, within

log = logging.getLogger(__name__)

# Image actions that never change what `docker images` lists.
_READ_ONLY_ACTIONS = frozenset({"push", "save"})


def is_relevant(event: dict, hub_name: str, known: Iterable) -> bool:
    """Whether an image event may change the listing of ``hub_name``.

    ``known`` is the cached listing (``ImageInfo`` items): an event about one
    of its tags or image ids matters even without our labels.
    """
    if not isinstance(event, dict):
        return False
    action = str(event.get("Action") or event.get("status") or "")
    if action in _READ_ONLY_ACTIONS:
        return False
    actor = event.get("Actor") if isinstance(event.get("Actor"), dict) else {}
    attributes = actor.get("Attributes") if isinstance(actor.get("Attributes"), dict) else {}
    if attributes.get(labels.HUB) == hub_name:
        return True
    name = attributes.get("name")
    image_id = actor.get("ID") or event.get("id")
    for info in known:
        if name and name == info.image:
            return True
        if image_id and image_id == info.image_id:
            return True
    return False


async def announce(docker, ref: str) -> None:
    """Make Docker emit a ``tag`` event for image ``ref`` (with its labels).

    repo2docker builds with BuildKit (``docker buildx``), whose tagging
    emits no image event on Docker 20.10; tagging the image again under its
    own name does, so every process watching learns of the new build. Never
    raises: a missed announcement only leaves the timers to notice.
    """
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:  # no tag given (a registry port is not one)
        repo, tag = ref, "latest"
    try:
        await docker.images.tag(ref, repo, tag=tag)
    except Exception as e:
        log.warning("could not announce image %s to the catalogues: %s", ref, e)


class Backoff:
    """Delays between reconnection attempts: doubling from ``initial`` up to
    ``maximum``; back to ``initial`` once a connection has stayed up for
    ``stable_after`` seconds (so one restart of Docker costs one short wait,
    while an engine that keeps dropping us is not hammered)."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, stable_after: float = 10.0):
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self._next = initial

    def after(self, connected_for: float | None) -> float:
        """The wait before the next attempt; ``connected_for`` is how long the
        last connection lived (None: it never came up)."""
        if connected_for is not None and connected_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


class EventStream(Protocol):
    async def get(self) -> dict | None:
        """The next event; None once the stream has ended."""

    async def close(self) -> None: ...


Connect = Callable[[int], Awaitable[EventStream]]


class _DockerImageEvents:
    """One connection to the engine's event stream (image events only)."""

    def __init__(self, docker: aiodocker.Docker, subscriber):
        self._docker = docker
        self._subscriber = subscriber

    @classmethod
    async def open(cls, url: str | None, since: int, timeout: float = 5.0) -> _DockerImageEvents:
        docker = aiodocker.Docker(url=url)
        try:
            # a round trip first: an absent engine fails here, not silently
            # inside aiodocker's background task
            await within(timeout, docker.version())
            subscriber = docker.events.subscribe(since=str(since), filters={"type": ["image"]})
        except BaseException:
            await docker.close()
            raise
        return cls(docker, subscriber)

    async def get(self) -> dict | None:
        return await self._subscriber.get()

    async def close(self) -> None:
        task = self._docker.events.task
        try:
            await self._docker.events.stop()
        except Exception:
            # the stream's own failure: the reason we are closing
            log.debug("image event stream ended", exc_info=True)
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn about it
        await self._docker.close()


def docker_connect(url: str | None = None) -> Connect:
    async def connect(since: int) -> EventStream:
        return await _DockerImageEvents.open(url, since)

    return connect


# How long closing may take: a stream or engine that never finishes closing
# must not hold up the process that is shutting the watcher down (an
# asyncio.run() waits for every task it cancels).
CLOSE_TIMEOUT = 5.0


async def _close_quietly(stream) -> None:
    try:
        await within(CLOSE_TIMEOUT, stream.close())
    except (Exception, asyncio.TimeoutError):
        log.debug("closing the image event stream failed", exc_info=True)


class ImageEventWatcher:
    """Calls ``on_change()`` for every relevant image event, reconnecting
    with backoff; ``on_change()`` is also called on each (re)connection,
    since events of the gap were not heard. Never raises to its owner."""

    def __init__(
        self,
        on_change: Callable[[], None],
        relevant: Callable[[dict], bool],
        connect: Connect,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._on_change = on_change
        self._relevant = relevant
        self._connect = connect
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._task: asyncio.Task | None = None
        self.connected = False
        self.connections = 0  # successful connections, for tests and logs

    def start(self) -> None:
        """Start in the running loop (again, if the loop has changed)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._task = loop.create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        task, self._task = self._task, None
        self.connected = False
        if task is None or task.done():
            return
        if task.get_loop() is not asyncio.get_running_loop():
            # started in a loop that is not this one: ask it to stop there
            if not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(task.cancel)
            return
        task.cancel()
        # wait() neither raises the task's own end nor swallows a
        # cancellation of close() itself
        await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if not task.done():
            log.warning("image event watcher did not stop within %s s", CLOSE_TIMEOUT)
            return
        if not task.cancelled() and task.exception() is not None:
            log.debug("image event watcher ended with an error", exc_info=task.exception())

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("image event handler failed")

    async def _run(self) -> None:
        failures = 0
        while True:
            connected_for = None
            try:
                # since: the engine replays what happened while we connected
                stream = await self._connect(int(time.time()) - 1)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                if failures == 1:
                    log.info("no Docker image events (%s); catalogue uses its timers", e)
            else:
                if cancel_requested():
                    # a cancel that arrived as the connection was made (and
                    # that Python 3.11's wait_for can swallow): stop here
                    await _close_quietly(stream)
                    raise asyncio.CancelledError
                failures = 0
                connected_at = self._clock()
                self.connected = True
                self.connections += 1
                self._changed()
                try:
                    await self._pump(stream)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.info("Docker image events stopped (%s); reconnecting", e)
                finally:
                    self.connected = False
                    connected_for = self._clock() - connected_at
                    await _close_quietly(stream)
            await asyncio.sleep(self._backoff.after(connected_for))

    async def _pump(self, stream: EventStream) -> None:
        while True:
            event = await stream.get()
            if event is None:
                return
            try:
                relevant = self._relevant(event)
            except Exception:
                relevant = True  # unsure: a refetch is cheap, a stale picker is not
            if relevant:
                self._changed()
