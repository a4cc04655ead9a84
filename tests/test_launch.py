"""Launch links end to end: the BinderHub-style build stream, the named
server per repository, and the redirect target (real hub, service, Docker)."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
import requests

from tljh_repo2docker import providers

from .dockerfixtures import commit_change, containers, make_course_repo, make_git_repo

pytestmark = pytest.mark.docker


def events(hub, token, path: str, timeout: float = 180) -> list[dict]:
    """All events of one /build stream."""
    r = requests.get(
        f"{hub.service_url}/build/{path}",
        headers={"Authorization": f"token {token}"},
        stream=True,
        timeout=timeout,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            out.append(json.loads(line[len("data: ") :]))
            if out[-1]["phase"] in ("ready", "failed"):
                break  # as Binder clients do: the hub holds the stream open
    r.close()
    return out


# file:// repositories (the only ones that build offline) are for admins only
# (issue 8): the launching user here is an admin
USER = "admin"


@pytest.fixture(scope="module")
def student(hub):
    return hub.user_token(USER)


@pytest.fixture(scope="module")
def project_repo(tmp_path_factory, hub_name):
    """A repository whose image has its files in the home, as repo2docker's
    build packs put them."""
    return make_course_repo(tmp_path_factory.mktemp("project") / "course", marker=hub_name)


@pytest.fixture(scope="module")
def spec_path(project_repo):
    return "git/" + quote(f"file://{project_repo}", safe="") + "/main"


def test_first_launch_builds_then_opens_a_named_server(
    hub, student, spec_path, hub_name, hub_settings
):
    got = events(hub, student, spec_path + "?labpath=lesson.md")
    phases = [e["phase"] for e in got]
    assert phases[0] == "waiting", got
    assert "building" in phases, phases
    assert phases[-1] == "ready", got[-1]
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    url = got[-1]["url"]
    # the server's root: the client adds the landing path (doc/tree/lesson.md)
    assert url.endswith(f"/user/{USER}/{spec.server_name}/")
    assert len(spec.server_name) <= 30
    project = os.path.join(hub_settings["homes_dir"], f"jupyter-{USER}", spec.server_name)
    assert open(os.path.join(project, "lesson.md")).read() == "# Lesson 1\n"
    assert open(os.path.join(project, "data", "points.csv")).read() == "x,y\n1,2\n"
    assert not os.path.exists(os.path.join(project, ".hidden"))
    assert os.stat(os.path.join(project, "lesson.md")).st_uid == 1000
    model = hub.api("GET", f"/users/{USER}").json()
    server = model["servers"][spec.server_name]
    assert server["ready"]
    assert len(containers(hub_name, USER)) == 1
    # the server answers at the URL the stream gave (token auth)
    r = requests.get(url + "api/status", headers={"Authorization": f"token {student}"}, timeout=30)
    assert r.status_code == 200
    # the project folder is the server's root: the repository's files are at its top
    r = requests.get(f"{url}files/lesson.md?token={got[-1]['token']}", timeout=30)
    assert r.status_code == 200 and r.text == "# Lesson 1\n"


def test_second_launch_reuses_image_and_server(hub, student, spec_path, hub_name):
    (before,) = containers(hub_name, USER)
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    # the student edits the lesson in their server
    server = f"{hub.url}/user/{USER}/{spec.server_name}"
    r = requests.put(
        f"{server}/api/contents/lesson.md",
        json={"type": "file", "format": "text", "content": "my notes"},
        headers={"Authorization": f"token {student}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    got = events(hub, student, spec_path)
    phases = [e["phase"] for e in got]
    assert "building" not in phases, phases
    assert phases[-1] == "ready", got
    assert containers(hub_name, USER) == [before]


def test_a_new_launch_after_a_stop_keeps_the_students_changes(
    hub, student, spec_path, hub_settings
):
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    hub.api("DELETE", f"/users/{USER}/servers/{spec.server_name}")
    hub.wait_stopped(USER, spec.server_name)
    got = events(hub, student, spec_path)
    assert got[-1]["phase"] == "ready"
    lesson = os.path.join(
        hub_settings["homes_dir"], f"jupyter-{USER}", spec.server_name, "lesson.md"
    )
    assert open(lesson).read() == "my notes"  # never overwritten by the seed


def test_build_only_stops_at_the_image(hub, student, spec_path, project_repo):
    new_commit = commit_change(project_repo, "RUN echo second > /tmp/v2")
    got = events(hub, student, spec_path + "?build_only=true")
    assert got[-1]["phase"] == "ready"
    assert got[-1]["image"].endswith(new_commit[:12])
    assert "building" in [e["phase"] for e in got]


@pytest.mark.parametrize(
    "path, status",
    [
        ("svn/x/y/main", 400),
        ("gh/org%2F..%2F..%2Fetc/repo/main", 400),
        ("git/" + quote("ftp://example.org/x", safe="") + "/main", 400),
        ("git/" + quote("file:///nonexistent", safe="") + "/main", None),  # fails in-stream
    ],
)
def test_bad_specs(hub, student, path, status):
    # as BinderHub: HTTP 200 and a "failed" event, with status_code before the stream
    got = events(hub, student, path, timeout=60)
    assert got[-1]["phase"] == "failed"
    assert got[-1].get("status_code") == status
    if status:
        assert len(got) == 1


def test_launch_needs_a_login(hub, spec_path):
    r = requests.get(f"{hub.service_url}/build/{spec_path}", timeout=30)
    assert r.status_code == 200  # an EventSource cannot read an error's body
    failed = json.loads(r.text.split("data: ", 1)[1])
    assert failed["phase"] == "failed" and failed["status_code"] == 403
    assert "authentication" in failed["message"]
    # the page sends a browser to the hub's login
    r = requests.get(f"{hub.service_url}/v2/{spec_path}", timeout=30, allow_redirects=False)
    assert r.status_code == 302


def test_cleanup_student_server(hub, spec_path):
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    r = hub.api("DELETE", f"/users/{USER}/servers/{spec.server_name}")
    assert r.status_code in (202, 204)
    hub.wait_stopped(USER, spec.server_name)


def test_launch_names_cannot_be_taken_by_other_environments(hub, spec_path, project_repo):
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    # users cannot take the names launch links use ...
    mallory = hub.user_token("mallory")
    r = hub.service_api(
        "POST",
        "/environments",
        token=mallory,
        json={"name": "git-squat-12345678", "repo": "https://example.org/x.git"},
    )
    assert r.status_code == 400 and "launch" in r.json()["message"]
    # ... and a launch never uses an environment of another repository
    other = providers.parse("git", quote("file:///srv/other", safe="") + "/main", allow_local=True)
    admin = hub.user_token("admin")
    r = hub.service_api(
        "POST",
        "/environments",
        token=admin,
        json={"name": other.environment_name, "repo": f"file://{project_repo}"},
    )
    assert r.status_code == 201, r.text
    # (file:// launches are for admins only)
    got = events(hub, admin, "git/" + quote("file:///srv/other", safe="") + "/main")
    assert got[-1]["phase"] == "failed"
    assert "not this repository's" in got[-1]["message"]
    assert spec.environment_name != other.environment_name


def test_a_token_without_the_build_scope_is_told_which_scope(hub):
    # under build_policy "users" every user may build; a token made without
    # the build scope is not, and is told so (not "only administrators")
    hub.user_token("reader")
    r = hub.api(
        "POST",
        "/users/reader/tokens",
        json={"scopes": ["custom:environments:read", "access:services!service=environments"]},
    )
    assert r.status_code == 201, r.text
    got = events(hub, r.json()["token"], "gh/org/never-built/main", timeout=60)
    assert [e["phase"] for e in got] == ["waiting", "failed"], got
    message = got[-1]["message"]
    assert "custom:environments:build" in message
    assert "administrators" not in message


def test_long_repository_names_launch_with_short_server_names(hub, student, tmp_path):
    # JupyterHub 6 refuses server names over 30 characters: a long repository
    # name used to fail to start and then crash the stream (issue 8)
    long = make_git_repo(tmp_path / ("a-very-long-repository-name-" * 3), marker="long")
    commit_change(long, "# long")
    spec = "git/" + quote(f"file://{long}", safe="") + "/main"
    got = events(hub, student, spec)
    assert got[-1]["phase"] == "ready", got[-1]
    name = providers.parse("git", spec[4:], allow_local=True).server_name
    assert len(name) <= 30 and got[-1]["url"].endswith(f"/{name}/")
    hub.api("DELETE", f"/users/{USER}/servers/{name}")
    hub.wait_stopped(USER, name)
