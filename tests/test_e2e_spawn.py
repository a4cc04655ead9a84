"""End to end with a real Docker engine, JupyterHub, proxy and repo2docker:
build an environment, start servers in it, keep files across restarts.

The tests of this module run in order and share one hub (starting a hub and
building take seconds; the behaviour under test is the sequence).
"""

from __future__ import annotations

import os
import stat

import pytest

from tljh_repo2docker import labels

from .conftest import run_cli
from .dockerfixtures import SINGLEUSER_IMAGE, containers, docker, inspect

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def built(hub, git_repo):
    result = run_cli(
        hub,
        "build",
        f"file://{git_repo}",
        "--ref",
        "v1",
        "--name",
        "demo",
        "--display-name",
        "Demo <script>alert(1)</script>",
        "--mem-limit",
        "512M",
        "--cpu-limit",
        "0.5",
    )
    image = result.stdout.strip().splitlines()[-1].split()[-1]
    return image


@pytest.fixture(scope="module")
def tokens(hub):
    return {name: hub.user_token(name) for name in ("alice", "bob", "carol")}


def contents_url(hub, user, path):
    return f"{hub.url}/user/{user}/api/contents/{path}"


def test_build_labels_the_image_with_the_resolved_commit(built, git_repo, hub_name):
    info = inspect(built)
    image_labels = info["Config"]["Labels"]
    commit = os.popen(f"git -C {git_repo} rev-parse v1^{{commit}}").read().strip()
    assert image_labels[labels.COMMIT] == commit
    assert built == f"tljh-r2d-test/demo:{commit[:12]}"
    assert image_labels[labels.HUB] == hub_name
    assert image_labels[labels.ENVIRONMENT] == "demo"
    assert image_labels[labels.REF] == "v1"
    assert image_labels[labels.MEM_LIMIT] == "512M"
    assert image_labels[labels.CPU_LIMIT] == "0.5"
    assert image_labels[labels.BUILT_BY]
    assert image_labels[labels.BUILT_AT].endswith("Z")


def test_rebuilding_the_same_commit_reuses_the_image(hub, built, git_repo):
    result = run_cli(hub, "build", f"file://{git_repo}", "--ref", "v1", "--name", "demo")
    assert result.stdout.strip().splitlines()[-1] == f"reused {built}"


def test_bad_input_is_refused_without_an_image(hub, git_repo, hub_name):
    before = docker("images", "-q", "--filter", f"label={labels.HUB}={hub_name}")
    for args, message in [
        (["file:///nonexistent", "--name", "x"], "Cannot resolve"),
        ([f"file://{git_repo}", "--ref", "no-such-branch", "--name", "x"], "no branch or tag"),
        ([f"file://{git_repo}", "--ref", "--upload-pack=touch /tmp/x", "--name", "x"], "ref"),
        ([f"file://{git_repo}", "--name", "Bad Name"], "name"),
        ([f"file://{git_repo}", "--name", "x", "--mem-limit", "lots"], "mem_limit"),
        (["ftp://example.org/repo", "--name", "x"], "repo"),
    ]:
        result = run_cli(hub, "build", *args, check=False)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
    after = docker("images", "-q", "--filter", f"label={labels.HUB}={hub_name}")
    assert before == after


def test_spawn_form_lists_the_environment_escaped(hub, built):
    session = hub.login("alice")
    page = session.get(hub.url + "/hub/spawn").text
    assert 'value="demo"' in page
    assert "Demo &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert built.split(":")[1] in page  # the short commit
    assert "512M memory" in page


def test_start_write_stop_start_keeps_the_file(hub, built, tokens, hub_settings, hub_name):
    r = hub.api("POST", "/users/alice/server", json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")

    (cid,) = containers(hub_name, "alice")
    info = inspect(cid)
    assert info["Config"]["Image"] == built
    assert info["HostConfig"]["Memory"] == 512 * 1024**2
    assert info["HostConfig"]["NanoCpus"] or info["HostConfig"]["CpuQuota"] == 50_000

    auth = {"Authorization": f"token {tokens['alice']}"}
    import requests

    r = requests.put(
        contents_url(hub, "alice", "notes.txt"),
        json={"type": "file", "format": "text", "content": "kept across restarts"},
        headers=auth,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text

    r = hub.api("DELETE", "/users/alice/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("alice")
    assert containers(hub_name, "alice") == [], "the container must be removed on stop"

    home = os.path.join(hub_settings["homes_dir"], "jupyter-alice")
    host_file = os.path.join(home, "notes.txt")
    assert open(host_file).read() == "kept across restarts"
    assert os.stat(host_file).st_uid == 1000
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700

    r = hub.api("POST", "/users/alice/server", json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    r = requests.get(contents_url(hub, "alice", "notes.txt"), headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "kept across restarts"


def test_second_user_cannot_see_the_file(hub, built, tokens, hub_settings):
    import requests

    r = hub.api("POST", "/users/bob/server", json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("bob")
    bob = {"Authorization": f"token {tokens['bob']}"}
    # not through alice's server ...
    r = requests.get(
        contents_url(hub, "alice", "notes.txt"), headers=bob, timeout=30, allow_redirects=False
    )
    assert r.status_code in (302, 403, 404), r.status_code
    assert "kept across restarts" not in r.text
    # ... and not in bob's own home
    r = requests.get(contents_url(hub, "bob", "notes.txt"), headers=bob, timeout=30)
    assert r.status_code == 404
    bob_home = os.path.join(hub_settings["homes_dir"], "jupyter-bob")
    assert os.listdir(bob_home) == [] or "notes.txt" not in os.listdir(bob_home)
    hub.api("DELETE", "/users/bob/server")
    hub.wait_stopped("bob")


@pytest.mark.parametrize(
    "user, options, message",
    [
        ("carol", {"image": SINGLEUSER_IMAGE}, "is not an environment of this hub"),
        ("carol", {"image": "tljh-r2d-test/demo:latest"}, "is not an environment of this hub"),
        ("carol", {"environment": "nope"}, "is not an environment of this hub"),
        ("carol", {"environment": ["demo"]}, "must be a string"),
        # JupyterHub reuses a user's last options when none are sent: a new user
        ("dave", {}, "Choose an environment"),
    ],
)
def test_non_catalogue_images_are_refused(hub, built, hub_name, user, options, message):
    hub.api("POST", f"/users/{user}")
    r = hub.api("POST", f"/users/{user}/server", json=options)
    assert r.status_code == 400, (r.status_code, r.text)
    assert message in r.json()["message"]
    assert containers(hub_name, user) == []


def test_server_survives_a_hub_restart(hub, built, tokens, hub_name):
    import requests

    r = hub.api("POST", "/users/alice/server", json={"environment": "demo"})
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    hub.wait_ready("alice")
    (cid,) = containers(hub_name, "alice")
    hub.stop()
    hub.start()
    assert containers(hub_name, "alice") == [cid]
    auth = {"Authorization": f"token {tokens['alice']}"}
    r = requests.get(contents_url(hub, "alice", "notes.txt"), headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    hub.api("DELETE", "/users/alice/server")
    hub.wait_stopped("alice")
    assert containers(hub_name, "alice") == []
