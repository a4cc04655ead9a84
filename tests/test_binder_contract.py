"""BinderHub's own contract for ``/build`` (binderhub/tests/test_build.py),
against a real hub: every event has a message; a launch reports the
spawner's progress; ``ready`` has ``url`` (the server's root) and ``token``;
``GET url?token=`` reaches the server and ``POST {url}api/shutdown`` with the
token stops it; build_only ends with ``ready`` and ``imageName``; a failing
build ends with ``failed`` and never launches; the stream stays open after
``ready`` until the client closes it.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
import requests

from .dockerfixtures import SINGLEUSER_IMAGE, commit_change, make_git_repo

pytestmark = pytest.mark.docker
USER = "admin"  # file:// repositories are for admins only (issue 8)
STANDARD_LAUNCHING = ("Launching server...",)


@pytest.fixture(scope="module")
def token(hub):
    return hub.user_token(USER)


@pytest.fixture(scope="module")
def slug(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("contract") / "minimal", marker=hub_name)
    commit_change(path, "# minimal-dockerfile")
    return "git/" + quote(f"file://{path}", safe="") + "/main"


def stream(hub, token, slug, **params):
    r = requests.get(
        f"{hub.service_url}/build/{slug}",
        params=params,
        headers={"Accept": "text/event-stream", "Authorization": f"token {token}"},
        stream=True,
        timeout=(10, 240),
    )
    r.raise_for_status()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    return r


def read_until_done(r) -> list[dict]:
    events = []
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line.split(":", 1)[1])
            events.append(event)
            assert "message" in event, event
            if event.get("phase") in ("ready", "failed"):
                break
    return events


def test_build_and_launch(hub, token, slug):
    r = stream(hub, token, slug)
    events = read_until_done(r)
    r.close()
    launch_events = [
        e
        for e in events
        if e["phase"] == "launching" and not e["message"].startswith(STANDARD_LAUNCHING)
    ]
    assert launch_events, events  # the spawner's own progress messages
    final = events[-1]
    assert final["phase"] == "ready", final
    assert "url" in final and "token" in final and final["token"]
    assert final["url"].endswith("/")
    got = requests.get(final["url"], params={"token": final["token"]}, timeout=60)
    got.raise_for_status()
    assert got.url.startswith(final["url"])
    stop = requests.post(
        f"{final['url']}api/shutdown", params={"token": final["token"]}, timeout=60
    )
    stop.raise_for_status()
    # the server is gone
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = requests.get(
            f"{final['url']}api/status", params={"token": final["token"]}, timeout=30
        )
        if status.status_code != 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the server still answers after api/shutdown")


def test_the_stream_stays_open_after_ready(hub, token, slug):
    # well-behaved clients close first; one that does not would reconnect
    # (and launch again) if the hub closed the stream at once. Keep-alives
    # go on meanwhile.
    r = stream(hub, token, slug)
    lines = r.iter_lines(decode_unicode=True)
    for line in lines:
        if line.startswith("data:") and '"ready"' in line:
            break
    started = time.monotonic()
    after = next(line for line in lines if line)  # blocks until the next line
    r.close()
    assert after.startswith(":keepalive"), after
    assert time.monotonic() - started > 5


def test_build_only(hub, token, slug):
    r = stream(hub, token, slug, build_only="true")
    events = read_until_done(r)
    r.close()
    assert not [e for e in events if e["phase"] == "launching"]
    final = events[-1]
    assert final["phase"] == "ready" and final["imageName"]
    assert "url" not in final


def test_build_fail(hub, token, tmp_path):
    path = make_git_repo(tmp_path / "failing", marker="x")
    (path / "Dockerfile").write_text(f"FROM {SINGLEUSER_IMAGE}\nRUN exit 1\n")
    commit_change(path, "# fails")
    r = stream(hub, token, "git/" + quote(f"file://{path}", safe="") + "/main")
    events = read_until_done(r)
    r.close()
    assert all(e["phase"] not in ("launching", "ready") for e in events)
    assert events[-1]["phase"] == "failed"


def test_errors_before_the_stream_are_failed_events(hub, token):
    r = stream(hub, token, "nosuchprovider/x/y/main")
    events = read_until_done(r)
    assert len(events) == 1
    assert events[0]["phase"] == "failed" and events[0]["status_code"] == 400


def test_versions_and_cors_preflight(hub):
    r = requests.get(f"{hub.service_url}/versions", timeout=30)
    assert r.status_code == 200
    assert "binderhub" in r.json() and r.headers["Access-Control-Allow-Origin"] == "*"
    r = requests.options(f"{hub.service_url}/build/gh/org/repo/HEAD", timeout=30)
    assert r.status_code == 204
    # and where fancy-profiles looks for BinderHub
    r = requests.get(f"{hub.url}/services/binder/versions", timeout=30)
    assert r.status_code == 200 and "binderhub" in r.json()
