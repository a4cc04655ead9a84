"""Going back to an older commit makes its (cached) image current again."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tljh_repo2docker.catalogue import Catalogue

from .conftest import run_cli
from .dockerfixtures import commit_change

pytestmark = pytest.mark.docker


def test_rebuilding_an_older_commit_makes_it_current(hub, git_repo, hub_name):
    url = f"file://{git_repo}"
    old = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=git_repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    run_cli(hub, "build", url, "--ref", old, "--name", "versions")
    new = commit_change(git_repo, "RUN echo two > /tmp/two")
    run_cli(hub, "build", url, "--ref", new, "--name", "versions")

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
