"""The catalogue follows Docker's image events, not only its timers.

The Docker tests give the catalogue timers of ten minutes, so only an event
can make a change show: without the watcher every one of them fails. The
changes are made the way the other process (the service, the CLI, an admin)
makes them, never through this catalogue.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import subprocess
import sys
import tarfile
import time

import aiodocker
import pytest

from tljh_repo2docker import imageevents, labels
from tljh_repo2docker.catalogue import Catalogue, DockerUnavailable
from tljh_repo2docker.labels import ImageInfo
from tljh_repo2docker.service import dockerops

from .dockerfixtures import (
    ROOT,
    SINGLEUSER_IMAGE,
    docker,
    dump_container_logs,
    make_git_repo,
    remove_hub_objects,
)
from .hubprocess import HubProcess, hub_settings_for

PREFIX = "tljh-r2d-evtest/"
LONG = 600.0  # seconds: the timers never fire within a test
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def info(image="r/demo:1", image_id="sha256:aa"):
    return ImageInfo(
        image=image, image_id=image_id, environment="demo", display_name="Demo", repo="", ref="",
        commit=COMMIT,
    )  # fmt: skip


def event(action, name="x:1", image_id="sha256:bb", **attributes):
    return {
        "Type": "image",
        "Action": action,
        "Actor": {"ID": image_id, "Attributes": {"name": name, **attributes}},
    }


# --- which events matter (pure) ----------------------------------------------


def test_events_of_this_hubs_images_matter():
    for action in ("tag", "untag", "import", "load", "pull"):
        assert imageevents.is_relevant(event(action, **{labels.HUB: "h1"}), "h1", [])


def test_events_of_other_images_do_not():
    assert not imageevents.is_relevant(event("tag", **{labels.HUB: "h2"}), "h1", [info()])
    assert not imageevents.is_relevant(event("tag"), "h1", [info()])
    assert not imageevents.is_relevant(event("delete"), "h1", [info()])
    assert not imageevents.is_relevant("garbage", "h1", [info()])


def test_label_less_events_about_a_listed_image_matter():
    # a delete carries no labels; a foreign image may take over one of our tags
    assert imageevents.is_relevant(event("delete", image_id="sha256:aa"), "h1", [info()])
    assert imageevents.is_relevant(event("tag", name="r/demo:1"), "h1", [info()])


def test_read_only_actions_never_matter():
    for action in ("push", "save"):
        assert not imageevents.is_relevant(event(action, **{labels.HUB: "h1"}), "h1", [info()])


# --- backoff (pure) ----------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum():
    backoff = imageevents.Backoff(initial=0.5, maximum=4, stable_after=10)
    assert [backoff.after(None) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    # a connection that dropped at once does not reset it
    assert backoff.after(1.0) == 4


def test_backoff_resets_after_a_stable_connection():
    backoff = imageevents.Backoff(initial=0.5, maximum=4, stable_after=10)
    for _ in range(5):
        backoff.after(None)
    assert backoff.after(10.0) == 0.5
    assert backoff.after(None) == 1


# --- the watcher with a fake event source --------------------------------------


class FakeStream:
    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    async def get(self):
        return await self.queue.get()

    async def close(self):
        self.closed = True


class FakeEngine:
    """Refuses the first ``down`` connections, then hands out streams."""

    def __init__(self, down: int):
        self.down = down
        self.attempts = 0
        self.since: list[int] = []
        self.streams: list[FakeStream] = []

    async def connect(self, since: int):
        self.attempts += 1
        self.since.append(since)
        if self.attempts <= self.down:
            raise aiodocker.DockerError(900, "Cannot connect to Docker Engine")
        stream = FakeStream()
        self.streams.append(stream)
        return stream


class RecordingBackoff(imageevents.Backoff):
    def __init__(self):
        super().__init__(initial=0.001, maximum=0.004, stable_after=3600)
        self.delays: list[float] = []

    def after(self, connected_for):
        delay = super().after(connected_for)
        self.delays.append(delay)
        return delay


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_watcher_reconnects_with_backoff_and_reports_changes():
    async def scenario():
        engine = FakeEngine(down=4)
        backoff = RecordingBackoff()
        changes = []
        watcher = imageevents.ImageEventWatcher(
            on_change=lambda: changes.append(1),
            relevant=lambda e: e.get("hub") == "mine",
            connect=engine.connect,
            backoff=backoff,
        )
        watcher.start()
        watcher.start()  # idempotent in the same loop
        await until(lambda: watcher.connected)
        # absent engine: growing waits, no change reported, nothing raised
        assert engine.attempts == 5
        assert backoff.delays == [0.001, 0.002, 0.004, 0.004]
        # connecting counts as a change: what happened meanwhile was not heard
        assert len(changes) == 1
        stream = engine.streams[0]
        await stream.queue.put({"hub": "other"})
        await stream.queue.put({"hub": "mine"})
        await until(lambda: len(changes) == 2)
        await asyncio.sleep(0.02)
        assert len(changes) == 2  # the other hub's event changed nothing
        # Docker restarts: the stream ends, the watcher connects again
        await stream.queue.put(None)
        await until(lambda: len(engine.streams) == 2 and watcher.connected)
        assert stream.closed
        assert len(changes) == 3
        assert all(abs(since - time.time()) < 5 for since in engine.since)
        await watcher.close()
        assert not watcher.running and not watcher.connected
        assert engine.streams[1].closed
        await watcher.close()  # twice is fine

    asyncio.run(scenario())


def test_watcher_survives_a_failing_handler_and_bad_events():
    async def scenario():
        engine = FakeEngine(down=0)
        calls = []

        def on_change():
            calls.append(1)
            raise RuntimeError("handler bug")

        def relevant(e):
            if e == "bad":
                raise ValueError("cannot judge")
            return True

        watcher = imageevents.ImageEventWatcher(on_change, relevant, engine.connect)
        watcher.start()
        await until(lambda: watcher.connected)
        await engine.streams[0].queue.put("bad")  # unsure counts as a change
        await engine.streams[0].queue.put({"any": 1})
        await until(lambda: len(calls) == 3)
        assert watcher.running and watcher.connected
        await watcher.close()

    asyncio.run(scenario())


class StuckStream(FakeStream):
    """A stream whose close never finishes (an engine that hangs up badly)."""

    async def close(self):
        self.closed = True
        await asyncio.Event().wait()


def test_a_stream_that_never_closes_cannot_hold_up_shutdown(monkeypatch):
    monkeypatch.setattr(imageevents, "CLOSE_TIMEOUT", 0.2)
    stream = StuckStream()

    async def connect(since):
        return stream

    async def scenario():
        watcher = imageevents.ImageEventWatcher(lambda: None, lambda e: True, connect)
        watcher.start()
        await until(lambda: watcher.connected)
        started = time.monotonic()
        await watcher.close()
        return time.monotonic() - started

    began = time.monotonic()
    took = asyncio.run(scenario())  # asyncio.run also waits for what it cancels
    assert stream.closed
    assert took < 2
    assert time.monotonic() - began < 3


def test_a_cancel_lost_while_connecting_still_stops_the_watcher(monkeypatch):
    """Python 3.11's asyncio.wait_for can swallow a cancel that arrives as its
    inner call finishes: the connection is made, the cancel seems gone. The
    watcher must still stop (it once waited forever in _pump: a CI run of this session:
    `tljh-repo2docker list` hung for 600 s)."""
    monkeypatch.setattr(imageevents, "CLOSE_TIMEOUT", 3.0)
    streams = []
    connecting = asyncio.Event

    async def scenario():
        entered = connecting()

        async def connect(since):
            entered.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # swallowed, as the race does
            stream = FakeStream()
            streams.append(stream)
            return stream

        watcher = imageevents.ImageEventWatcher(lambda: None, lambda e: True, connect)
        watcher.start()
        await entered.wait()
        started = time.monotonic()
        await watcher.close()
        return time.monotonic() - started, watcher

    took, watcher = asyncio.run(scenario())
    assert took < 1, f"close took {took:.1f} s"
    assert not watcher.running
    assert streams and streams[0].closed


# --- the catalogue's cache ------------------------------------------------------


class SlowImages:
    """images.list that waits for a go-ahead: a fetch under way during a change."""

    def __init__(self):
        self.go = asyncio.Event()
        self.calls = 0

    async def list(self, filters):
        self.calls += 1
        await self.go.wait()
        return []


def test_a_fetch_under_way_during_a_change_is_not_kept_as_fresh():
    async def scenario():
        catalogue = Catalogue("h1", max_age=LONG, max_stale=LONG, watch_events=False)
        fake = SlowImages()
        catalogue._docker = type("FakeDocker", (), {"images": fake})()
        fetch = asyncio.ensure_future(catalogue.images())
        await until(lambda: fake.calls == 1)
        catalogue.invalidate()  # an event arrives while Docker answers
        fake.go.set()
        assert await fetch == []
        await catalogue.images()
        assert fake.calls == 2  # the older answer was not served from cache

    asyncio.run(scenario())


def test_without_docker_the_catalogue_still_answers_as_before(tmp_path):
    async def scenario():
        catalogue = Catalogue("h1", docker_url=f"unix://{tmp_path}/no.sock")
        for _ in range(2):
            with pytest.raises(DockerUnavailable):
                await catalogue.images()
        await asyncio.sleep(0.05)
        assert catalogue._watcher.running and not catalogue.events_connected
        await catalogue.close()
        assert catalogue._watcher is None

    asyncio.run(scenario())


# --- real Docker ---------------------------------------------------------------


@pytest.fixture(scope="module")
def events_hub(docker_ready, hub_name):
    try:
        yield hub_name
    finally:
        remove_hub_objects(hub_name)
        for ref in docker("images", "-q", "--filter", f"reference={PREFIX}*").split():
            docker("rmi", "-f", ref, check=False)


def image_labels(hub, environment, **overrides):
    made = labels.make_labels(
        hub=hub,
        environment=environment,
        display_name=environment,
        repo="https://example.org/r.git",
        ref="main",
        commit=COMMIT,
        mem_limit=None,
        cpu_limit=None,
        built_by="admin",
        built_at="2026-01-01T00:00:00Z",
    )
    made.update(overrides)
    return made


async def api_build(client: aiodocker.Docker, tag: str, image_labels_: dict):
    """A label-only image through the API (the classic builder, as relabel)."""
    dockerfile = f"FROM {SINGLEUSER_IMAGE}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo("Dockerfile")
        entry.size = len(dockerfile)
        tar.addfile(entry, io.BytesIO(dockerfile))
    buf.seek(0)
    await client.images.build(
        fileobj=buf, encoding="identity", tag=tag, rm=True, pull=False, labels=image_labels_
    )


async def watching(hub: str) -> Catalogue:
    catalogue = Catalogue(hub, max_age=LONG, max_stale=LONG)
    await catalogue.images()
    deadline = time.monotonic() + 10
    while not catalogue.events_connected:
        assert time.monotonic() < deadline, "the watcher never connected to Docker"
        await asyncio.sleep(0.05)
    return catalogue


async def eventually(catalogue: Catalogue, check, timeout=5.0):
    """Poll the listing (as picker renders would) until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        images = await catalogue.images()
        if check(images):
            return images
        assert time.monotonic() < deadline, f"listing did not change: {images}"
        await asyncio.sleep(0.1)


