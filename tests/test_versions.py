"""Going back to an older commit makes its (cached) image current again."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from tljh_repo2docker.catalogue import Catalogue

from .conftest import run_cli
from .dockerfixtures import commit_change, docker

pytestmark = pytest.mark.docker


def test_rebuilding_an_older_commit_makes_it_current(hub, git_repo, hub_name):
    url = f"file://{git_repo}"
    old = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=git_repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    run_cli(hub, "build", url, "--ref", old, "--name", "versions")
    new = commit_change(git_repo, "RUN echo two > /tmp/two")
    run_cli(hub, "build", url, "--ref", new, "--name", "versions")
    # the service answers for it by its own URL at once, with no listing first
    r = hub.service_api("GET", "/environments/versions/versions", token=hub.user_token("admin"))
    assert r.status_code == 200, r.text
    assert [v["commit"] for v in r.json()["versions"]] == [new, old]

    def current():
        async def read():
            catalogue = Catalogue(hub_name)
            try:
                envs = await catalogue.environments(fresh=True)
            finally:
                await catalogue.close()
            return next(e for e in envs if e.environment == "versions").commit

        return asyncio.run(read())

    assert current() == new
    result = run_cli(hub, "build", url, "--ref", old, "--name", "versions")
    assert result.stdout.strip().splitlines()[-1].startswith("reused")
    assert current() == old


@pytest.fixture(scope="module")
def hub_settings(hub_settings):
    return {**hub_settings, "max_versions_per_environment": 2}


def test_old_versions_beyond_the_limit_are_removed(hub, git_repo, hub_name):
    admin = hub.user_token("admin")

    def api(method, path, **kw):
        return hub.service_api(method, path, token=admin, **kw)

    def build_and_wait(build_id):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            build = api("GET", f"/environments/gc/builds/{build_id}").json()
            if build["status"] not in ("queued", "running"):
                return build
            time.sleep(0.2)
        raise AssertionError("build did not finish")

    r = api("POST", "/environments", json={"name": "gc", "repo": f"file://{git_repo}"})
    assert r.status_code == 201, r.text
    first = build_and_wait(r.json()["latest_build"]["id"])
    images = [first["image"]]
    for n in range(2):
        commit_change(git_repo, f"RUN echo gc-{n} > /tmp/gc")
        r = api("POST", "/environments/gc/builds")
        assert r.status_code == 202, r.text
        images.append(build_and_wait(r.json()["id"])["image"])
    left = [v["image"] for v in api("GET", "/environments/gc/versions").json()["versions"]]
    assert left == [images[2], images[1]], left  # newest first; the oldest went
    assert docker("images", "-q", images[0]) == ""
