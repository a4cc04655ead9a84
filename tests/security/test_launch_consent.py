"""Security specification: a launch link cannot be used against the person who opens it.

A launch link is a URL anyone can put on any web site, in an e-mail or behind
a redirect. The person who opens it is logged in to the hub (its cookies are
SameSite=Lax, so a top-level navigation from another site carries them).
With a real hub, a real git server and real repo2docker builds:

1. Opening a launch link of a repository this user has not launched before
   builds nothing and starts nothing, and fetches nothing from the
   repository: the page shows what would run (repository, ref, what is known
   of the image) and what it could reach (only ``~/<project>`` by default;
   the whole home only if the user ticks it), and asks.
2. The event stream the page uses (``/build/...``) is a GET too: with only the
   login cookie (any site can make a browser send it) and no XSRF value tied
   to that cookie, it builds and starts nothing, whatever the Sec-Fetch
   headers say. With the page's XSRF value but no consent, nothing either.
3. The user confirms with a POST (XSRF-checked); without the XSRF value the
   POST is refused and nothing is remembered. After confirming, the launch
   runs; the next visit of that repository goes straight through.
4. Sources an admin trusts (``trusted_launch_sources``) go straight through.
5. A Binder client sending the user's own hub token (``Authorization:
   token``) is deliberate and needs no page.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from urllib.parse import quote

import pytest
import requests

from tljh_repo2docker import labels, providers

from ..dockerfixtures import SINGLEUSER_IMAGE, containers
from ..hubprocess import hub_settings_for
from .gitserver import GitServer, make_repo

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def served(tmp_path_factory, hub_name):
    root = tmp_path_factory.mktemp("served")
    dockerfile = f"FROM {SINGLEUSER_IMAGE}\nRUN echo {hub_name} > /tmp/marker\n"
    make_repo(root, "course", {"Dockerfile": dockerfile, "lesson.md": "# Lesson\n"})
    make_repo(root / "trusted", "tool", {"Dockerfile": dockerfile})
    with GitServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def hub_settings(tmp_path_factory, hub_name, served):
    return hub_settings_for(
        hub_name,
        str(tmp_path_factory.mktemp("homes")),
        # the test's git server is on loopback, its Dockerfiles start from a local image
        allowed_networks=["127.0.0.0/8"],
        allowed_base_images=[SINGLEUSER_IMAGE],
        trusted_launch_sources=[f"http://127.0.0.1:{served.port}/trusted/"],
    )


def spec_of(url: str) -> tuple[str, providers.LaunchSpec]:
    path = "git/" + quote(url, safe="") + "/main"
    return path, providers.parse("git", path[len("git/") :])


@pytest.fixture(scope="module")
def course(served):
    return spec_of(served.url("course"))


@pytest.fixture(scope="module")
def trusted(served):
    return spec_of(f"http://127.0.0.1:{served.port}/trusted/tool.git")


def login(hub, user: str) -> requests.Session:
    """A browser of ``user``, logged in to the hub and to the service."""
    session = hub.login(user)
    r = session.get(hub.service_url + "/", timeout=60)
    assert r.status_code == 200 and r.url.startswith(hub.service_url), r.url
    return session


def events(response: requests.Response) -> list[dict]:
    out = []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            out.append(json.loads(line[len("data: ") :]))
            if out[-1]["phase"] in ("ready", "failed"):
                break
    response.close()
    return out


def stream(session, url: str, **headers) -> list[dict]:
    r = session.get(url, stream=True, timeout=180, headers=headers)
    assert r.status_code == 200, r.text[:500]
    return events(r)


def images_of(hub_name: str, environment: str) -> list[str]:
    out = subprocess.run(
        [
            "docker",
            "images",
            "-q",
            "--filter",
            f"label={labels.HUB}={hub_name}",
            "--filter",
            f"label={labels.ENVIRONMENT}={environment}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def nothing_happened(hub, hub_name, user, spec, served):
    """No image, no container, no server, no environment, no fetch."""
    assert images_of(hub_name, spec.environment_name) == []
    assert containers(hub_name, user) == []
    assert hub.api("GET", f"/users/{user}").json()["servers"] == {}
    r = hub.service_api("GET", f"/environments/{spec.environment_name}", token=admin_token(hub))
    assert r.status_code == 404, r.text
    assert [r for r in served.requests if spec.repo.rsplit("/", 1)[-1] in r] == []


_admin = {}


def admin_token(hub) -> str:
    if "token" not in _admin or _admin.get("hub") is not hub:
        _admin.update(token=hub.user_token("admin"), hub=hub)
    return _admin["token"]


def form_xsrf(page: str) -> str:
    found = re.search(r'name="_xsrf" value="([^"]+)"', page)
    assert found, page[:2000]
    return html.unescape(found.group(1))


def events_url(hub, page: str) -> str | None:
    found = re.search(r'data-events-url="([^"]+)"', page)
    if not found:
        return None
    return hub.url + html.unescape(found.group(1))


# --- 1 and 2: nothing happens without consent --------------------------------------------
def test_a_cross_site_get_of_the_stream_builds_and_starts_nothing(hub, hub_name, served, course):
    """The attack: another site sends the logged-in victim's browser to the
    stream URL (a top-level navigation carries the cookie)."""
    path, spec = course
    victim = login(hub, "victim")
    url = f"{hub.service_url}/build/{path}"
    for headers in (
        {},  # no Sec-Fetch headers at all (older browsers, plain HTTP)
        {
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Dest": "document",
        },
    ):
        got = stream(victim, url, **headers)
        assert [e["phase"] for e in got if e["phase"] in ("building", "launching", "ready")] == []
        assert got[-1]["phase"] == "failed"
        assert "launch page" in got[-1]["message"]
    # an XSRF value of the attacker's own session is no good either
    attacker = login(hub, "attacker")
    page = attacker.get(f"{hub.service_url}/v2/{path}", timeout=60).text
    got = stream(victim, f"{url}?_xsrf={quote(form_xsrf(page))}")
    assert got[-1]["phase"] == "failed"
    nothing_happened(hub, hub_name, "victim", spec, served)


def test_opening_a_new_launch_link_shows_what_runs_and_asks(hub, hub_name, served, course):
    path, spec = course
    victim = login(hub, "victim")
    r = victim.get(f"{hub.service_url}/v2/{path}?labpath=lesson.md", timeout=60)
    assert r.status_code == 200, r.text[:1000]
    page = r.text
    assert 'id="launch-confirm"' in page and 'method="post"' in page
    assert html.escape(spec.repo) in page  # what will run
    assert "<code>main</code>" in page
    assert f"~/{spec.server_name}" in page  # what it can reach by default
    assert 'name="whole_home"' in page  # opening it wider is a choice
    assert events_url(hub, page) is None  # the page follows no build
    # the stream with this page's own XSRF value: still no consent
    got = stream(victim, f"{hub.service_url}/build/{path}?_xsrf={quote(form_xsrf(page))}")
    assert got[-1]["phase"] == "failed" and "confirm" in got[-1]["message"]
    nothing_happened(hub, hub_name, "victim", spec, served)


def test_a_consent_post_without_xsrf_is_refused_and_not_remembered(hub, hub_name, served, course):
    path, spec = course
    victim = login(hub, "victim")
    r = victim.post(f"{hub.service_url}/v2/{path}", data={}, timeout=60, allow_redirects=False)
    assert r.status_code == 403
    page = victim.get(f"{hub.service_url}/v2/{path}", timeout=60).text
    assert 'id="launch-confirm"' in page
    nothing_happened(hub, hub_name, "victim", spec, served)


# --- 3: confirmed once, then straight through -----------------------------------------
def test_after_confirming_the_launch_runs_in_the_users_server(hub, hub_name, course):
    path, spec = course
    victim = login(hub, "victim")
    page = victim.get(f"{hub.service_url}/v2/{path}", timeout=60).text
    r = victim.post(
        f"{hub.service_url}/v2/{path}",
        data={"_xsrf": form_xsrf(page)},
        timeout=60,
        allow_redirects=False,
    )
    assert r.status_code == 303, r.text[:500]
    launch_page = victim.get(hub.url + r.headers["Location"], timeout=60)
    url = events_url(hub, launch_page.text)
    assert url, launch_page.text[:2000]
    got = stream(victim, url)
    phases = [e["phase"] for e in got]
    assert "building" in phases and phases[-1] == "ready", got[-3:]
    server = hub.api("GET", "/users/victim").json()["servers"][spec.server_name]
    assert server["ready"]
    # only the project folder was asked for (the spawner mounts it as the home)
    assert server.get("user_options", {}).get("whole_home") in (None, False)
    assert len(containers(hub_name, "victim")) == 1

    # a second visit goes straight through, to the same server
    page = victim.get(f"{hub.service_url}/v2/{path}", timeout=60).text
    assert 'id="launch-confirm"' not in page
    got = stream(victim, events_url(hub, page))
    assert got[-1]["phase"] == "ready", got[-3:]
    assert "building" not in [e["phase"] for e in got]


def test_consent_is_per_user(hub, course):
    path, _ = course
    other = login(hub, "classmate")
    assert 'id="launch-confirm"' in other.get(f"{hub.service_url}/v2/{path}", timeout=60).text


def test_the_whole_home_is_opened_only_when_ticked(hub, course):
    path, spec = course
    user = login(hub, "wholehome")
    page = user.get(f"{hub.service_url}/v2/{path}", timeout=60).text
    r = user.post(
        f"{hub.service_url}/v2/{path}",
        data={"_xsrf": form_xsrf(page), "whole_home": "on"},
        timeout=60,
    )
    got = stream(user, events_url(hub, r.text))
    assert got[-1]["phase"] == "ready", got[-3:]
    server = hub.api("GET", "/users/wholehome").json()["servers"][spec.server_name]
    assert server["user_options"].get("whole_home") is True


# --- 4 and 5: trusted sources and Binder clients ------------------------------------------
def test_a_trusted_source_goes_straight_through(hub, trusted, course):
    path, _ = trusted
    user = login(hub, "trusting")
    page = user.get(f"{hub.service_url}/v2/{path}", timeout=60).text
    assert 'id="launch-confirm"' not in page
    got = stream(user, events_url(hub, page) + "&build_only=true")
    assert got[-1]["phase"] == "ready", got[-3:]
    # a repository of the same server outside the trusted prefix is asked for
    untrusted, _ = course
    page = user.get(f"{hub.service_url}/v2/{untrusted}", timeout=60).text
    assert 'id="launch-confirm"' in page


def test_a_binder_client_with_a_token_needs_no_page(hub, course):
    path, _ = course
    token = hub.user_token("binderclient")
    r = requests.get(
        f"{hub.service_url}/build/{path}?build_only=true",
        headers={"Authorization": f"token {token}"},
        stream=True,
        timeout=180,
    )
    got = events(r)
    assert got[-1]["phase"] == "ready", got[-3:]
    # the same user's browser cookie alone is not the same thing
    browser = login(hub, "binderclient")
    got = stream(browser, f"{hub.service_url}/build/{path}?build_only=true")
    assert got[-1]["phase"] == "failed" and "launch page" in got[-1]["message"]
