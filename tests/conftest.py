"""Shared fixtures. Tests marked ``docker`` use the real Docker engine, a real
JupyterHub and configurable-http-proxy; ``scripts/test`` sets all of them up.
"""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from .dockerfixtures import dump_container_logs, make_git_repo, remove_hub_objects
from .hubprocess import HubProcess, hub_settings_for, missing_tools
from .swarm.cluster import Cluster, missing_prerequisites


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs the Docker engine (run for real in CI)")
    config.addinivalue_line("markers", "tljh: a real TLJH install in a systemd container")


@pytest.fixture(scope="session")
def docker_ready():
    """Fail (never skip) when Docker is missing: CI must run these tests."""
    problem = missing_tools()
    if problem:
        pytest.fail(problem)


@pytest.fixture(scope="module")
def hub_name():
    return f"test-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory, hub_name):
    return make_git_repo(tmp_path_factory.mktemp("repo") / "env", marker=hub_name)


@pytest.fixture(scope="module")
def hub_settings(tmp_path_factory, hub_name):
    return hub_settings_for(hub_name, str(tmp_path_factory.mktemp("homes")))


@pytest.fixture(scope="module")
def hub(docker_ready, tmp_path_factory, hub_name, hub_settings, request):
    prefix = tmp_path_factory.mktemp("tljh")
    process = HubProcess(prefix, hub_settings, token=secrets.token_hex(16))
    try:
        yield process.start()
    finally:
        failed = getattr(request.node, "_failed", False)
        if failed:
            sys.stderr.write(f"\n=== hub log ===\n{process.log_tail(200)}\n")
            sys.stderr.write(f"=== containers ===\n{dump_container_logs(hub_name)}\n")
        process.stop()
        remove_hub_objects(hub_name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets module fixtures know that a test failed, to dump logs.
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.module_failed = True
        for node in (item, item.parent):
            node._failed = True


def run_cli(hub: HubProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The tljh-repo2docker command with the hub's own config.yaml."""
    result = subprocess.run(
        [sys.executable, "-m", "tljh_repo2docker", *args],
        env=hub.env,
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"CLI failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def registry(docker_ready):
    """A real registry alone (the swarm harness's), for a module; nothing left after."""
    problem = missing_prerequisites()
    if problem:
        pytest.fail(problem)
    cluster = Cluster(workers=0)
    try:
        yield cluster.start_registry()
    finally:
        cluster.close()
        assert not cluster.leftovers()
