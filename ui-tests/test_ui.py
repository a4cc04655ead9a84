"""Browser test: an admin adds an environment and watches its build log to the
end, then a user starts a server in it; plain users can look but not add.

A real JupyterHub, configurable-http-proxy, the hub-managed environments
service, Docker and repo2docker, driven through Debian's Chromium. The tests
run in order and share one hub: later ones use the environment the first built.
Every page is saved to ui-tests/screenshots/NN-<name>.png.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.dockerfixtures import containers, inspect
from tljh_repo2docker import labels

pytestmark = [pytest.mark.docker, pytest.mark.browser]

ENV_NAME = "ui-env"
# markup in the display name must come out as text everywhere
ENV_DISPLAY = "UI test <i>environment</i>"
MEM_LIMIT = "512M"
BUILD_TIMEOUT_MS = 300_000
SPAWN_TIMEOUT_MS = 180_000
SERVICE_PATH = "/services/environments/"
PASSWORD = "test-password"  # HubProcess.env gives it to the DummyAuthenticator


def login(page, hub, name: str, next_url: str | None = None, shot=None):
    url = hub.url + "/hub/login"
    if next_url:
        url += f"?next={next_url}"
    page.goto(url)
    page.fill("#username_input", name)
    page.fill("#password_input", PASSWORD)
    if shot:
        shot(page, f"login-{name}")
    page.click("#login_submit")
    page.wait_for_url(lambda u: "/hub/login" not in u)


def service_problems(problems, expected_errors: tuple[str, ...] = ()) -> list[str]:
    """JavaScript errors and failed requests on the service's pages, but for
    the error statuses of the pages a test asked for (URL endings) and the log's
    event stream, which log.js closes (net::ERR_ABORTED) once the build ends."""

    def expected(p: str) -> bool:
        if p.startswith("requestfailed") and "/log?" in p and p.endswith("ERR_ABORTED"):
            return True
        return "Failed to load resource: the server responded with a status of" in p and any(
            p.endswith(f"{end})") for end in expected_errors
        )

    return [p for p in problems.on_service(SERVICE_PATH) if not expected(p)]


def test_admin_adds_an_environment_and_watches_the_build(hub, git_repo, new_context, screenshot):
    context, problems = new_context()
    page = context.new_page()

    login(page, hub, "admin", next_url="/hub/home", shot=screenshot)
    page.wait_for_url("**/hub/home")
    nav = page.locator("#tljh-repo2docker-nav")
    expect(nav).to_be_visible()
    expect(nav).to_have_text("Environments")
    screenshot(page, "admin-hub-home")

    # the navbar link goes through the hub's OAuth into the service
    nav.click()
    page.wait_for_url(hub.service_url + "/")
    expect(page.locator("h1")).to_have_text("Environments")
    expect(page.locator("main")).to_contain_text("No environment yet.")
    screenshot(page, "admin-environments-empty")

    page.click("#add-environment")
    page.wait_for_url(hub.service_url + "/new")
    repo_url = f"file://{git_repo}"
    page.fill("#repo", repo_url)
    page.fill("#ref", "main")
    page.fill("#name", ENV_NAME)
    page.fill("#display_name", ENV_DISPLAY)
    page.fill("#mem_limit", MEM_LIMIT)
    screenshot(page, "admin-add-form-filled")
    page.click("#submit-environment")

    # the build page, while the build runs
    page.wait_for_url(re.compile(rf"/environments/{ENV_NAME}/builds/\d+$"))
    page.evaluate("window.__r2dSamePage = true")
    badge = page.locator("#build-status .r2d-status")
    initial_status = badge.get_attribute("data-status")
    assert initial_status in ("queued", "running"), (
        f"the build was {initial_status!r} when its page loaded: nothing left to watch live"
    )
    log = page.locator("pre#log")
    expect(log).to_have_attribute("data-final", "false")
    expect(page.locator("#cancel")).to_be_visible()
    screenshot(page, "admin-build-in-progress")

    # the log grows and the badge flips without a reload
    page.wait_for_function(
        "() => document.getElementById('log').childNodes.length > 1",
        timeout=BUILD_TIMEOUT_MS,
    )
    page.wait_for_selector("#build-status [data-status=succeeded]", timeout=BUILD_TIMEOUT_MS)
    assert page.evaluate("window.__r2dSamePage === true"), "the build page was reloaded"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    expect(badge).to_have_text("succeeded")
    expect(log).to_have_attribute("data-final", "true")
    expect(page.locator("#cancel-form")).to_have_count(0)
    log_text = log.text_content()
    assert "Built image" in log_text, log_text[-2000:]
    live_lines = page.evaluate("document.getElementById('log').childNodes.length - 1")
    assert live_lines > 0
    # the pre scrolls (a long log must not stretch the page) and follows the end
    assert page.evaluate(
        "(() => { const p = document.getElementById('log');"
        " return p.scrollHeight <= p.clientHeight || "
        " p.scrollHeight - p.scrollTop - p.clientHeight < 40; })()"
    ), "the log does not follow its end"
    screenshot(page, "admin-build-succeeded")

    # reloaded, the page renders the finished build from the server
    page.reload()
    expect(page.locator("#build-status [data-status]")).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(log).to_have_attribute("data-final", "true")
    expect(page.locator("#build-commit")).to_be_visible()
    assert "Built image" in log.text_content()
    screenshot(page, "admin-build-reloaded")

    # the environment's page, through the link at the top of the build page
    page.click(f"main a[href$='environments/{ENV_NAME}']")
    page.wait_for_url(f"{hub.service_url}/environments/{ENV_NAME}")
    heading = page.locator("h1")
    expect(heading).to_contain_text(ENV_DISPLAY)  # shown as text ...
    expect(heading.locator("i")).to_have_count(0)  # ... not as markup
    facts = page.locator("dl.r2d-facts")
    expect(facts).to_contain_text(repo_url)
    expect(facts).to_contain_text(f"{MEM_LIMIT} memory")
    expect(facts.locator("[data-status]")).to_have_attribute("data-status", "succeeded")
    expect(facts).to_contain_text(f"tljh-r2d-test/{ENV_NAME}:")
    expect(facts).to_contain_text("by admin")
    expect(page.locator("#builds tbody tr")).to_have_count(1)
    expect(page.locator("#builds tbody [data-status]")).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(page.locator("#rebuild")).to_be_visible()
    screenshot(page, "admin-environment")

    # and back to the list, which now has it
    page.click(f"main a[href='{SERVICE_PATH}']")
    page.wait_for_url(hub.service_url + "/")
    row = page.locator(f"#environments tr[data-environment='{ENV_NAME}']")
    expect(row).to_have_count(1)
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "succeeded")
    expect(row.locator("strong i")).to_have_count(0)
    screenshot(page, "admin-environments-list")

    assert service_problems(problems) == []


def test_add_form_refuses_a_bad_name_and_keeps_the_input(hub, git_repo, new_context, screenshot):
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, "admin", next_url=SERVICE_PATH + "new")
    page.wait_for_url(hub.service_url + "/new")
    repo_url = f"file://{git_repo}"
    page.fill("#repo", repo_url)
    page.fill("#ref", "main")

    # the browser checks the name's pattern before anything is sent ...
    page.fill("#name", "Bad Name")
    page.click("#submit-environment")
    assert page.url == hub.service_url + "/new"
    assert page.eval_on_selector("#name", "el => el.validity.patternMismatch")
    expect(page.locator("#form-error")).to_have_count(0)

    # ... and the service refuses what the browser cannot check (an ftp:// repository)
    page.fill("#name", "good-name")
    page.fill("#repo", "ftp://example.org/repo")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("#submit-environment")
    assert posted.value.status == 400
    page.wait_for_load_state()
    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("repo")
    expect(page.locator("#repo")).to_have_value("ftp://example.org/repo")
    expect(page.locator("#ref")).to_have_value("main")
    expect(page.locator("#name")).to_have_value("good-name")
    screenshot(page, "admin-add-form-bad-name")

    # nothing was created
    page.goto(hub.service_url + "/")
    expect(page.locator("#environments tr[data-environment]")).to_have_count(1)
    assert service_problems(problems, expected_errors=("/new",)) == []


def test_plain_user_sees_environments_but_cannot_add(hub, new_context, screenshot):
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, "bob", next_url="/hub/home")
    page.wait_for_url("**/hub/home")
    nav = page.locator("#tljh-repo2docker-nav")
    expect(nav).to_be_visible()
    nav.click()
    page.wait_for_url(hub.service_url + "/")
    expect(page.locator(f"#environments tr[data-environment='{ENV_NAME}']")).to_have_count(1)
    expect(page.locator("#add-environment")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("Add environment")
    screenshot(page, "user-environments-list")

    # nor can they manage it from its page
    page.click(f"#environments a[href$='environments/{ENV_NAME}']")
    page.wait_for_url(f"{hub.service_url}/environments/{ENV_NAME}")
    for selector in ("#rebuild", "#edit-form", "#delete-form"):
        expect(page.locator(selector)).to_have_count(0)
    screenshot(page, "user-environment")

    response = page.goto(hub.service_url + "/new")
    assert response.status == 403
    expect(page.locator(".r2d-error")).to_contain_text(
        re.compile(r"Only administrators|may not build")
    )
    expect(page.locator("form")).to_have_count(0)
    screenshot(page, "user-new-forbidden")
    assert service_problems(problems, expected_errors=("/new",)) == []


def wait_for_lab(page, user: str, timeout: float):
    """Until the browser is sent to JupyterLab; fails at once when the hub
    says the spawn failed (spawn-pending's red bar, or its "Spawn failed" page)."""
    deadline = time.monotonic() + timeout
    lab = re.compile(rf"/user/{user}/lab")
    while time.monotonic() < deadline:
        if lab.search(page.url):
            return
        try:
            failed = page.locator("#progress-bar.bg-danger, h1:has-text('Spawn failed')")
            if failed.count():
                pytest.fail(f"the spawn failed: {page.locator('body').inner_text()[:1500]}")
        except PlaywrightError:
            pass  # navigating meanwhile
        page.wait_for_timeout(250)
    pytest.fail(f"no JupyterLab after {timeout} s; the browser is at {page.url}")


def test_user_starts_a_server_in_the_new_environment(hub, hub_name, new_context, screenshot):
    # Docker container names (jupyter-<user>) are global to the engine: a name of
    # this run's own, so that another hub on the machine cannot hold it
    user = "alice-" + hub_name.rsplit("-", 1)[1]
    context, problems = new_context()
    page = context.new_page()
    try:
        # a user without a server lands on the server picker after logging in
        login(page, hub, user, shot=screenshot)
        page.wait_for_url(re.compile(rf"/hub/spawn(/{user})?$"))
        choice = page.locator(f"input[name=environment][value='{ENV_NAME}']")
        expect(choice).to_have_count(1)
        label = page.locator(f"div.r2d-env[data-environment='{ENV_NAME}']")
        expect(label).to_contain_text(ENV_DISPLAY)
        expect(label.locator("strong i")).to_have_count(0)
        expect(label).to_contain_text(f"{MEM_LIMIT} memory")
        choice.check()
        expect(choice).to_be_checked()
        screenshot(page, "user-spawn-form")

        page.click("#spawn_form button[type=submit]")
        page.wait_for_url(
            re.compile(rf"/(hub/spawn-pending/{user}|user/{user}/)"), timeout=SPAWN_TIMEOUT_MS
        )
        if "/spawn-pending/" in page.url:
            screenshot(page, "user-spawn-pending")
        wait_for_lab(page, user, SPAWN_TIMEOUT_MS / 1000)
        page.wait_for_selector("#jp-main-dock-panel", timeout=SPAWN_TIMEOUT_MS)
        expect(page.locator(".jp-LabShell")).to_be_visible()
        # let the launcher render before the picture
        page.wait_for_selector(".jp-Launcher", timeout=60_000)
        screenshot(page, "user-jupyterlab")

        # the server runs the image just built
        (cid,) = containers(hub_name, user, all_states=False)
        image_labels = inspect(inspect(cid)["Image"])["Config"]["Labels"]
        assert image_labels[labels.ENVIRONMENT] == ENV_NAME
        assert image_labels[labels.MEM_LIMIT] == MEM_LIMIT
        assert service_problems(problems) == []
    finally:
        r = hub.api("DELETE", f"/users/{user}/server")
        if r.status_code in (202, 204):
            hub.wait_stopped(user)
