"""Browser test: an admin adds an environment and watches its build log to the
end, then a user starts a server in it; plain users can look but not add.

A real JupyterHub, configurable-http-proxy, the hub-managed environments
service, Docker and repo2docker, driven through Debian's Chromium. The tests
run in order and share one hub: later ones use the environment the first built.
Every page is saved to ui-tests/screenshots/NN-<name>.png; the plugin's own
pages also in the dark theme (-dark) and on a phone (-phone), and axe-core
checks each of them (pagecheck.py).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.dockerfixtures import commit_change, containers, docker, inspect, make_git_repo
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


def test_admin_adds_an_environment_and_watches_the_build(
    hub, git_repo, new_context, screenshot, look
):
    context, problems = new_context()
    page = context.new_page()

    login(page, hub, "admin", next_url="/hub/home", shot=screenshot)
    page.wait_for_url("**/hub/home")
    nav = page.locator("#tljh-repo2docker-nav")
    expect(nav).to_be_visible()
    expect(nav).to_have_text("Environments")
    screenshot(page, "admin-hub-home")

    # nothing built yet: the picker says so, and its Start button is disabled
    page.goto(f"{hub.url}/hub/spawn/admin")
    empty = page.locator("#r2d-no-environments")
    expect(empty).to_be_visible()
    expect(empty.locator("a[href$='/services/environments/new']")).to_have_count(1)
    expect(page.locator("#spawn_form [type=submit]")).to_be_disabled()
    look(page, "admin-picker-empty", include=[".r2d-picker"])
    page.goto(f"{hub.url}/hub/home")

    # the navbar link goes through the hub's OAuth into the service
    page.locator("#tljh-repo2docker-nav").click()
    page.wait_for_url(hub.service_url + "/")
    expect(page.locator("h1")).to_have_text("Environments")
    expect(page.locator("main")).to_contain_text("No environment yet.")
    # the service's pages are hub pages: its navbar (with Admin for an admin)
    expect(page.locator("#thenavbar a[href$='/hub/admin']")).to_have_count(1)
    expect(page.locator("#tljh-repo2docker-nav")).to_have_attribute("aria-current", "page")
    # the admin is told what the build policy lets users do (here: admins only)
    expect(page.locator("#build-policy-note")).to_contain_text("Only administrators can add")
    look(page, "admin-environments-empty")

    page.click("#add-environment")
    page.wait_for_url(hub.service_url + "/new")
    repo_url = f"file://{git_repo}"
    page.fill("#repo", repo_url)
    # a name is suggested from the repository URL (the last path segment)
    expect(page.locator("#name")).to_have_value(git_repo.name.lower())
    page.fill("#ref", "main")
    page.fill("#name", ENV_NAME)
    page.fill("#display_name", ENV_DISPLAY)
    page.fill("#mem_limit", MEM_LIMIT)
    # picker starts copy the course's files unless the admin unticks it
    expect(page.locator("#copy_files")).to_be_checked()
    look(page, "admin-add-form-filled")
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
    # numbered within the environment, the status in a live region, the log focusable
    expect(page.locator("h1")).to_contain_text("Build 1")
    expect(page.locator("#build-state")).to_have_attribute("aria-live", "polite")
    expect(log).to_have_attribute("tabindex", "0")
    # the elapsed time counts while it runs
    page.wait_for_function(
        "() => /(waiting|running) for \\d/.test(document.getElementById('elapsed').textContent)"
    )
    look(page, "admin-build-in-progress")

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
    # the result, without a reload: how long it took and a start button
    expect(page.locator("#elapsed")).to_contain_text("took")
    expect(page.locator("#build-succeeded #start-server")).to_have_attribute(
        "href", re.compile(rf"/hub/spawn/admin/{ENV_NAME}\?environment={ENV_NAME}$")
    )
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
    look(page, "admin-build-succeeded")

    # reloaded, the page renders the finished build from the server
    page.reload()
    expect(page.locator("#build-status [data-status]")).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(log).to_have_attribute("data-final", "true")
    expect(page.locator("#build-commit")).to_be_visible()
    assert "Built image" in log.text_content()
    expect(page.locator("#build-succeeded #start-server")).to_be_visible()
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
    expect(page.locator("#start-server")).to_be_visible()
    # per-environment build numbers, readable times, no empty table header
    expect(page.locator("#builds tbody td").first).to_have_text("1")
    expect(page.locator("#builds time").first).to_have_text(re.compile(r"just now|minutes? ago"))
    assert page.locator("th:empty").count() == 0
    expect(page.locator("#copy-files")).to_contain_text(f"~/{ENV_NAME}")
    expect(page.locator("#edit-form #copy_files")).to_be_checked()
    look(page, "admin-environment")

    # and back to the list, which now has it
    page.click(f"main a[href='{SERVICE_PATH}']")
    page.wait_for_url(hub.service_url + "/")
    row = page.locator(f"#environments tr[data-environment='{ENV_NAME}']")
    expect(row).to_have_count(1)
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "succeeded")
    expect(row.locator("strong i")).to_have_count(0)
    expect(row.locator("a[data-action=start]")).to_have_count(1)
    look(page, "admin-environments-list")

    assert service_problems(problems) == []


def test_add_form_refuses_a_bad_name_and_keeps_the_input(hub, git_repo, new_context, look):
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
    # the field that failed is marked
    expect(page.locator("#repo")).to_have_class(re.compile(r"\bis-invalid\b"))
    expect(page.locator("#repo")).to_have_attribute("aria-invalid", "true")
    look(page, "admin-add-form-bad-name")

    # nothing was created
    page.goto(hub.service_url + "/")
    expect(page.locator("#environments tr[data-environment]")).to_have_count(1)
    assert service_problems(problems, expected_errors=("/new",)) == []


def test_plain_user_sees_environments_but_cannot_add(hub, new_context, look):
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
    # no Admin link, and no count of other users' servers
    expect(page.locator("#thenavbar a[href$='/hub/admin']")).to_have_count(0)
    expect(page.locator("#environments thead")).to_contain_text("Your servers")
    look(page, "user-environments-list")

    # nor can they manage it from its page
    page.click(f"#environments a[href$='environments/{ENV_NAME}']")
    page.wait_for_url(f"{hub.service_url}/environments/{ENV_NAME}")
    for selector in ("#rebuild", "#edit-form", "#delete-form"):
        expect(page.locator(selector)).to_have_count(0)
    look(page, "user-environment")

    response = page.goto(hub.service_url + "/new")
    assert response.status == 403
    expect(page.locator(".r2d-error")).to_contain_text(
        re.compile(r"Only administrators|may not build")
    )
    expect(page.locator("main form")).to_have_count(0)
    look(page, "user-new-forbidden")
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


def test_user_starts_a_server_in_the_new_environment(hub, hub_name, new_context, screenshot, look):
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
        # the hub's catalogue may still hold the empty listing of the first
        # test's picker for one refresh (stale-while-revalidate)
        if not choice.count():
            page.wait_for_timeout(600)
            page.reload()
        expect(choice).to_have_count(1)
        label = page.locator(f"div.r2d-env[data-environment='{ENV_NAME}']")
        expect(label).to_contain_text(ENV_DISPLAY)
        expect(label.locator("strong i")).to_have_count(0)
        expect(label).to_contain_text(f"{MEM_LIMIT} memory")
        # the only environment is preselected
        expect(choice).to_be_checked()
        look(page, "user-spawn-form", include=[".r2d-picker"])

        page.click("#spawn_form button[type=submit]")
        page.wait_for_url(
            re.compile(rf"/(hub/spawn-pending/{user}|user/{user}/)"), timeout=SPAWN_TIMEOUT_MS
        )
        if "/spawn-pending/" in page.url:
            screenshot(page, "user-spawn-pending")
        wait_for_lab(page, user, SPAWN_TIMEOUT_MS / 1000)
        page.wait_for_selector("#jp-main-dock-panel", timeout=SPAWN_TIMEOUT_MS)
        expect(page.locator(".jp-LabShell")).to_be_visible()
        # the course's files, copied once into ~/<environment>, open in the file browser
        assert f"/user/{user}/lab/tree/{ENV_NAME}" in page.url
        expect(page.locator(".jp-BreadCrumbs")).to_contain_text(ENV_NAME, timeout=60_000)
        expect(page.locator(".jp-DirListing-item", has_text="lesson-1.ipynb")).to_have_count(1)
        # let the launcher render before the picture
        page.wait_for_selector(".jp-Launcher", timeout=60_000)
        screenshot(page, "user-jupyterlab")

        # the server runs the image just built
        (cid,) = containers(hub_name, user, all_states=False)
        image_labels = inspect(inspect(cid)["Image"])["Config"]["Labels"]
        assert image_labels[labels.ENVIRONMENT] == ENV_NAME
        assert image_labels[labels.MEM_LIMIT] == MEM_LIMIT

        # My servers: the running server, as cards on a phone
        page.goto(hub.service_url + "/servers")
        expect(page.locator("#servers tr[data-server=''] a[data-action=open]")).to_have_count(1)
        look(page, "user-my-servers")

        # stopped, its Start opens it again through the hub (no form, no wait here)
        r = hub.api("DELETE", f"/users/{user}/server")
        assert r.status_code in (202, 204), r.text
        hub.wait_stopped(user)
        page.reload()
        start = page.locator("#servers tr[data-server=''] a[data-action=start]")
        expect(start).to_have_attribute("href", f"/hub/spawn/{user}?environment={ENV_NAME}")
        start.click()
        wait_for_lab(page, user, SPAWN_TIMEOUT_MS / 1000)
        assert service_problems(problems) == []
    finally:
        r = hub.api("DELETE", f"/users/{user}/server")
        if r.status_code in (202, 204):
            hub.wait_stopped(user)


def test_the_service_follows_the_hubs_theme_and_phone_menu(hub, new_context, screenshot):
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, "admin", next_url=SERVICE_PATH)
    page.wait_for_url(hub.service_url + "/")
    html = page.locator("html")
    expect(html).to_have_attribute("data-bs-theme", "light")
    # the hub's own toggle, on the service's page, switches the hub's theme
    page.click("#dark-theme-toggle")
    expect(html).to_have_attribute("data-bs-theme", "dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(33, 37, 41)", background  # Bootstrap's dark body
    # ... and it stays on the next page, the hub's pages included
    page.click(f"#environments a[href$='environments/{ENV_NAME}']")
    expect(html).to_have_attribute("data-bs-theme", "dark")
    screenshot(page, "theme-dark-environment")
    page.goto(f"{hub.url}/hub/home")
    expect(html).to_have_attribute("data-bs-theme", "dark")
    page.goto(hub.service_url + "/servers")
    page.click("#dark-theme-toggle")
    expect(html).to_have_attribute("data-bs-theme", "light")

    # on a phone the navbar collapses behind the hub's menu button
    page.set_viewport_size({"width": 390, "height": 844})
    nav = page.locator("#tljh-repo2docker-nav")
    expect(nav).to_be_hidden()
    page.click("nav .navbar-toggler")
    expect(nav).to_be_visible()
    page.wait_for_selector("#thenavbar.show:not(.collapsing)")  # opened all the way
    screenshot(page, "phone-menu-open")
    nav.click()
    page.wait_for_url(hub.service_url + "/")
    assert service_problems(problems) == []


def add_catalogue_images(hub_name: str, base_image: str, owner: str) -> list[str]:
    """Seven more environments, as labelled images (what a build leaves), in
    a second: the picker's filter and groups need many."""
    suffix = hub_name.rsplit("-", 1)[1]
    names = []
    for n in range(7):
        name = f"extra-{n}-{suffix}"
        mine = n == 6
        values = labels.make_labels(
            hub=hub_name,
            environment=name,
            display_name=f"Extra {n}" + (" (mine)" if mine else ""),
            repo=f"https://example.org/course/extra-{n}",
            ref="main",
            commit=f"{n:x}" * 40,
            mem_limit=None,
            cpu_limit=None,
            built_by=owner if mine else "admin",
            built_at=f"2026-11-0{n + 1}T10:00:00Z",
            owner=owner if mine else "",
            visibility="private" if mine else "public",
        )
        args = [a for k, v in values.items() for a in ("--label", f"{k}={v}")]
        tag = f"tljh-r2d-test/{name}:{f'{n:x}' * 12}"
        built = subprocess.run(
            ["docker", "build", "-q", "-t", tag, *args, "-"],
            input=f"FROM {base_image}\n",
            text=True,
            capture_output=True,
        )
        assert built.returncode == 0, built.stderr
        names.append(name)
    return names