def by_tag(images):
    return {i.image: i for i in images}


@pytest.mark.docker
def test_a_new_tag_shows_without_waiting_for_the_timer(events_hub):
    base, tag = f"{PREFIX}{events_hub}-a:base", f"{PREFIX}{events_hub}-a:tagged"

    async def scenario():
        async with aiodocker.Docker() as client:
            await api_build(client, base, image_labels(events_hub, "ev-a"))
        catalogue = await watching(events_hub)
        try:
            await catalogue.images()
            assert tag not in by_tag(await catalogue.images())
            docker("tag", base, tag)  # another process
            await eventually(catalogue, lambda images: tag in by_tag(images))
        finally:
            await catalogue.close()

    asyncio.run(scenario())


@pytest.mark.docker
def test_a_buildkit_build_shows_once_announced(events_hub):
    # repo2docker builds with `docker buildx`; run_build then announces the tag
    tag = f"{PREFIX}{events_hub}-b:1"
    args = []
    for key, value in image_labels(events_hub, "ev-b").items():
        args += ["--label", f"{key}={value}"]

    async def scenario():
        catalogue = await watching(events_hub)
        try:
            await catalogue.images()
            subprocess.run(
                ["docker", "buildx", "build", "-q", "--load", *args, "-t", tag, "-"],
                input=f"FROM {SINGLEUSER_IMAGE}\n",
                text=True,
                check=True,
                capture_output=True,
            )
            async with aiodocker.Docker() as client:
                await imageevents.announce(client, tag)
            await eventually(catalogue, lambda images: tag in by_tag(images))
        finally:
            await catalogue.close()

    asyncio.run(scenario())


