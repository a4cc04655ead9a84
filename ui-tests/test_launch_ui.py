"""Browser test of a launch link: a student follows a Binder-style link,
logs in, watches the build, lands in JupyterLab at the named file inside the
project folder, and a second click comes back to the same server.

Screenshots: ui-tests/screenshots/NN-launch-*.png (used by docs/design.md).
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.dockerfixtures import SINGLEUSER_IMAGE, commit_change, containers, make_git_repo
from tljh_repo2docker import providers

pytestmark = [pytest.mark.docker, pytest.mark.browser]

PASSWORD = "test-password"
STUDENT = "student"


@pytest.fixture(scope="module")
def hub_settings(hub_settings):
    # launch links may build for any user here (the default build policy)
    return {**hub_settings, "build_policy": "users"}


@pytest.fixture(scope="module")
def course_repo(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("course") / "course", marker=hub_name)
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    )
    (path / "lesson.md").write_text("# Lesson one\n\nRead me first.\n")
    commit_change(path, "# course files")
    return path


@pytest.fixture(scope="module")
def launch(course_repo):
    spec = "git/" + quote(f"file://{course_repo}", safe="") + "/main"
    parsed = providers.parse("git", spec[4:], allow_local=True)
    return spec, parsed.server_name


def test_a_launch_link_builds_and_opens_the_file(hub, hub_name, new_context, screenshot, launch):
    spec, server = launch
    context, problems = new_context()
    page = context.new_page()
    page.goto(f"{hub.service_url}/v2/{spec}?labpath=lesson.md")
    page.wait_for_url("**/hub/login**")
    page.fill("#username_input", STUDENT)
    page.fill("#password_input", PASSWORD)
    screenshot(page, "launch-login")
    page.click("#login_submit")
    # the launch page shows Binder's phases and the build log
    page.wait_for_selector("body[data-phase]", timeout=60_000)
    expect(page.locator("h1")).to_contain_text("Launching")
    screenshot(page, "launch-building")
    page.wait_for_url(f"**/user/{STUDENT}/{server}/lab/tree/{server}/lesson.md", timeout=300_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    expect(page.locator(".lm-TabBar-tabLabel", has_text="lesson.md")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(1000)
    screenshot(page, "launch-jupyterlab")
    assert len(containers(hub_name, STUDENT)) == 1


def test_the_second_click_comes_back_to_the_same_server(
    hub, hub_name, new_context, screenshot, launch
):
    spec, server = launch
    (before,) = containers(hub_name, STUDENT)
    context, problems = new_context()
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", STUDENT)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(lambda u: "/hub/login" not in u)
    start = time.monotonic()
    page.goto(f"{hub.service_url}/v2/{spec}")
    page.wait_for_url(f"**/user/{STUDENT}/{server}/lab/tree/{server}", timeout=60_000)
    elapsed = time.monotonic() - start
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)
    screenshot(page, "launch-again")
    assert containers(hub_name, STUDENT) == [before], "the same server, not a new one"
    assert elapsed < 30, f"coming back took {elapsed:.1f} s"
    hub.api("DELETE", f"/users/{STUDENT}/servers/{server}")
    hub.wait_stopped(STUDENT, server)