def test_a_picker_with_many_environments(hub, hub_name, new_context, look):
    user = "alice-" + hub_name.rsplit("-", 1)[1]  # started ui-env in an earlier test
    # FROM needs a tag (a short image id reads as a repository name)
    ui_image = docker(
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        f"label={labels.ENVIRONMENT}={ENV_NAME}",
        "--filter",
        f"label={labels.HUB}={hub_name}",
    ).split()[0]
    extra = add_catalogue_images(hub_name, ui_image, owner=user)
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, user, next_url=f"/hub/spawn/{user}/second")
    page.wait_for_url(f"**/hub/spawn/{user}/second")
    # the catalogue refreshes in the background: a second look has them all
    for _ in range(20):
        if page.locator("input[name=environment]").count() == 8:
            break
        page.wait_for_timeout(300)
        page.reload()
    expect(page.locator("input[name=environment]")).to_have_count(8)
    # yesterday's choice is preselected, not the first card
    expect(page.locator(f"input[name=environment][value='{ENV_NAME}']")).to_be_checked()
    expect(page.locator(f"div.r2d-env[data-environment='{ENV_NAME}']")).to_contain_text("last used")
    expect(page.locator(f"input[value='{extra[0]}']")).not_to_be_checked()
    # groups: the user's own, then for everyone
    legends = page.locator(".r2d-picker legend")
    expect(legends).to_have_count(2)
    expect(legends.nth(0)).to_contain_text("Your environments (1)")
    expect(legends.nth(1)).to_contain_text("For everyone (7)")
    look(page, "user-picker-many", include=[".r2d-picker"])
    # the filter box narrows the cards, never hiding the chosen one
    page.fill("#r2d-filter", "extra-3")
    visible = page.locator(".r2d-picker .r2d-env:visible")
    expect(visible).to_have_count(2)
    expect(page.locator("#r2d-filter-count")).to_have_text("2 of 8 shown")
    look(page, "user-picker-filtered", include=[".r2d-picker"], phone=False)
    assert service_problems(problems) == []