@pytest.mark.docker
def test_a_sharing_change_shows(events_hub):
    tag = f"{PREFIX}{events_hub}-c:1"

    async def scenario():
        async with aiodocker.Docker() as client:
            await api_build(client, tag, image_labels(events_hub, "ev-c", **{labels.OWNER: "ann"}))
            catalogue = await watching(events_hub)
            try:
                listed = await eventually(catalogue, lambda images: tag in by_tag(images))
                assert by_tag(listed)[tag].visibility == "public"
                # what the service's sharing form does, in a client of its own
                await dockerops.relabel(client, tag, {labels.VISIBILITY: "private"})
                await eventually(
                    catalogue,
                    lambda images: (
                        tag in by_tag(images) and by_tag(images)[tag].visibility == "private"
                    ),
                )
            finally:
                await catalogue.close()

    asyncio.run(scenario())


@pytest.mark.docker
def test_a_removed_image_disappears(events_hub):
    tag = f"{PREFIX}{events_hub}-d:1"

    async def scenario():
        async with aiodocker.Docker() as client:
            await api_build(client, tag, image_labels(events_hub, "ev-d"))
        catalogue = await watching(events_hub)
        try:
            await eventually(catalogue, lambda images: tag in by_tag(images))
            docker("rmi", tag)  # another process
            await eventually(catalogue, lambda images: tag not in by_tag(images))
        finally:
            await catalogue.close()

    asyncio.run(scenario())


