"""The admins' status page in a browser: reached from the navbar, readable
(axe-core) in the light and the dark theme and on a phone.

Screenshots: ui-tests/screenshots/NN-admin-status{,-dark,-phone}.png.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from test_ui import login

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def activity(hub, git_repo):
    """A build, a start and a refused start: every section has something."""
    admin = hub.user_token("admin")
    build = hub.build_environment("status-demo", f"file://{git_repo}", "main", admin)
    assert build["status"] == "succeeded", build
    for user in ("alice", "mallory"):
        hub.api("POST", f"/users/{user}")
    r = hub.api("POST", "/users/mallory/server", json={"environment": "no-such-env"})
    assert r.status_code == 400, r.text
    r = hub.api("POST", "/users/alice/server", json={"environment": "status-demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    hub.api("DELETE", "/users/alice/server")
    hub.wait_stopped("alice")


def test_admin_status_page_light_and_dark(hub, activity, new_context, look):
    context, problems = new_context()
    page = context.new_page()
    login(page, hub, "admin", next_url="/services/environments/")
    page.wait_for_url(hub.service_url + "/")
    page.locator("#tljh-repo2docker-status-nav").click()
    page.wait_for_url(hub.service_url + "/status")
    expect(page.locator("#tljh-repo2docker-status-nav")).to_have_attribute("aria-current", "page")
    expect(page.locator("#status-health .badge").first).to_have_text("all checks pass")
    expect(page.locator("#status-disk tr[data-environment='status-demo']")).to_have_count(1)
    expect(page.locator("#status-builds rect.r2d-bar-succeeded")).to_have_count(1)
    expect(page.locator("#status-spawns rect.r2d-bar-spawn-ok")).to_have_count(1)
    expect(page.locator("#status-failed tr.r2d-status-failed-start")).to_contain_text("mallory")
    # the charts take the theme's colours (Bootstrap's success differs in dark)
    bar = page.locator("#status-builds rect.r2d-bar-succeeded")
    light = bar.evaluate("e => getComputedStyle(e).fill")
    page.evaluate("document.documentElement.setAttribute('data-bs-theme', 'dark')")
    text = page.locator("#status-builds .r2d-chart-text").first
    dark_text = text.evaluate("e => getComputedStyle(e).fill")
    page.evaluate("document.documentElement.setAttribute('data-bs-theme', 'light')")
    light_text = text.evaluate("e => getComputedStyle(e).fill")
    assert light.startswith("rgb(")
    assert dark_text != light_text, (dark_text, light_text)
    look(page, "admin-status")
    assert [p for p in problems.on_service("/services/environments/")] == []