def test_a_failed_build_shows_its_errors_first(hub, hub_name, tmp_path, new_context, look):
    repo = make_git_repo(tmp_path / "broken", marker=hub_name)
    # a moment of running first, so that the page sees the failure live
    commit_change(repo, "RUN sleep 3")
    commit_change(repo, "RUN echo 'ERROR: the course data is missing' >&2 && false")
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, "admin", next_url=SERVICE_PATH + "new")
    page.wait_for_url(hub.service_url + "/new")
    page.fill("#repo", f"file://{repo}")
    page.fill("#ref", "main")
    page.fill("#name", "ui-broken")
    page.click("#submit-environment")
    page.wait_for_url(re.compile(r"/environments/ui-broken/builds/\d+$"))
    page.evaluate("window.__r2dSamePage = true")
    page.wait_for_selector("#build-status [data-status=failed]", timeout=BUILD_TIMEOUT_MS)
    assert page.evaluate("window.__r2dSamePage === true"), "the build page was reloaded"
    error = page.locator("#build-error")
    expect(error).to_contain_text("The build failed.")
    summary = page.locator("#build-error-summary")
    expect(summary).to_contain_text("ERROR: the course data is missing")
    assert "docker buildx" not in summary.text_content()
    # the summary comes before the log, and both can be scrolled with the keyboard
    assert summary.bounding_box()["y"] < page.locator("#log").bounding_box()["y"]
    expect(summary).to_have_attribute("tabindex", "0")
    look(page, "admin-build-failed")
    # the same, rendered by the service after a reload
    page.reload()
    expect(page.locator("#build-error-summary")).to_contain_text("the course data is missing")
    assert service_problems(problems) == []