@pytest.mark.docker
def test_another_hubs_images_cause_no_refetch(events_hub):
    other = f"{PREFIX}{events_hub}-e:other"

    async def scenario():
        async with aiodocker.Docker() as client:
            await api_build(client, other, image_labels(events_hub + "-x", "ev-e"))
        # The watcher asks the engine to replay the last second or two (the
        # gap while it connects): wait them out, or an earlier test's delete
        # of one of this hub's images is replayed and rightly refetches.
        await asyncio.sleep(2.2)
        catalogue = await watching(events_hub)
        try:
            await catalogue.images()  # after the fetch that connecting asks for
            calls = 0
            real_fetch = catalogue._fetch

            async def counting_fetch():
                nonlocal calls
                calls += 1
                return await real_fetch()

            catalogue._fetch = counting_fetch
            await catalogue.images()
            docker("tag", other, other + "2")
            docker("rmi", other + "2")
            await asyncio.sleep(1.0)
            await catalogue.images()
            assert calls == 0
        finally:
            await catalogue.close()
            docker("rmi", "-f", other, check=False)

    asyncio.run(scenario())


class SocketProxy:
    """A unix socket in front of Docker's: stopping it is, to a client, Docker
    going away (live streams cut, new connections refused)."""

    def __init__(self, path, target="/var/run/docker.sock"):
        self.path, self.target = str(path), target
        self.server = None
        self.writers: set = set()

    async def start(self):
        self.server = await asyncio.start_unix_server(self._handle, self.path)

    async def stop(self):
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.docker
def test_after_docker_comes_back_the_missed_changes_show(events_hub, tmp_path):
    base, tag = f"{PREFIX}{events_hub}-f:base", f"{PREFIX}{events_hub}-f:while-away"

    async def scenario():
        async with aiodocker.Docker() as client:
            await api_build(client, base, image_labels(events_hub, "ev-f"))
        proxy = SocketProxy(tmp_path / "docker.sock")
        await proxy.start()
        catalogue = Catalogue(
            events_hub, max_age=LONG, max_stale=LONG, docker_url=f"unix://{proxy.path}"
        )
        try:
            await catalogue.images()  # starts the watcher
            await until(lambda: catalogue.events_connected, timeout=10)
            await eventually(catalogue, lambda images: base in by_tag(images))
            # connecting replays the last second's events (the build above)
            await asyncio.sleep(1.0)
            await catalogue.images()
            await proxy.stop()
            await until(lambda: not catalogue.events_connected, timeout=10)
            docker("tag", base, tag)  # while the watcher cannot hear it
            # longer than the replay window that reconnecting asks for, so
            # only "connecting counts as a change" can make the tag show
            await asyncio.sleep(3.0)
            assert tag not in by_tag(await catalogue.images())  # served from cache
            await proxy.start()
            await until(lambda: catalogue.events_connected, timeout=15)
            await eventually(catalogue, lambda images: tag in by_tag(images))
            # and it hears events again
            docker("rmi", tag)
            await eventually(catalogue, lambda images: tag not in by_tag(images))
        finally:
            await catalogue.close()
            await proxy.stop()

    asyncio.run(scenario())


