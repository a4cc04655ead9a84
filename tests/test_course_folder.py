"""Picker starts get the course's files (issue 11, item 1), with a real
Docker engine, hub, proxy and repo2docker build.

A student who starts the course environment from the picker finds the
repository's files in ``~/<environment>``, copied once and opened in
JupyterLab; their own changes are never overwritten; an admin can switch the
copy off per environment; an image with nothing to copy makes no folder; and
whatever the student already has under that name is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import urlsplit

import pytest
import requests

from .dockerfixtures import SINGLEUSER_IMAGE, commit_all, containers, inspect, make_git_repo

pytestmark = pytest.mark.docker

LESSON = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Lesson 1"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def course_repo(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("course") / "course", marker=hub_name)
    # what repo2docker does for every build pack: the repository in the home
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    )
    (path / "lesson-1.ipynb").write_text(json.dumps(LESSON))
    (path / "data").mkdir()
    (path / "data" / "table.csv").write_text("a,b\n1,2\n")
    commit_all(path, "course files")
    return path


@pytest.fixture(scope="module")
def admin(hub):
    return hub.user_token("admin")


@pytest.fixture(scope="module")
def course(hub, course_repo, admin):
    build = hub.build_environment("course", f"file://{course_repo}", "main", admin)
    assert build["status"] == "succeeded", build
    return "course"


@pytest.fixture(scope="module")
def plain(hub, git_repo, admin):
    # its image's home has only the image user's dot files
    build = hub.build_environment("plain", f"file://{git_repo}", "main", admin)
    assert build["status"] == "succeeded", build
    return "plain"


def home(hub_settings, user):
    return os.path.join(hub_settings["homes_dir"], f"jupyter-{user}")


def start(hub, user, environment):
    hub.api("POST", f"/users/{user}")  # 201, or 409 when there
    r = hub.api("POST", f"/users/{user}/server", json={"environment": environment})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user)


def stop(hub, user):
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped(user)


def default_url(hub_name, user) -> str:
    (cid,) = containers(hub_name, user, all_states=False)
    env = dict(item.split("=", 1) for item in inspect(cid)["Config"]["Env"])
    return env.get("JUPYTERHUB_DEFAULT_URL", "")


def landing(hub, user, token) -> str:
    """Where the server sends someone who opens it (what the hub opens
    after a picker start)."""
    r = requests.get(
        f"{hub.url}/user/{user}/",
        headers={"Authorization": f"token {token}"},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code in (301, 302), (r.status_code, r.text[:300])
    return urlsplit(r.headers["Location"]).path


def contents(hub, user, token, path, **kwargs):
    return requests.request(
        kwargs.pop("method", "GET"),
        f"{hub.url}/user/{user}/api/contents/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        **kwargs,
    )


def test_a_picker_start_copies_the_course_files_and_opens_them(hub, course, hub_settings, hub_name):
    token = hub.user_token("ann")
    start(hub, "ann", course)
    folder = os.path.join(home(hub_settings, "ann"), "course")
    info = os.lstat(folder)
    assert info.st_uid == 1000, "the copy belongs to the home's owner"
    assert json.loads(open(os.path.join(folder, "lesson-1.ipynb")).read()) == LESSON
    assert open(os.path.join(folder, "data", "table.csv")).read() == "a,b\n1,2\n"
    assert not os.path.exists(os.path.join(folder, ".git")), "hidden entries stay behind"
    assert not os.path.exists(os.path.join(home(hub_settings, "ann"), "lesson-1.ipynb"))
    assert default_url(hub_name, "ann") == "/lab/tree/course"
    assert landing(hub, "ann", token).endswith("/user/ann/lab/tree/course")
    # and the server sees them where the student looks
    r = contents(hub, "ann", token, "course/lesson-1.ipynb")
    assert r.status_code == 200, r.text
    assert r.json()["content"]["cells"][0]["source"] == "# Lesson 1"


def test_the_students_changes_are_never_overwritten(hub, course, hub_settings):
    token = hub.user_token("ann")
    mine = dict(LESSON, cells=[{"cell_type": "markdown", "metadata": {}, "source": "my notes"}])
    r = contents(
        hub,
        "ann",
        token,
        "course/lesson-1.ipynb",
        method="PUT",
        json={"type": "notebook", "format": "json", "content": mine},
    )
    assert r.status_code == 200, r.text
    stop(hub, "ann")
    start(hub, "ann", course)
    saved = json.loads(
        open(os.path.join(home(hub_settings, "ann"), "course", "lesson-1.ipynb")).read()
    )
    assert "".join(saved["cells"][0]["source"]) == "my notes"
    stop(hub, "ann")


def test_a_deleted_folder_comes_back_fresh_at_the_next_start(hub, course, hub_settings):
    folder = os.path.join(home(hub_settings, "ann"), "course")
    shutil.rmtree(folder)  # what the student does to get a fresh copy
    start(hub, "ann", course)
    assert json.loads(open(os.path.join(folder, "lesson-1.ipynb")).read()) == LESSON
    stop(hub, "ann")


def test_something_of_the_students_under_that_name_is_left_alone(
    hub, course, hub_settings, hub_name
):
    token = hub.user_token("cat")
    path = home(hub_settings, "cat")
    os.makedirs(path, mode=0o700)
    os.chown(path, 1000, 100)
    mine = os.path.join(path, "course")
    with open(mine, "w") as f:
        f.write("a file of mine called course")
    os.chown(mine, 1000, 100)
    start(hub, "cat", course)
    assert open(mine).read() == "a file of mine called course"
    assert default_url(hub_name, "cat") in ("", "/lab"), "nothing to open: the hub's default"
    assert contents(hub, "cat", token, "").status_code == 200
    stop(hub, "cat")


def test_an_admin_switches_the_copy_off_per_environment(hub, course, admin, hub_settings, hub_name):
    for bad in ("yes", 1, None, ["true"]):
        r = hub.service_api("PATCH", "/environments/course", admin, json={"copy_files": bad})
        assert r.status_code == 400, r.text
        assert "copy_files" in r.text
    assert hub.service_api("GET", "/environments/course", admin).json()["copy_files"] is True

    r = hub.service_api("PATCH", "/environments/course", admin, json={"copy_files": False})
    assert r.status_code == 200, r.text
    assert r.json()["copy_files"] is False
    start(hub, "bea", course)
    assert not os.path.lexists(os.path.join(home(hub_settings, "bea"), "course"))
    assert default_url(hub_name, "bea") in ("", "/lab")
    stop(hub, "bea")

    r = hub.service_api("PATCH", "/environments/course", admin, json={"copy_files": True})
    assert r.status_code == 200, r.text
    start(hub, "bea", course)
    assert os.path.isfile(os.path.join(home(hub_settings, "bea"), "course", "lesson-1.ipynb"))
    stop(hub, "bea")


def test_an_image_with_nothing_to_copy_makes_no_folder(hub, plain, hub_settings, hub_name):
    start(hub, "dan", plain)
    # only what the server itself writes (.local, .ipython)
    assert [n for n in os.listdir(home(hub_settings, "dan")) if not n.startswith(".")] == []
    assert default_url(hub_name, "dan") in ("", "/lab")
    stop(hub, "dan")
