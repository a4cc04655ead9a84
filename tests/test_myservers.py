"""The "My servers" page: a user's own servers, start, stop, delete (real hub,
service, Docker). The hub tests of this module run in order on one hub."""

from __future__ import annotations

import html
import os
import re
import subprocess
import time
from datetime import datetime, timedelta, timezone

import jupyterhub
import pytest
import requests

from tljh_repo2docker import labels
from tljh_repo2docker.service import myservers

from .conftest import run_cli
from .dockerfixtures import containers, inspect

docker = pytest.mark.docker
JUPYTERHUB_MAJOR = int(jupyterhub.__version__.split(".")[0])
ENV = "mine"


# --- pure helpers ------------------------------------------------------------------------
def test_status_of():
    assert myservers.status_of({"ready": True, "pending": None}) == "running"
    assert myservers.status_of({"ready": False, "pending": "spawn"}) == "starting"
    assert myservers.status_of({"ready": False, "pending": "stop"}) == "stopping"
    assert myservers.status_of({"ready": False, "pending": None, "stopped": True}) == "stopped"


def test_tag_parts():
    assert myservers.tag_parts("tljh-r2d/env:0123456789ab") == ("tljh-r2d/env", "0123456789ab")
    assert myservers.tag_parts("localhost:5000/env") == ("localhost:5000/env", "")
    assert myservers.tag_parts("env:latest") == ("env:latest", "")


def test_ago():
    now = datetime(2024, 1, 2, tzinfo=timezone.utc)
    assert myservers.ago(now - timedelta(seconds=5), now) == "just now"
    assert myservers.ago(now - timedelta(minutes=1), now) == "1 minute ago"
    assert myservers.ago(now - timedelta(hours=3), now) == "3 hours ago"
    assert myservers.ago(now - timedelta(days=2), now) == "2 days ago"
    assert myservers.ago(None, now) == ""
    assert myservers.parse_time("2024-01-01T10:00:00.123456Z").tzinfo is not None
    assert myservers.parse_time("nonsense") is None


def test_culler_settings(tmp_path):
    path = tmp_path / "config.yaml"
    # TLJH's defaults: on, 10 minutes, named servers kept
    assert myservers.culler_settings(str(path)) == {"minutes": 10, "removes_named": False}
    path.write_text("services:\n  cull:\n    timeout: 3600\n    remove_named_servers: true\n")
    assert myservers.culler_settings(str(path)) == {"minutes": 60, "removes_named": True}
    path.write_text("services:\n  cull:\n    enabled: false\n")
    assert myservers.culler_settings(str(path)) is None
    path.write_text(": not yaml [")
    assert myservers.culler_settings(str(path)) == {"minutes": 10, "removes_named": False}


# --- the page on a real hub -----------------------------------------------------------------
@pytest.fixture(scope="module")
def built(hub, git_repo):
    result = run_cli(hub, "build", f"file://{git_repo}", "--ref", "v1", "--name", ENV)
    return result.stdout.strip().splitlines()[-1].split()[-1]


@pytest.fixture(scope="module")
def started(hub, built):
    """ursula: alpha and beta; victor: alpha and vonly (all in ENV)."""
    for user, names in (("ursula", ("alpha", "beta")), ("victor", ("alpha", "vonly"))):
        hub.api("POST", f"/users/{user}")
        for name in names:
            r = hub.api("POST", f"/users/{user}/servers/{name}", json={"environment": ENV})
            assert r.status_code in (201, 202), r.text
    for user, names in (("ursula", ("alpha", "beta")), ("victor", ("alpha", "vonly"))):
        for name in names:
            hub.wait_ready(user, name)
    return built


@pytest.fixture(scope="module")
def sessions(hub):
    return {}


def session_for(hub, sessions, user) -> requests.Session:
    if user not in sessions:
        sessions[user] = hub.login(user)
    return sessions[user]


