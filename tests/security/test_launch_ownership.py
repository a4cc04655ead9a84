"""Security specification: launch links respect ownership and quotas.

Opening a launch link of a new repository makes an environment (one per
repository, shared by everyone who launches it, so that 50 students on one
badge make one image). A user must not get around their quota or fill other
people's pickers that way. With a real hub, a real git server and real
repo2docker builds:

1. A launch-made environment belongs to the user whose launch made it: they
   own it, it counts toward their ``max_environments_per_user``, and an admin
   sees who caused it (API model ``launched_by``, and the environments page).
2. It is in nobody's picker, its maker's included, and no other user can
   start it by naming it (REST ``user_options``); only its launch link starts
   it. The fact is in the image's labels, so the spawner holds to it when the
   service is down.
3. An admin may promote one into the pickers (``PATCH {"promoted": true}``)
   and take it out again; its owner may not, neither directly nor by
   changing its visibility.
4. A launch that would make an environment beyond the user's quota is
   refused with 429 and a message (the stream's ``failed`` event carries
   ``status_code: 429``; the launch page answers 429), and makes nothing.
5. A launch whose build fails leaves no environment and no image behind.
6. An admin removes a launch-made environment like any other, which frees
   its owner's quota.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
import requests

from tljh_repo2docker import labels, providers

from ..dockerfixtures import SINGLEUSER_IMAGE, inspect
from ..hubprocess import hub_settings_for
from .client import Service
from .gitserver import GitServer, make_repo
from .test_launch_consent import images_of

pytestmark = pytest.mark.docker

QUOTA = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory, hub_name):
    root = tmp_path_factory.mktemp("served")
    dockerfile = f"FROM {SINGLEUSER_IMAGE}\nRUN echo {hub_name} > /tmp/marker\n"
    for name in ("one", "two", "three"):
        make_repo(root, name, {"Dockerfile": dockerfile + f"RUN echo {name}\n"})
    make_repo(root, "broken", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN exit 3\n"})
    with GitServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def hub_settings(tmp_path_factory, hub_name):
    return hub_settings_for(
        hub_name,
        str(tmp_path_factory.mktemp("homes")),
        allowed_networks=["127.0.0.0/8"],
        allowed_base_images=[SINGLEUSER_IMAGE],
        max_environments_per_user=QUOTA,
    )


@pytest.fixture(scope="module")
def service(hub):
    return Service(hub)


def launch(served, name: str) -> tuple[str, providers.LaunchSpec]:
    path = "git/" + quote(served.url(name), safe="") + "/main"
    return path, providers.parse("git", path[len("git/") :])


def picker(hub, user: str) -> str:
    r = hub.login(user).get(hub.url + "/hub/spawn", timeout=60)
    assert r.status_code == 200
    return r.text


def wait_for(predicate, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s")


# --- 1: who it belongs to ------------------------------------------------------------------
def test_a_launch_made_environment_belongs_to_who_caused_it(hub, hub_name, service, served):
    path, spec = launch(served, "one")
    got = service.launch_events("launcher", path, timeout=240)
    assert got[-1]["phase"] == "ready", got[-3:]
    env = service("GET", f"/environments/{spec.environment_name}", "admin").json()
    assert env["owner"] == "launcher"
    assert env["launched_by"] == "launcher"
    assert env["promoted"] is False
    assert env["visibility"] == "launch"
    # the fact the spawner needs is on the image
    image_labels = inspect(env["image"])["Config"]["Labels"]
    assert image_labels[labels.VISIBILITY] == "launch"
    assert image_labels[labels.OWNER] == "launcher"
    # the owner sees it in their list (it counts in their quota)
    mine = service("GET", "/environments", "launcher").json()["environments"]
    assert spec.environment_name in [e["name"] for e in mine]
    # the admin's environments page says who caused it
    page = requests.get(
        hub.service_url + "/",
        headers={"Authorization": f"token {service.token('admin')}"},
        timeout=60,
    ).text
    assert 'data-launched-by="launcher"' in page


# --- 2: nobody's picker ------------------------------------------------------------------
def test_it_is_in_nobodys_picker_and_others_cannot_start_it(hub, service, served):
    _, spec = launch(served, "one")
    name = spec.environment_name
    image = service("GET", f"/environments/{name}", "admin").json()["image"]
    for user in ("classmate", "launcher", "admin"):
        assert f'value="{name}"' not in picker(hub, user), user
    classmate = service.token("classmate")
    for options in ({"environment": name}, {"image": image}):
        r = hub.api("POST", "/users/classmate/servers/sneaky", token=classmate, json=options)
        assert r.status_code == 400, (options, r.text)
        assert "is not an environment" in r.json()["message"]
    assert service("GET", f"/environments/{name}", "classmate").status_code == 404
    assert "sneaky" not in hub.api("GET", "/users/classmate").json()["servers"]
    # its launch link starts it for anyone (the service asks the hub for that start)
    path, _ = launch(served, "one")
    got = service.launch_events("classmate", path, timeout=240)
    assert got[-1]["phase"] == "ready", got[-3:]
    assert "building" not in [e["phase"] for e in got]  # the same image, not a copy
    assert hub.api("GET", "/users/classmate").json()["servers"][spec.server_name]["ready"]


# --- 3: promotion is the admins' ----------------------------------------------------------
def test_only_an_admin_promotes_it_into_the_pickers(hub, service, served):
    _, spec = launch(served, "one")
    name = spec.environment_name
    path = f"/environments/{name}"
    for body in ({"promoted": True}, {"visibility": "public"}):
        r = service("PATCH", path, "launcher", json=body)
        assert r.status_code == 403, r.text
    assert f'value="{name}"' not in picker(hub, "classmate")

    r = service("PATCH", path, "admin", json={"promoted": True})
    assert r.status_code == 200, r.text
    assert (r.json()["promoted"], r.json()["visibility"]) == (True, "public")
    wait_for(lambda: f'value="{name}"' in picker(hub, "classmate"), what="promoted in the picker")

    r = service("PATCH", path, "admin", json={"promoted": False})
    assert r.status_code == 200 and r.json()["visibility"] == "launch", r.text
    wait_for(lambda: f'value="{name}"' not in picker(hub, "classmate"), what="out again")


# --- 4: quotas ----------------------------------------------------------------------------
def test_launches_beyond_the_quota_get_429(hub, hub_name, service, served):
    path, _ = launch(served, "two")
    got = service.launch_events("launcher", path + "?build_only=true", timeout=240)
    assert got[-1]["phase"] == "ready", got[-3:]  # the second of two allowed

    path, spec = launch(served, "three")
    got = service.launch_events("launcher", path)
    assert got[-1]["phase"] == "failed"
    assert got[-1].get("status_code") == 429, got[-1]
    assert "environments" in got[-1]["message"]
    page = requests.get(
        f"{hub.service_url}/v2/{path}",
        headers={"Authorization": f"token {service.token('launcher')}"},
        timeout=60,
    )
    assert page.status_code == 429
    assert "environments" in page.text
    assert service("GET", f"/environments/{spec.environment_name}", "admin").status_code == 404
    assert images_of(hub_name, spec.environment_name) == []


# --- 5: failed launches leave nothing --------------------------------------------------------
def test_a_failed_launch_build_leaves_no_environment_and_no_image(hub, hub_name, service, served):
    path, spec = launch(served, "broken")
    got = service.launch_events("classmate", path, timeout=240)
    assert got[-1]["phase"] == "failed", got[-3:]
    assert "building" in [e["phase"] for e in got]  # it was a build that failed
    wait_for(
        lambda: (
            service("GET", f"/environments/{spec.environment_name}", "admin").status_code == 404
        ),
        what="the failed launch environment removed",
    )
    assert images_of(hub_name, spec.environment_name) == []
    assert f'value="{spec.environment_name}"' not in picker(hub, "classmate")
    # and it takes no place in the quota of the user who caused it
    mine = service("GET", "/environments", "classmate").json()["environments"]
    assert [e["name"] for e in mine if e["launched_by"] == "classmate"] == []


# --- 6: admins remove them ------------------------------------------------------------------
def test_an_admin_removes_one_and_the_quota_is_free_again(hub, service, served):
    _, one = launch(served, "one")
    listed = service("GET", "/environments", "admin").json()["environments"]
    assert sorted(e["name"] for e in listed if e["launched_by"] == "launcher") == sorted(
        launch(served, name)[1].environment_name for name in ("one", "two")
    )
    r = service("DELETE", f"/environments/{one.environment_name}?stop_servers=true", "admin")
    assert r.status_code == 204, r.text
    path, _ = launch(served, "three")
    got = service.launch_events("launcher", path + "?build_only=true", timeout=240)
    assert got[-1]["phase"] == "ready", got[-3:]
