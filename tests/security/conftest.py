"""A hub as an admin who opened the network rules for one loopback git server
would configure it: users can build from it; everything else stays closed."""

from __future__ import annotations

import secrets
import sys

import pytest

from ..dockerfixtures import SINGLEUSER_IMAGE, dump_container_logs, remove_hub_objects
from ..hubprocess import HubProcess, hub_settings_for
from .client import Service
from .gitserver import GitServer


@pytest.fixture(scope="module")
def git_root(tmp_path_factory):
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def git_server(git_root):
    with GitServer(git_root) as server:
        yield server


@pytest.fixture(scope="module")
def open_hub(docker_ready, tmp_path_factory, request):
    """A hub whose config.d allows 127.0.0.0/8 and the single-user image as a base."""
    hub_name = f"test-{secrets.token_hex(4)}"
    prefix = tmp_path_factory.mktemp("tljh")
    config_d = prefix / "config" / "jupyterhub_config.d"
    config_d.mkdir(parents=True)
    (config_d / "50-security-tests.py").write_text(
        'c.BuildSettings.allowed_networks = ["127.0.0.0/8"]\n'
        f"c.BuildSettings.allowed_base_images = [{SINGLEUSER_IMAGE!r}]\n"
        "c.BuildSettings.log_max_line_bytes = 2000\n"
        "c.BuildSettings.log_max_bytes = 40000\n"
    )
    settings = hub_settings_for(hub_name, str(tmp_path_factory.mktemp("homes")))
    process = HubProcess(prefix, settings, token=secrets.token_hex(16))
    process.hub_name = hub_name
    try:
        yield process.start()
    finally:
        if getattr(request.node, "_failed", False):
            sys.stderr.write(f"\n=== hub log ===\n{process.log_tail(200)}\n")
            sys.stderr.write(f"=== containers ===\n{dump_container_logs(hub_name)}\n")
        process.stop()
        remove_hub_objects(hub_name)


@pytest.fixture(scope="module")
def open_service(open_hub):
    return Service(open_hub)