def test_delete_is_confirmed_in_the_browser(hub, new_context, look):
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, "admin", next_url=f"{SERVICE_PATH}environments/{ENV_NAME}")
    page.wait_for_url(f"{hub.service_url}/environments/{ENV_NAME}")

    # a save says so
    page.fill("#display_name", "UI test environment, renamed")
    page.click("#save")
    page.wait_for_url(f"{hub.service_url}/environments/{ENV_NAME}?saved=1")
    expect(page.locator("#page-message")).to_contain_text("Saved")
    expect(page.locator("h1")).to_contain_text("renamed")

    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.fill("#confirm", "not-the-name")
    page.click("#delete")
    confirm = page.locator("#confirm")
    expect(confirm).to_have_class(re.compile(r"\bis-invalid\b"))
    expect(page.locator("#delete-form #confirm-help")).to_contain_text(f"Type {ENV_NAME}")
    assert posts == [], "the browser sent a delete that does not match"
    look(page, "admin-delete-mismatch")

    # the service checks too; its answer is shown inside the Delete box
    # (form.submit() skips the page's own check, as a client without scripts would)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.evaluate(
            "() => { const f = document.getElementById('delete-form');"
            " f.elements.confirm.value = 'still-wrong'; f.submit(); }"
        )
    assert posted.value.status == 400
    expect(page.locator("#delete-form #delete-error")).to_contain_text("type the environment")
    expect(page.locator("#page-error")).to_have_count(0)
    look(page, "admin-delete-refused", phone=False)

    page.fill("#confirm", ENV_NAME)
    page.click("#delete")
    page.wait_for_url(hub.service_url + "/")
    expect(page.locator(f"#environments tr[data-environment='{ENV_NAME}']")).to_have_count(0)
    assert service_problems(problems, expected_errors=("/delete",)) == []
