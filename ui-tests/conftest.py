"""Fixtures of the browser tests: a real hub (tests/hubprocess.py), Docker and
Debian's Chromium driven by Playwright.

Run from the repository root: ``.venv/bin/python -m pytest ui-tests -q``.
Screenshots of every page go to ``ui-tests/screenshots/NN-<name>.png``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.dockerfixtures import (  # noqa: E402
    commit_all,
    dump_container_logs,
    make_git_repo,
    remove_hub_objects,
)
from tests.hubprocess import (  # noqa: E402
    HubProcess,
    free_port,
    hub_settings_for,
    missing_tools,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = HERE / "screenshots"


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs the Docker engine (run for real in CI)")
    config.addinivalue_line("markers", "browser: drives Chromium with Playwright")


@pytest.fixture(scope="session")
def docker_ready():
    """Fail (never skip) when something the tests need is missing."""
    problem = missing_tools()
    if problem:
        pytest.fail(problem)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run scripts/setup-host --browser")


@pytest.fixture(scope="module")
def hub_name():
    return f"test-ui-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("repo") / "env", marker=hub_name)
    # a course: its files in the image's home, as repo2docker puts them
    with open(path / "Dockerfile", "a") as f:
        f.write("COPY --chown=1000:1000 lesson-1.ipynb /home/jovyan/\n")
    (path / "lesson-1.ipynb").write_text(json.dumps(LESSON))
    commit_all(path, "course files")
    return path


LESSON = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Lesson 1"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def hub_settings(tmp_path_factory, hub_name):
    # the scenario's plain user may look but not build (the default lets
    # every user build environments of their own)
    return hub_settings_for(hub_name, str(tmp_path_factory.mktemp("homes")), build_policy="admins")


def start_hub(tmp_path_factory, hub_settings, attempts: int = 3) -> HubProcess:
    """Start a hub, with fresh ports when one was taken meanwhile: free_port()
    only checks 127.0.0.1, and other test runs on this machine pick ports too."""
    for attempt in range(attempts):
        process = HubProcess(
            tmp_path_factory.mktemp("tljh"), hub_settings, token=secrets.token_hex(16)
        )
        try:
            return process.start()
        except RuntimeError as e:
            # stop what this attempt started: the hub, and a proxy that may
            # still run in the hub's session
            process.stop()
            if process.proc is not None:
                try:
                    os.killpg(process.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if "Address already in use" not in str(e) or attempt == attempts - 1:
                raise
            hub_settings["service_port"] = free_port()
            sys.stderr.write(f"hub start failed (port taken), retrying: {str(e)[-200:]}\n")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def hub(docker_ready, tmp_path_factory, hub_name, hub_settings, request):
    process = start_hub(tmp_path_factory, hub_settings)
    try:
        yield process
    finally:
        if getattr(request.node, "_failed", False):
            sys.stderr.write(f"\n=== hub log ===\n{process.log_tail(200)}\n")
            sys.stderr.write(f"=== containers ===\n{dump_container_logs(hub_name)}\n")
        process.stop()
        remove_hub_objects(hub_name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets module fixtures know that a test failed, to dump the hub's log.
    outcome = yield
    if outcome.get_result().failed:
        for node in (item, item.parent):
            node._failed = True


# --- browser ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(docker_ready, playwright_instance):
    browser = playwright_instance.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


class Screenshots:
    """Numbered full-page screenshots: ``NN-<name>.png``, in the order taken."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        self.taken: list[Path] = []

    def __call__(self, page, name: str) -> Path:
        self.count += 1
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        path = self.folder / f"{self.count:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture(scope="session")
def screenshot():
    SCREENSHOTS.mkdir(exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return Screenshots(SCREENSHOTS)


@pytest.fixture
def look(screenshot):
    """Checks a page with axe-core (light and dark) and photographs it in light,
    dark and on a phone: ``look(page, "name")``; see pagecheck.py."""
    from pagecheck import PageCheck

    check = PageCheck(screenshot)
    yield check
    check.assert_clean()


class PageProblems:
    """JavaScript errors and failed requests seen by a browser context."""

    def __init__(self):
        self.items: list[str] = []

    def watch(self, page):
        page.on("pageerror", lambda exc: self.items.append(f"pageerror {page.url}: {exc}"))
        page.on("console", lambda msg: self._console(page, msg))
        page.on(
            "requestfailed",
            lambda req: self.items.append(f"requestfailed {req.url}: {req.failure}"),
        )

    def _console(self, page, msg):
        if msg.type == "error":
            where = (msg.location or {}).get("url", "")
            self.items.append(f"console.error {page.url}: {msg.text} (at {where})")

    def on_service(self, service_path: str) -> list[str]:
        return [p for p in self.items if service_path in p]


@pytest.fixture
def new_context(browser, screenshot, request):
    """Opens fresh browser contexts (separate cookies: separate users). When
    the test fails, its open pages are saved as ``NN-failed-<test>.png`` and
    their URLs and JavaScript problems are printed."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        problems = PageProblems()
        context.on("page", problems.watch)
        contexts.append((context, problems))
        return context, problems

    yield make
    for context, problems in contexts:
        if getattr(request.node, "_failed", False):
            for page in context.pages:
                try:
                    path = screenshot(page, f"failed-{request.node.name}")
                except Exception as e:  # diagnostics only
                    path = f"no screenshot: {e}"
                sys.stderr.write(f"\n=== page {page.url} -> {path}\n")
            sys.stderr.write("\n".join(problems.items) + "\n")
        context.close()
