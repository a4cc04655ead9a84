"""The catalogue: which images may be started, read from Docker labels.

Parsing is in ``labels.py``; where the images are listed from is an image
store (``imagestore.py``: the local engine by default, or a registry); this
module is the cache in front of it.
Listing is served from memory and refreshed in the background once the cache
is older than ``max_age`` (stale-while-revalidate): forms stay fast with many
environments and a new image shows up within about ``max_age`` plus one
Docker round trip. It needs only the Docker engine, not the service.

On top of the timers, a watcher of Docker's image events (``imageevents.py``)
forgets the cache on every build, delete or relabel, in whichever process
it happened, so the next listing after a change is fetched, not served.

What an admin changes after a build (display name, limits, sharing, the
current version) comes from the service's database when one is given
(``envrecords.py``): a registry's images cannot be relabelled.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiodocker

from . import imageevents, labels
from .envrecords import EnvironmentRecords, overlay
from .imagestore import DockerImageStore, ImageStore, StoreUnavailable
from .labels import ImageInfo

log = logging.getLogger(__name__)

# The name callers already catch: it covers a registry store that does not
# answer as well as the local engine.
DockerUnavailable = StoreUnavailable


class Catalogue:
    def __init__(
        self,
        hub_name: str,
        max_age: float = 0.5,
        docker_url: str | None = None,
        max_stale: float = 5.0,
        watch_events: bool = True,
        store: ImageStore | None = None,
        records: EnvironmentRecords | None = None,
    ):
        self.hub_name = hub_name
        self.records = records
        # (listing, records, their overlay) of the last call
        self._overlaid: tuple | None = None
        self.max_age = max_age
        # A listing older than this is never served: after a quiet spell the
        # first picker would otherwise show the catalogue of long ago (a new
        # environment missing, a shared one gone) until the next reload.
        self.max_stale = max(max_stale, max_age)
        self._docker_url = docker_url
        self._docker: aiodocker.Docker | None = None
        self._images: list[ImageInfo] | None = None
        self._fetched_at = 0.0
        self._refresh: asyncio.Task | None = None
        # bumped by invalidate(): a fetch that was under way during a change
        # must not store its (older) answer as fresh
        self._generation = 0
        # The timers stay even with the watcher connected: events can be
        # missed (an image built by hand with BuildKit is silent on Docker
        # 20.10; nothing is heard while reconnecting), and one listing per
        # max_age, only while pickers are being rendered, is cheap.
        self.watch_events = watch_events
        self._watcher: imageevents.ImageEventWatcher | None = None
        # The default store lists through self.docker, which the service
        # replaces with its shared client.
        if store is None:
            store = DockerImageStore(hub_name, client=lambda: self.docker)
        self.store: ImageStore = store

    @property
    def is_local(self) -> bool:
        """Whether the images are the local engine's (Docker events apply)."""
        return isinstance(self.store, DockerImageStore)

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._docker_url)
        return self._docker

    @property
    def events_connected(self) -> bool:
        """Whether Docker's image events are being heard right now."""
        return self._watcher is not None and self._watcher.connected

    def _watch(self):
        # Started lazily from the first listing: the hub builds its catalogue
        # at config time, before any event loop runs. A registry's changes are
        # not the local engine's events: timers only.
        if not self.watch_events or not self.is_local:
            return
        try:
            if self._watcher is None:
                self._watcher = imageevents.ImageEventWatcher(
                    on_change=self.invalidate,
                    relevant=lambda event: imageevents.is_relevant(
                        event, self.hub_name, self._images or ()
                    ),
                    connect=imageevents.docker_connect(self._docker_url),
                )
            self._watcher.start()
        except Exception:
            log.exception("could not watch Docker image events; timers only")

    async def close(self):
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await watcher.close()
        await self.store.close()
        if self.records is not None:
            self.records.close()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def _fetch(self) -> list[ImageInfo]:
        generation = self._generation
        summaries = await self.store.list_images()
        images = []
        for summary in summaries:
            images.extend(labels.parse_image(summary, self.hub_name))
        if generation == self._generation:
            self._images = images
            self._fetched_at = time.monotonic()
        return images

    def invalidate(self):
        """Forget the cache (after a build or delete in this process): the
        next listing asks Docker before it answers. Also called by the image
        event watcher on every change Docker reports."""
        self._generation += 1
        self._images = None
        self._fetched_at = 0.0
        if self.records is not None:
            self.records.invalidate()

    async def images(self, fresh: bool = False) -> list[ImageInfo]:
        """Every labelled image of this hub (all builds of all environments),
        with the database's values where it has them."""
        images = await self._labelled(fresh)
        if self.records is None:
            return images
        if fresh:
            self.records.invalidate()
        records = await self.records.get()
        # the same listing and records as last time (most pickers): reuse
        last = self._overlaid
        if last is None or last[0] is not images or last[1] is not records:
            self._overlaid = last = (images, records, overlay(images, records))
        return last[2]

    async def _labelled(self, fresh: bool) -> list[ImageInfo]:
        self._watch()
        age = time.monotonic() - self._fetched_at
        if self._images is None or fresh or age > self.max_stale:
            return await self._fetch()
        if age > self.max_age:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self._fetch())
                self._refresh.add_done_callback(_ignore_errors)
        return self._images

    async def environments(self, fresh: bool = False) -> list[ImageInfo]:
        """The newest build of each environment: what a spawn form offers."""
        return labels.latest_per_environment(await self.images(fresh=fresh))

    async def find(self, *, environment: str | None = None, image: str | None = None):
        """The image for an environment name or an exact tag, or None.

        Looks at a fresh listing when the cached one has no match, so an
        image built a moment ago can be started at once.
        """
        for fresh in (False, True):
            if environment is not None:
                for info in await self.environments(fresh=fresh):
                    if info.environment == environment:
                        return info
            elif image is not None:
                for info in await self.images(fresh=fresh):
                    if info.image == image:
                        return info
        return None

    async def find_version(self, environment: str, commit: str):
        """The image of ``environment`` built at ``commit`` (a prefix), or None."""
        for fresh in (False, True):
            for info in await self.images(fresh=fresh):
                if info.environment == environment and info.commit.startswith(commit):
                    return info
        return None


def _ignore_errors(task: asyncio.Task):
    # A failed background refresh keeps the old listing; the next
    # foreground fetch reports the error.
    if not task.cancelled():
        task.exception()
