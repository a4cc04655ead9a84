"""A named server whose first start is refused (an unknown or private
environment, bad options) leaves no record behind: before, each one counted
toward ``max_servers_per_user`` and a few mistyped launches used the quota up.
A server that ran once keeps its record (and its place on My servers) when a
later start is refused."""

from __future__ import annotations

import time

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def built(hub, git_repo):
    run_cli(hub, "build", f"file://{git_repo}", "--ref", "v1", "--name", "demo")


def servers(hub, user: str) -> dict:
    return hub.api("GET", f"/users/{user}?include_stopped_servers").json().get("servers", {})


def wait_gone(hub, user: str, name: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in servers(hub, user):
            return True
        time.sleep(0.2)
    return False


def test_refused_first_starts_leave_no_named_server(hub, built):
    hub.api("POST", "/users/dora")
    for n in range(7):  # more than the limit of 5 named servers
        r = hub.api("POST", f"/users/dora/servers/typo{n}", json={"environment": "no-such"})
        assert r.status_code == 400, r.text
        assert "not an environment of this hub" in r.json()["message"]
        assert wait_gone(hub, "dora", f"typo{n}"), servers(hub, "dora")
    # the quota is intact: a real named server still starts
    r = hub.api("POST", "/users/dora/servers/work", json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("dora", "work")
    hub.api("DELETE", "/users/dora/servers/work")


def test_a_server_that_ran_keeps_its_record_when_a_later_start_is_refused(hub, built):
    hub.api("POST", "/users/emil")
    r = hub.api("POST", "/users/emil/servers/course", json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("emil", "course")
    r = hub.api("DELETE", "/users/emil/servers/course")
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while servers(hub, "emil").get("course", {}).get("ready") and time.monotonic() < deadline:
        time.sleep(0.2)
    r = hub.api("POST", "/users/emil/servers/course", json={"environment": "no-such"})
    assert r.status_code == 400, r.text
    time.sleep(3)  # longer than the forgetting of a refused first start takes
    assert "course" in servers(hub, "emil")
