"""Browser test of a launch link: a student follows a Binder-style link to a
repository served over http (this machine's git server, on a network the
admin allowed), logs in, is asked to confirm (a repository not launched
before: docs/security.md, "Launch links need consent"), confirms, watches the
build, lands in JupyterLab at the named file inside the project folder, and a
second click comes back to the same server without asking again.

Screenshots: ui-tests/screenshots/NN-launch-*.png (used by docs/design.md).
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.dockerfixtures import SINGLEUSER_IMAGE, commit_change, containers, make_git_repo
from tests.security.gitserver import GitServer
from tljh_repo2docker import providers

pytestmark = [pytest.mark.docker, pytest.mark.browser]

PASSWORD = "test-password"
STUDENT = "student"


@pytest.fixture(scope="module")
def hub_settings(hub_settings):
    return {
        **hub_settings,
        # launch links may build for any user here (the default build policy)
        "build_policy": "users",
        # the course is on this machine's git server (loopback is refused by
        # default), and its Dockerfile starts from the local single-user image
        "allowed_networks": ["127.0.0.0/8"],
        "allowed_base_images": [SINGLEUSER_IMAGE],
    }


@pytest.fixture(scope="module")
def served_root(tmp_path_factory):
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def git_server(served_root):
    with GitServer(served_root) as server:
        yield server


@pytest.fixture(scope="module")
def course_repo(served_root, hub_name):
    # a working tree <root>/course is served as http://.../course
    path = make_git_repo(served_root / "course", marker=hub_name)
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    )
    (path / "lesson.md").write_text("# Lesson one\n\nRead me first.\n")
    commit_change(path, "# course files")
    return path


@pytest.fixture(scope="module")
def launch(git_server, course_repo):
    url = f"http://{git_server.host}:{git_server.port}/{course_repo.name}"
    spec = "git/" + quote(url, safe="") + "/main"
    parsed = providers.parse("git", spec[4:])
    return spec, parsed.server_name, url


def course_fetches(git_server) -> list[str]:
    return [r for r in git_server.requests if "/course/" in r]


def test_a_launch_link_builds_and_opens_the_file(
    hub, hub_name, new_context, screenshot, launch, git_server
):
    spec, server, url = launch
    context, problems = new_context()
    page = context.new_page()
    page.goto(f"{hub.service_url}/v2/{spec}?labpath=lesson.md")
    page.wait_for_url("**/hub/login**")
    page.fill("#username_input", STUDENT)
    page.fill("#password_input", PASSWORD)
    screenshot(page, "launch-login")
    page.click("#login_submit")
    # a repository this student has not launched before: the page says what
    # would run and what it could reach, and asks; nothing runs or is fetched
    form = page.locator("form#launch-confirm")
    expect(form).to_be_visible(timeout=60_000)
    expect(page.locator("h1")).to_contain_text("Launch")
    expect(page.locator("#launch-what")).to_contain_text(url)
    expect(page.locator("#launch-what")).to_contain_text("main")
    expect(page.locator("#launch-reach")).to_contain_text(server)
    expect(page.locator("#whole_home")).not_to_be_checked()
    assert page.locator("body[data-phase]").count() == 0
    screenshot(page, "launch-consent")
    assert course_fetches(git_server) == []
    assert containers(hub_name, STUDENT) == []
    form.locator("button[type=submit]", has_text="Launch").click()
    # the launch page shows Binder's phases and the build log
    page.wait_for_selector("body[data-phase]", timeout=60_000)
    expect(page.locator("h1")).to_contain_text("Launching")
    # a wait shows progress: the bar, the seconds, the step in the tab title
    # and as the current step for screen readers
    expect(page.locator("#launch-progress")).to_be_visible()
    expect(page.locator("#launch-elapsed")).to_have_text(re.compile(r"^\d+ s$"))
    phase = page.evaluate("document.body.dataset.phase")
    assert page.title().split(" ")[0] in ("waiting", "fetching", "building", "built", "launching")
    assert page.locator("#phases [aria-current=step]").count() == 1, phase
    # the launch page says the same as the question: the project folder only
    expect(page.locator("main, body").first).to_contain_text(f"only the project folder ~/{server}")
    screenshot(page, "launch-building")
    # as BinderHub's page: the server's root + doc/tree/<labpath> (the project
    # folder is the server's root)
    page.wait_for_url(f"**/user/{STUDENT}/{server}/doc/tree/lesson.md**", timeout=300_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    # doc/tree/ opens JupyterLab's single-document mode (no tab bar): the
    # file's own text is on screen
    editor = page.locator("#jp-main-dock-panel .jp-FileEditor")
    expect(editor).to_be_visible(timeout=60_000)
    expect(editor).to_contain_text("Read me first.")
    page.wait_for_timeout(1000)
    screenshot(page, "launch-jupyterlab")
    assert len(containers(hub_name, STUDENT)) == 1
    assert course_fetches(git_server), "the build fetched the course over http"


def test_the_second_click_comes_back_to_the_same_server(
    hub, hub_name, new_context, screenshot, launch
):
    spec, server, _ = launch
    (before,) = containers(hub_name, STUDENT)
    context, problems = new_context()
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", STUDENT)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(lambda u: "/hub/login" not in u)
    start = time.monotonic()
    # confirmed once: the link goes straight through (the question would stop
    # the page at /v2/; nothing is clicked here)
    page.goto(f"{hub.service_url}/v2/{spec}")
    page.wait_for_url(f"**/user/{STUDENT}/{server}/lab**", timeout=60_000)
    elapsed = time.monotonic() - start
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)
    screenshot(page, "launch-again")
    assert containers(hub_name, STUDENT) == [before], "the same server, not a new one"
    assert elapsed < 30, f"coming back took {elapsed:.1f} s"
    # My servers names it by its repository, not by the server's slug
    page.goto(f"{hub.service_url}/servers")
    row = page.locator(f"#servers tr[data-server='{server}']")
    expect(row.locator(".r2d-server-title")).to_have_text(providers.parse("git", spec[4:]).label)
    expect(row).to_contain_text(f"from a launch link: {server}")
    screenshot(page, "launch-my-servers")
    hub.api("DELETE", f"/users/{STUDENT}/servers/{server}")
    hub.wait_stopped(STUDENT, server)


def test_a_failed_launch_says_why_first_then_shows_the_log(hub, new_context, screenshot, tmp_path):
    # file:// repositories are for admins (issue 8): the admin follows a link
    # to a repository whose build breaks
    broken = make_git_repo(tmp_path / "broken", marker="broken")
    commit_change(broken, "RUN echo step-that-breaks && exit 3")
    spec = "git/" + quote(f"file://{broken}", safe="") + "/main"
    context, problems = new_context()
    page = context.new_page()
    page.goto(f"{hub.service_url}/v2/{spec}")
    page.wait_for_url("**/hub/login**")
    page.fill("#username_input", "admin")
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    # a repository not launched before: admins are asked too (a link is not trusted)
    form = page.locator("form#launch-confirm")
    expect(form).to_be_visible(timeout=60_000)
    form.locator("button[type=submit]", has_text="Launch").click()
    page.wait_for_selector('body[data-phase="failed"]', timeout=300_000)
    error = page.locator("#launch-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Build failed")
    # with the build's own last error line, not the command line after it
    expect(page.locator("#launch-error-detail")).to_contain_text("exit code: 3")
    expect(page.locator("#launch-error-detail")).not_to_contain_text("docker")
    # the summary comes before the log, and the log is open below it
    box = page.locator("#launch-log-box")
    assert error.bounding_box()["y"] < box.bounding_box()["y"]
    expect(box).to_have_attribute("open", "")
    expect(page.locator("#launch-log")).to_contain_text("step-that-breaks")
    # the message is shown once, not also as the status line
    assert page.locator("#launch-message").inner_text().strip() == ""
    # reached phases in blue, the failed step in red, the rest untouched
    badge = page.locator("#phases [data-phase]")
    classes = {
        badge.nth(i).get_attribute("data-phase"): badge.nth(i).get_attribute("class")
        for i in range(badge.count())
    }
    assert "text-bg-primary" in classes["building"]
    assert "text-bg-danger" in classes["built"]
    for later in ("launching", "ready"):
        assert "text-bg-light" in classes[later]
    # the tab says so too, the clock stopped, and the bar turned red
    assert page.title().startswith("failed")
    expect(page.locator("#launch-progress-bar")).to_have_class(re.compile("bg-danger"))
    screenshot(page, "launch-failed")