# --- the hub's picker, changed by the service (another process) ------------------

# The project's hub config with the picker's timers at ten minutes: only the
# watcher can make the hub's spawn form follow the service.
SLOW_PICKER_CONFIG = """\
load_subconfig({dev_config!r})  # noqa: F821
c.Repo2DockerSpawner.catalogue_max_age = 600.0  # noqa: F821
"""


@pytest.fixture(scope="module")
def slow_picker_hub(docker_ready, tmp_path_factory, request):
    hub_name = f"test-{secrets.token_hex(4)}"
    prefix = tmp_path_factory.mktemp("tljh-events")
    config = prefix / "jupyterhub_config.py"
    config.write_text(
        SLOW_PICKER_CONFIG.format(dev_config=str(ROOT / "dev" / "jupyterhub_config.py"))
    )
    settings = hub_settings_for(hub_name, str(tmp_path_factory.mktemp("homes")))
    process = HubProcess(prefix, settings, token=secrets.token_hex(16), config_file=config)
    try:
        yield process.start()
    finally:
        if getattr(request.node, "_failed", False):
            sys.stderr.write(f"\n=== hub log ===\n{process.log_tail(200)}\n")
            sys.stderr.write(f"=== containers ===\n{dump_container_logs(hub_name)}\n")
        process.stop()
        remove_hub_objects(hub_name)


def picker_shows(session, hub, name: str) -> bool:
    return f'value="{name}"' in session.get(hub.url + "/hub/spawn").text


def until_picker(session, hub, name: str, shown: bool, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while picker_shows(session, hub, name) != shown:
        assert time.monotonic() < deadline, f"{name} {'not ' if shown else ''}in the picker"
        time.sleep(0.2)


@pytest.mark.docker
def test_the_hubs_picker_follows_builds_sharing_and_deletes(slow_picker_hub, tmp_path):
    hub = slow_picker_hub
    repo = make_git_repo(tmp_path / "env", marker=hub.settings["hub_name"])
    admin = hub.user_token("admin")
    hub.user_token("reader")  # makes the hub user
    reader = hub.login("reader")
    admin_session = hub.login("admin")
    assert not picker_shows(reader, hub, "evdemo")  # the picker has its listing now

    # a real repo2docker build in the service
    build = hub.build_environment("evdemo", f"file://{repo}", "v1", admin)
    assert build["status"] == "succeeded", build
    until_picker(reader, hub, "evdemo", shown=True)

    # sharing: private to its owner (the admin) hides it from the reader
    r = hub.service_api("PATCH", "/environments/evdemo", admin, json={"visibility": "private"})
    assert r.status_code == 200, r.text
    until_picker(reader, hub, "evdemo", shown=False)
    assert picker_shows(admin_session, hub, "evdemo")

    r = hub.service_api("DELETE", "/environments/evdemo", admin)
    assert r.status_code == 204, r.text
    until_picker(admin_session, hub, "evdemo", shown=False)
