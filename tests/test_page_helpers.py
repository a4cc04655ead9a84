"""Pure helpers of the service's pages (issue 11): readable times, the error
summary above a failed build's log, the script hash of the pages' CSP, and
the picker's preselection (no Docker, no hub)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import datetime, timezone
from types import SimpleNamespace

from tljh_repo2docker.service import pages
from tljh_repo2docker.spawner import Repo2DockerSpawner

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_relative_times():
    assert pages.relative_time("2026-12-01T11:59:30Z", NOW) == "just now"
    assert pages.relative_time("2026-12-01T11:55:00Z", NOW) == "5 minutes ago"
    assert pages.relative_time("2026-12-01T11:00:00", NOW) == "1 hour ago"  # naive = UTC
    assert pages.relative_time("2026-11-28T12:00:00Z", NOW) == "3 days ago"
    assert pages.relative_time("2026-12-01T14:00:00Z", NOW) == "in 2 hours"
    assert pages.relative_time(None, NOW) == ""
    assert pages.relative_time("not a time", NOW) == "not a time"
    assert pages.absolute_time("2026-12-01T11:55:00Z") == "2026-12-01 11:55 UTC"
    assert pages.duration_text(4.4) == "4 s"
    assert pages.duration_text(185) == "3 min 5 s"
    assert pages.duration_text(3720) == "1 h 2 min"


def test_error_summary_skips_the_long_command_line():
    log = "\n".join(
        ["Step 1/3 : FROM base", "Step 2/3 : RUN pip install nothing-here"]
        + ["ERROR: No matching distribution found for nothing-here"]
        + ["The command '/bin/sh -c pip install nothing-here' returned a non-zero code: 1"]
        + ["#7 0.762 ERROR: the data is missing", "0.762 ERROR: the data is missing", "------"]
        + ["Error during build: Command '['docker', 'buildx', 'build', '--label', 'a=b']' failed"]
        + ["docker buildx build --progress plain --load -t x " + "--build-arg A=b " * 50]
    )
    summary = pages.error_summary(log).splitlines()
    assert summary == [
        "ERROR: No matching distribution found for nothing-here",
        "The command '/bin/sh -c pip install nothing-here' returned a non-zero code: 1",
        "ERROR: the data is missing",  # once, without BuildKit's prefixes
    ]
    # a path with "failed" in it is no error line
    assert pages.error_summary("cloning /tmp/test_failed_build/repo\nfatal: bad ref\n") == (
        "fatal: bad ref"
    )
    # without error-looking lines: the end of the log
    assert pages.error_summary("one\ntwo\nthree\n") == "one\ntwo\nthree"


def test_the_csp_allows_only_the_hubs_inline_script():
    html = '<script src="/a.js"></script><script type="text/javascript">var x = 1;</script>'
    digest = base64.b64encode(hashlib.sha256(b"var x = 1;").digest()).decode()
    assert pages.csp_with_inline_script(html).endswith(f"script-src 'self' 'sha256-{digest}'")
    assert pages.csp_with_inline_script("<p>no script</p>") == pages.CSP
    # a user name cannot end the script it is written into
    assert "<" not in pages.json_in_script("</script><script>alert(1)")


class FakeCatalogue:
    def __init__(self, names):
        self.infos = [
            SimpleNamespace(
                environment=n,
                display_name=n,
                repo="r",
                ref="main",
                commit="a" * 40,
                short_commit="a" * 12,
                mem_limit=None,
                cpu_limit=None,
                owner="",
                visibility="public",
                built_at="2026-01-01T00:00:00Z",
                order_key=(0, n),
            )
            for n in names
        ]

    async def images(self, fresh=False):
        return self.infos


def picker(monkeypatch, names, own=None, others=(), default=""):
    spawner = Repo2DockerSpawner()
    orm_spawners = {
        str(i): SimpleNamespace(user_options=opts, started=f"2026-11-0{i + 1}", last_activity=None)
        for i, opts in enumerate(others)
    }
    user = SimpleNamespace(
        name="bob",
        groups=[],
        admin=False,
        url="/",
        orm_user=SimpleNamespace(orm_spawners=orm_spawners),
    )
    monkeypatch.setattr(Repo2DockerSpawner, "user", user, raising=False)
    catalogue = FakeCatalogue(names)
    monkeypatch.setattr(Repo2DockerSpawner, "catalogue", catalogue)

    async def visible(self):
        return catalogue.infos

    monkeypatch.setattr(Repo2DockerSpawner, "visible_environments", visible)
    spawner.user_options = own or {}
    spawner.default_environment = default
    return asyncio.run(Repo2DockerSpawner.render_options_form(spawner))


def checked(html: str) -> list[str]:
    return [
        part.split('"')[0]
        for part in html.split('value="')[1:]
        if part.split(">")[0].rstrip().endswith("checked")
    ]


def test_picker_preselects_the_last_choice_then_the_default(monkeypatch):
    names = ["alpha", "beta", "gamma"]
    # nothing known: no random first card
    assert checked(picker(monkeypatch, names)) == []
    assert checked(picker(monkeypatch, names, default="gamma")) == ["gamma"]
    # the newest start of another server beats the default
    others = [{"environment": "alpha"}, {"environment": "beta"}]
    assert checked(picker(monkeypatch, names, others=others, default="gamma")) == ["beta"]
    # this server's own last choice beats both
    html = picker(monkeypatch, names, own={"environment": "alpha"}, others=others)
    assert checked(html) == ["alpha"] and "last used" in html
    # a choice no longer offered falls through
    assert checked(picker(monkeypatch, names, own={"environment": "gone"})) == []
    assert checked(picker(monkeypatch, ["only"])) == ["only"]


def test_many_environments_get_a_filter_and_groups(monkeypatch):
    few = picker(monkeypatch, ["a", "b"])
    assert 'id="r2d-filter"' not in few and "<legend>Choose an environment" in few
    many = picker(monkeypatch, [f"env{n}" for n in range(8)])
    assert 'id="r2d-filter"' in many and "For everyone" in many


def test_an_empty_picker_disables_start(monkeypatch):
    html = picker(monkeypatch, [])
    assert 'id="r2d-no-environments"' in html and "start.disabled = true" in html
    assert 'href="/services/environments/new"' in html


def test_my_servers_start_links_keep_the_choice():
    from tljh_repo2docker.service.myservers import start_options

    assert start_options("course", "") == {"environment": "course"}
    assert start_options("course", "a" * 40) == {
        "environment": "course",
        "version-course": "a" * 40,
    }
    assert start_options("", "") == {}  # nothing to start it with: the picker