def get_page(hub, session) -> requests.Response:
    r = session.get(hub.service_url + "/servers", timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    assert r.url == hub.service_url + "/servers", r.url
    return r


def rows(page: str) -> dict[str, str]:
    """server name -> status, as the page shows them."""
    found = re.findall(r'<tr data-server="([^"]*)" data-status="([^"]*)"', page)
    return {html.unescape(name): status for name, status in found}


def xsrf(session: requests.Session, page: str) -> str:
    """The token of the page's forms or, on a page without any, the service's cookie."""
    found = re.search(r'name="_xsrf" value="([^"]+)"', page)
    if found:
        return html.unescape(found.group(1))
    (token,) = [c.value for c in session.cookies if c.name == "_xsrf" and "services" in c.path]
    return token


def post(hub, session, action: str, server: str, **fields) -> requests.Response:
    page = get_page(hub, session).text
    data = {"_xsrf": xsrf(session, page), "action": action, "server": server, **fields}
    return session.post(hub.service_url + "/servers", data=data, timeout=120)


def servers_of(hub, user) -> dict:
    r = hub.api("GET", f"/users/{user}?include_stopped_servers=1")
    return r.json()["servers"]


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def server_containers(hub_name, user) -> dict[str, str]:
    """server name -> container id of a user's server containers."""
    out = {}
    for cid in containers(hub_name, user):
        out[inspect(cid)["Config"]["Labels"][labels.SERVER_NAME]] = cid
    return out


@docker
def test_page_needs_a_login(hub):
    r = requests.get(hub.service_url + "/servers", timeout=30, allow_redirects=False)
    assert r.status_code == 302
    r = requests.post(hub.service_url + "/servers", data={"action": "stop"}, timeout=30)
    assert r.status_code == 403


@docker
def test_page_lists_exactly_the_users_servers(hub, started, sessions):
    commit12 = started.rsplit(":", 1)[1]
    page = get_page(hub, session_for(hub, sessions, "ursula")).text
    assert rows(page) == {"alpha": "running", "beta": "running"}
    assert "/user/ursula/alpha/" in page and "/user/ursula/beta/" in page
    assert "vonly" not in page and "/user/victor/" not in page
    assert f">{ENV}</code>" in page
    assert commit12 in page
    assert "newest" in page
    assert "home directory" in page
    assert 'data-action="open"' in page and 'data-action="stop"' in page

    page = get_page(hub, session_for(hub, sessions, "victor")).text
    assert rows(page) == {"alpha": "running", "vonly": "running"}
    assert "/user/ursula/" not in page


@docker
def test_post_without_xsrf_is_refused(hub, started, sessions, hub_name):
    session = session_for(hub, sessions, "ursula")
    r = session.post(
        hub.service_url + "/servers", data={"action": "stop", "server": "alpha"}, timeout=60
    )
    assert r.status_code == 403
    assert servers_of(hub, "ursula")["alpha"]["ready"]
    assert set(server_containers(hub_name, "ursula")) == {"alpha", "beta"}


@docker
def test_another_users_server_cannot_be_touched(hub, started, sessions, hub_name):
    session = session_for(hub, sessions, "ursula")
    for action in ("stop", "delete", "start"):
        r = post(hub, session, action, "vonly", confirm="yes", user="victor")
        assert r.status_code == 404, (action, r.status_code)
        assert "You have no server named" in r.text
        assert "Traceback" not in r.text
    assert servers_of(hub, "victor")["vonly"]["ready"]
    assert set(server_containers(hub_name, "victor")) == {"alpha", "vonly"}


@docker
def test_stop(hub, started, sessions, hub_name):
    session = session_for(hub, sessions, "ursula")
    # a "user" field is ignored: the name comes from the login
    r = post(hub, session, "stop", "alpha", user="victor")
    assert r.status_code == 200, r.text[:2000]
    assert r.url == hub.service_url + "/servers"  # redirected back (PRG)
    assert "server \u201calpha\u201d" in r.text
    wait_for(lambda: servers_of(hub, "ursula")["alpha"]["stopped"], what="alpha stopped")
    alpha = servers_of(hub, "ursula")["alpha"]
    assert not alpha["ready"]
    assert alpha["user_options"] == {"environment": ENV}
    wait_for(
        lambda: set(server_containers(hub_name, "ursula")) == {"beta"}, what="alpha's container"
    )
    # victor's server of the same name runs on
    assert servers_of(hub, "victor")["alpha"]["ready"]
    assert set(server_containers(hub_name, "victor")) == {"alpha", "vonly"}

    page = get_page(hub, session).text
    assert rows(page) == {"alpha": "stopped", "beta": "running"}
    assert "page-message" not in page  # the message was shown once
    # stopping a stopped server is harmless
    r = post(hub, session, "stop", "alpha")
    assert r.status_code == 200 and "already stopped" in r.text


@docker
def test_server_stopped_by_the_hub_shows_stopped(hub, started, sessions, hub_name):
    """What TLJH's idle culler does: DELETE through the hub's API."""
    r = hub.api("DELETE", "/users/ursula/servers/beta")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("ursula", "beta")  # gone from the hub's list of active servers
    page = get_page(hub, session_for(hub, sessions, "ursula")).text
    assert rows(page) == {"alpha": "stopped", "beta": "stopped"}
    assert page.count('data-action="start"') == 2
    assert 'data-action="open"' not in page
    assert server_containers(hub_name, "ursula") == {}


@docker
def test_start_again(hub, started, sessions, hub_name):
    session = session_for(hub, sessions, "ursula")
    r = post(hub, session, "start", "alpha")
    assert r.status_code == 200, r.text[:2000]
    assert "page-error" not in r.text
    hub.wait_ready("ursula", "alpha")
    (cid,) = server_containers(hub_name, "ursula").values()
    info = inspect(cid)
    assert info["Config"]["Image"] == started
    assert info["Config"]["Labels"][labels.ENVIRONMENT] == ENV
    page = get_page(hub, session).text
    assert rows(page) == {"alpha": "running", "beta": "stopped"}
    # starting a running server is refused with a message, not a traceback
    r = post(hub, session, "start", "alpha")
    assert r.status_code == 409 and "is running" in r.text


@docker
def test_delete_keeps_the_home(hub, started, sessions, hub_name, hub_settings):
    session = session_for(hub, sessions, "ursula")
    token = hub.user_token("ursula")
    r = requests.put(
        f"{hub.url}/user/ursula/alpha/api/contents/kept.txt",
        json={"type": "file", "format": "text", "content": "still here"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    home = os.path.join(hub_settings["homes_dir"], "jupyter-ursula")
    assert open(os.path.join(home, "kept.txt")).read() == "still here"

    page = get_page(hub, session).text
    assert "servers?delete=alpha" in page  # "Delete..." asks first
    r = session.get(hub.service_url + "/servers?delete=alpha", timeout=60)
    assert r.status_code == 200
    assert 'id="confirm-delete"' in r.text
    assert "Your home directory and its files are kept" in r.text
    assert servers_of(hub, "ursula")["alpha"]["ready"]  # asking deleted nothing
    # only for one's own servers
    r = session.get(hub.service_url + "/servers?delete=vonly", timeout=60)
    assert r.status_code == 200 and 'id="confirm-delete"' not in r.text
    # without the confirmation nothing happens
    r = post(hub, session, "delete", "alpha")
    assert r.status_code == 400 and "confirm" in r.text
    assert servers_of(hub, "ursula")["alpha"]["ready"]

    r = post(hub, session, "delete", "alpha", confirm="yes")
    assert r.status_code == 200, r.text[:2000]
    assert "home directory and its files are kept" in r.text
    wait_for(lambda: "alpha" not in servers_of(hub, "ursula"), what="alpha deleted")
    wait_for(lambda: server_containers(hub_name, "ursula") == {}, what="no container")
    assert os.path.isdir(home)
    assert open(os.path.join(home, "kept.txt")).read() == "still here"
    assert rows(get_page(hub, session).text) == {"beta": "stopped"}
    # victor's alpha is still there
    assert servers_of(hub, "victor")["alpha"]["ready"]

    # a stopped server can be deleted as well
    r = post(hub, session, "delete", "beta", confirm="yes")
    assert r.status_code == 200 and "page-error" not in r.text
    wait_for(lambda: "beta" not in servers_of(hub, "ursula"), what="beta deleted")
    page = get_page(hub, session).text
    assert rows(page) == {}
    assert 'id="no-servers"' in page


@docker
def test_the_default_server_is_not_deleted(hub, started, sessions):
    session = session_for(hub, sessions, "ursula")
    r = post(hub, session, "delete", "", confirm="yes")
    assert r.status_code == 400
    assert "default server cannot be deleted" in r.text
    r = post(hub, session, "explode", "beta")
    assert r.status_code == 400 and "Unknown action" in r.text


@docker
def test_hub_errors_are_shown_on_the_page(hub, started, sessions, git_repo):
    """A server whose environment is gone since it last ran: the hub keeps it,
    stopped, and refuses to start it; the page says why, escaped."""
    result = run_cli(hub, "build", f"file://{git_repo}", "--ref", "v1", "--name", "doomed")
    doomed = result.stdout.strip().splitlines()[-1].split()[-1]
    options = {"environment": "doomed"}
    if JUPYTERHUB_MAJOR >= 6:  # JupyterHub 6 takes a display name beside the options
        body = {"display_name": "<b>Ghost</b>", "user_options": options}
    else:
        body = options
    r = hub.api("POST", "/users/ursula/servers/ghost", json=body)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("ursula", "ghost")
    hub.api("DELETE", "/users/ursula/servers/ghost")
    wait_for(
        lambda: servers_of(hub, "ursula").get("ghost", {}).get("stopped"), what="ghost stopped"
    )
    subprocess.run(["docker", "rmi", doomed], check=True, capture_output=True)
    session = session_for(hub, sessions, "ursula")
    page = get_page(hub, session).text
    assert rows(page)["ghost"] == "stopped"
    assert "no longer exists" in page
    if JUPYTERHUB_MAJOR >= 6:
        assert "&lt;b&gt;Ghost&lt;/b&gt;" in page and "<b>Ghost" not in page
    r = post(hub, session, "start", "ghost")
    # 410 when the catalogue still listed the image a moment ago, 400 once it knows
    assert r.status_code in (400, 410), r.text[:2000]
    assert "is not an environment of this hub" in r.text or "doomed is gone" in r.text
    assert "Traceback" not in r.text
    # a server that ran once is kept after a refused start
    time.sleep(2)
    assert "ghost" in servers_of(hub, "ursula")
    r = post(hub, session, "delete", "ghost", confirm="yes")
    assert r.status_code == 200
    wait_for(lambda: "ghost" not in servers_of(hub, "ursula"), what="ghost deleted")


@docker
def test_cleanup(hub, started):
    for name in ("alpha", "vonly"):
        hub.api("DELETE", f"/users/victor/servers/{name}", json={"remove": True})
    for name in ("alpha", "vonly"):
        hub.wait_stopped("victor", name)
