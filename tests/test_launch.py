"""Launch links end to end: the BinderHub-style build stream, the named
server per repository, and the redirect target (real hub, service, Docker)."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
import requests

from tljh_repo2docker import providers

from .dockerfixtures import SINGLEUSER_IMAGE, commit_change, containers, make_git_repo

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
    return out


@pytest.fixture(scope="module")
def student(hub):
    return hub.user_token("student")


@pytest.fixture(scope="module")
def project_repo(tmp_path_factory, hub_name):
    """A repository whose image has its files in the home, as repo2docker's
    build packs put them."""
    path = make_git_repo(tmp_path_factory.mktemp("project") / "course", marker=hub_name)
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    )
    (path / "lesson.md").write_text("# Lesson 1\n")
    (path / "data").mkdir()
    (path / "data" / "points.csv").write_text("x,y\n1,2\n")
    (path / ".hidden").write_text("not for users\n")
    commit_change(path, "# with files")
    return path


@pytest.fixture(scope="module")
def spec_path(project_repo):
    return "git/" + quote(f"file://{project_repo}", safe="") + "/main"


def test_first_launch_builds_then_opens_a_named_server(
    hub, student, spec_path, hub_name, hub_settings
):
    got = events(hub, student, spec_path + "?labpath=lesson.md")
    phases = [e["phase"] for e in got]
    assert phases[0] == "waiting"
    assert "building" in phases, phases
    assert phases[-1] == "ready", got[-1]
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    url = got[-1]["url"]
    # opened in the project folder, at the file the link names
    assert url.endswith(f"/user/student/{spec.server_name}/lab/tree/{spec.server_name}/lesson.md")
    project = os.path.join(hub_settings["homes_dir"], "jupyter-student", spec.server_name)
    assert open(os.path.join(project, "lesson.md")).read() == "# Lesson 1\n"
    assert open(os.path.join(project, "data", "points.csv")).read() == "x,y\n1,2\n"
    assert not os.path.exists(os.path.join(project, ".hidden"))
    assert os.stat(os.path.join(project, "lesson.md")).st_uid == 1000
    model = hub.api("GET", "/users/student").json()
    server = model["servers"][spec.server_name]
    assert server["ready"]
    assert len(containers(hub_name, "student")) == 1
    # the server answers at the URL the stream gave (token auth)
    r = requests.get(
        url.split("/lab/")[0] + "/api/status",
        headers={"Authorization": f"token {student}"},
        timeout=30,
    )
    assert r.status_code == 200


def test_second_launch_reuses_image_and_server(hub, student, spec_path, hub_name):
    (before,) = containers(hub_name, "student")
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    # the student edits the lesson in their server
    server = f"{hub.url}/user/student/{spec.server_name}"
    r = requests.put(
        f"{server}/api/contents/{spec.server_name}/lesson.md",
        json={"type": "file", "format": "text", "content": "my notes"},
        headers={"Authorization": f"token {student}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    got = events(hub, student, spec_path)
    phases = [e["phase"] for e in got]
    assert "building" not in phases, phases
    assert phases[-1] == "ready"
    assert containers(hub_name, "student") == [before]


def test_a_new_launch_after_a_stop_keeps_the_students_changes(
    hub, student, spec_path, hub_settings
):
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    hub.api("DELETE", f"/users/student/servers/{spec.server_name}")
    hub.wait_stopped("student", spec.server_name)
    got = events(hub, student, spec_path)
    assert got[-1]["phase"] == "ready"
    lesson = os.path.join(
        hub_settings["homes_dir"], "jupyter-student", spec.server_name, "lesson.md"
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
        ("git/" + quote("file:///nonexistent", safe="") + "/main", 200),  # fails in-stream
    ],
)
def test_bad_specs(hub, student, path, status):
    r = requests.get(
        f"{hub.service_url}/build/{path}",
        headers={"Authorization": f"token {student}"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    if status == 200:
        assert '"phase": "failed"' in r.text


def test_launch_needs_a_login(hub, spec_path):
    r = requests.get(f"{hub.service_url}/build/{spec_path}", timeout=30)
    assert r.status_code == 403
    # the page sends a browser to the hub's login
    r = requests.get(f"{hub.service_url}/v2/{spec_path}", timeout=30, allow_redirects=False)
    assert r.status_code == 302


def test_cleanup_student_server(hub, spec_path):
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    r = hub.api("DELETE", f"/users/student/servers/{spec.server_name}")
    assert r.status_code in (202, 204)
    hub.wait_stopped("student", spec.server_name)


def test_launch_names_cannot_be_taken_by_other_environments(hub, spec_path, project_repo):
    spec = providers.parse("git", spec_path[4:], allow_local=True)
    # users cannot take the names launch links use ...
    mallory = hub.user_token("mallory")
    r = hub.service_api(
        "POST",
        "/environments",
        token=mallory,
        json={"name": "git-squat-12345678", "repo": f"file://{project_repo}"},
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
    got = events(hub, mallory, "git/" + quote("file:///srv/other", safe="") + "/main")
    assert got[-1]["phase"] == "failed"
    assert "not this repository's" in got[-1]["message"]
    assert spec.environment_name != other.environment_name
