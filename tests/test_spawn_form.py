"""The server picker: rendering, escaping, versions, privacy, form parsing
(no Docker: the catalogue is given)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from tljh_repo2docker.labels import ImageInfo
from tljh_repo2docker.spawner import (
    Repo2DockerSpawner,
    SpawnError,
    ready_poll_delay,
    status_check_interval,
)


def image(env, commit, built_at, display=None, owner="", visibility="public", mem=None):
    return ImageInfo(
        image=f"tljh-r2d/{env}:{commit[:12]}",
        image_id="sha256:" + commit,
        environment=env,
        display_name=display or env,
        repo="https://example.org/r",
        ref="main",
        commit=commit,
        mem_limit=mem,
        built_at=built_at,
        owner=owner,
        visibility=visibility,
    )


IMAGES = [
    image("course", "a" * 40, "2026-01-01T00:00:00Z", display="Course <b>2026</b>", mem=2**31),
    image("course", "b" * 40, "2026-02-01T00:00:00Z", display="Course <b>2026</b>", mem=2**31),
    image("secret", "c" * 40, "2026-01-01T00:00:00Z", owner="alice", visibility="private"),
    image("physics", "d" * 40, "2026-01-01T00:00:00Z", owner="carol", visibility="groups:physics"),
]


class FakeCatalogue:
    def __init__(self, images):
        self._images = images

    async def images(self, fresh=False):
        return self._images

    async def environments(self, fresh=False):
        from tljh_repo2docker.labels import latest_per_environment

        return latest_per_environment(self._images)

    async def find(self, environment=None, image=None):
        if environment is not None:
            return next(
                (i for i in await self.environments() if i.environment == environment), None
            )
        return next((i for i in self._images if i.image == image), None)

    async def find_version(self, environment, commit):
        return next(
            (
                i
                for i in self._images
                if i.environment == environment and i.commit.startswith(commit)
            ),
            None,
        )

    def invalidate(self):
        pass


def spawner_for(name, groups=(), admin=False, monkeypatch=None):
    spawner = Repo2DockerSpawner()
    user = SimpleNamespace(
        name=name, groups=[SimpleNamespace(name=g) for g in groups], admin=admin, url="/"
    )
    monkeypatch.setattr(Repo2DockerSpawner, "user", user, raising=False)
    monkeypatch.setattr(Repo2DockerSpawner, "catalogue", FakeCatalogue(IMAGES))
    return spawner


def render(spawner):
    return asyncio.run(Repo2DockerSpawner.render_options_form(spawner))


def test_form_lists_newest_build_with_versions_escaped(monkeypatch):
    html = render(spawner_for("bob", monkeypatch=monkeypatch))
    assert 'value="course"' in html
    assert "Course &lt;b&gt;2026&lt;/b&gt;" in html and "<b>2026" not in html
    assert "latest (bbbbbbbbbbbb)" in html  # the newest build is the default
    assert f'value="{"a" * 40}"' in html  # the older one can be pinned
    assert "2G memory" in html


def test_why_the_last_server_stopped_is_said_once_escaped(monkeypatch):
    spawner = spawner_for("bob", monkeypatch=monkeypatch)
    assert 'id="r2d-last-stop"' not in render(spawner)
    spawner.stopped_because = "Your last server stopped: node <w1> left."
    html = render(spawner)
    assert html.count('id="r2d-last-stop"') == 1
    assert "node &lt;w1&gt; left." in html and "<w1>" not in html


def test_why_the_last_server_stopped_outlives_the_spawner(monkeypatch):
    """The hub drops a stopped server's spawner and makes a new one from its
    saved state: the reason must be in that state, and only a string."""
    spawner = spawner_for("bob", monkeypatch=monkeypatch)
    spawner.stopped_because = "Your last server stopped: its machine left."
    spawner.clear_state()  # what the hub does on a stop, before saving the state
    state = spawner.get_state()
    fresh = Repo2DockerSpawner()
    fresh.load_state(state)
    assert fresh.stopped_because == "Your last server stopped: its machine left."
    assert 'id="r2d-last-stop"' in render(fresh)
    fresh.load_state({**state, "tljh_repo2docker_stopped_because": {"x": 1}})
    assert fresh.stopped_because == ""
    assert "tljh_repo2docker_stopped_because" not in fresh.get_state()


def test_private_and_group_environments_only_for_those_allowed(monkeypatch):
    bob = render(spawner_for("bob", monkeypatch=monkeypatch))
    assert 'value="secret"' not in bob and 'value="physics"' not in bob
    alice = render(spawner_for("alice", groups=["physics"], monkeypatch=monkeypatch))
    assert 'value="secret"' in alice and 'value="physics"' in alice
    admin = render(spawner_for("root", admin=True, monkeypatch=monkeypatch))
    assert 'value="secret"' in admin


def test_form_data_to_options():
    to_options = Repo2DockerSpawner.form_to_options
    assert to_options({"environment": ["course"], "version-course": ["latest"]}) == {
        "environment": "course"
    }
    assert to_options(
        {"environment": ["course"], "version-course": ["a" * 40], "version-x": ["b" * 40]}
    ) == {"environment": "course", "version": "a" * 40}


@pytest.mark.parametrize(
    "user, options, image",
    [
        ("bob", {"environment": "course"}, "tljh-r2d/course:bbbbbbbbbbbb"),
        ("bob", {"environment": "course", "version": "aaaaaaa"}, "tljh-r2d/course:aaaaaaaaaaaa"),
        ("bob", {"image": "tljh-r2d/course:aaaaaaaaaaaa"}, "tljh-r2d/course:aaaaaaaaaaaa"),
        ("alice", {"environment": "secret"}, "tljh-r2d/secret:cccccccccccc"),
    ],
)
def test_choices_resolve_to_images(monkeypatch, user, options, image):
    spawner = spawner_for(
        user, groups=["physics"] if user == "alice" else (), monkeypatch=monkeypatch
    )
    assert asyncio.run(spawner.resolve_choice(options)).image == image


@pytest.mark.parametrize(
    "options, message",
    [
        ({"environment": "secret"}, "is not an environment"),  # private: as if missing
        ({"image": "tljh-r2d/secret:cccccccccccc"}, "is not an environment"),
        ({"environment": "physics"}, "is not an environment"),
        ({"environment": "course", "version": "ffffffff"}, "is not an environment"),
        ({"environment": "course", "version": "../x"}, "'version' must be"),
        ({"environment": 3}, "must be a string"),
        ("course", "must be a JSON object"),
    ],
)
def test_refused_choices(monkeypatch, options, message):
    spawner = spawner_for("bob", monkeypatch=monkeypatch)
    with pytest.raises(SpawnError) as e:
        asyncio.run(spawner.resolve_choice(options))
    assert e.value.status_code == 400
    assert message in e.value.jupyterhub_message
    available = e.value.jupyterhub_message.partition("Available:")[2]
    assert "secret" not in available and "physics" not in available


@pytest.mark.parametrize("value", ["yes", 1, None, [True], {"a": 1}])
def test_whole_home_must_be_a_boolean(monkeypatch, value):
    spawner = spawner_for("bob", monkeypatch=monkeypatch)
    options = {"environment": "course", "project": "course", "whole_home": value}
    with pytest.raises(SpawnError) as e:
        asyncio.run(spawner.resolve_choice(options))
    assert e.value.status_code == 400
    assert "'whole_home' must be true or false" in e.value.jupyterhub_message


# --- readiness polling: cheap when many servers start at once ---------------------


def schedule(starting, checks=60, first=0.01, maximum=0.5):
    return [ready_poll_delay(n, starting, first, maximum) for n in range(checks)]


def test_a_lone_spawn_is_checked_every_few_milliseconds():
    delays = schedule(starting=1)
    assert delays[0] == 0.01
    assert max(delays) <= 0.02  # ready within ~20 ms of answering, however long it takes


def test_checks_back_off_and_are_shared_when_many_servers_start():
    for starting in (2, 5, 20, 100):
        delays = schedule(starting)
        assert delays[0] == 0.01  # a fast server is still seen at once
        assert delays == sorted(delays)  # never faster again
        assert delays[-1] == min(0.5, 0.02 * starting)
    # all 20 servers together: at most ~50 checks a second once backed off,
    # where a fixed 10 ms interval made 2000
    assert 20 / schedule(20)[-1] <= 50


def test_a_crashing_lone_start_is_seen_within_half_a_second():
    assert status_check_interval(1) == status_check_interval(0) == 0.5


def test_state_checks_are_shared_when_many_servers_start():
    looks_per_second = {n: n / status_check_interval(n) for n in (1, 4, 8, 20, 50, 500)}
    # up to 4 at once: each as often as a lone one; beyond: a fixed total of 8/s
    assert looks_per_second[4] == 8
    assert looks_per_second[8] == looks_per_second[20] == 8
    # however many start, nobody waits more than 5 s to learn theirs crashed
    assert status_check_interval(10_000) == 5.0
    assert looks_per_second[500] == 100


def test_the_delay_stays_within_its_bounds():
    for attempt in (-3, 0, 1, 10, 1000, 10**6):  # a lone spawn checks ~3000 times a minute
        for starting in (0, 1, 7, 10_000):
            delay = ready_poll_delay(attempt, starting, 0.01, 0.5)
            assert 0.01 <= delay <= 0.5


def test_the_catalogue_never_serves_a_listing_from_long_ago(monkeypatch):
    """Stale-while-revalidate keeps busy pickers fast, but after a quiet spell
    the first picker asks Docker first: a listing older than ``max_stale`` is
    never shown (before, it was, until the next reload)."""
    import asyncio

    from tljh_repo2docker import catalogue as catalogue_module

    fetched = []
    cat = catalogue_module.Catalogue("h", max_age=0.5, max_stale=5)

    async def fake_fetch():
        fetched.append(now[0])
        cat._images = [f"listing at {now[0]}"]
        cat._fetched_at = now[0]
        return cat._images

    now = [100.0]
    monkeypatch.setattr(catalogue_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(cat, "_fetch", fake_fetch)

    async def scenario():
        assert await cat.images() == ["listing at 100.0"]
        now[0] = 101.0  # a second later: served at once, refreshed behind
        assert await cat.images() == ["listing at 100.0"]
        await asyncio.sleep(0)
        now[0] = 200.0  # after a quiet spell: fresh before it answers
        assert await cat.images() == ["listing at 200.0"]

    asyncio.run(scenario())
    assert fetched[0] == 100.0 and fetched[-1] == 200.0
