"""The hub, the environments service and the command line read one
configuration: tljh-config's ``repo2docker`` section, then TLJH's
``jupyterhub_config.d/*.py`` files, which win (the README offers them as the
alternative to tljh-config). Before, a ``c.BuildSettings.hub_name`` set in a
config.d file reached the hub only: the CLI and the service labelled and
listed images under another name, and every environment vanished from the
picker."""

from __future__ import annotations

import secrets

import pytest

from tljh_repo2docker import hubconfig

from .conftest import run_cli
from .dockerfixtures import inspect, make_git_repo, remove_hub_objects
from .hubprocess import HubProcess, hub_settings_for

pytestmark = pytest.mark.docker


def test_config_d_files_win_over_tljh_config_in_order(tmp_path):
    folder = tmp_path / "config" / "jupyterhub_config.d"
    folder.mkdir(parents=True)
    (folder / "10-a.py").write_text(
        "c.BuildSettings.hub_name = 'from-a'\nc.JupyterHub.admin_access = True\n"
    )
    (folder / "20-b.py").write_text("c.EnvironmentsService.build_concurrency = 3\n")
    (folder / "30-broken.py").write_text("raise RuntimeError('typo')\n")
    (folder / "notes.txt").write_text("c.BuildSettings.hub_name = 'never'\n")
    c, warnings = hubconfig.plugin_config(
        {"hub_name": "from-yaml", "image_prefix": "x/"}, str(tmp_path)
    )
    assert c.BuildSettings.hub_name == "from-a"
    assert c.BuildSettings.image_prefix == "x/"
    assert c.EnvironmentsService.build_concurrency == 3
    assert "JupyterHub" not in c  # only the plugin's own classes
    assert any("30-broken.py" in w for w in warnings)


def test_hub_service_and_cli_agree_on_a_config_d_setting(docker_ready, tmp_path):
    yaml_name = f"test-{secrets.token_hex(4)}"
    real_name = f"test-{secrets.token_hex(4)}"
    prefix = tmp_path / "tljh"
    folder = prefix / "config" / "jupyterhub_config.d"
    folder.mkdir(parents=True)
    (folder / "hub-name.py").write_text(f"c.BuildSettings.hub_name = {real_name!r}\n")
    repo = make_git_repo(tmp_path / "repo", marker=real_name)
    hub = HubProcess(
        prefix, hub_settings_for(yaml_name, str(tmp_path / "homes")), token=secrets.token_hex(16)
    )
    try:
        hub.start()
        # the CLI labels with the config.d name
        out = run_cli(hub, "build", f"file://{repo}", "--ref", "main", "--name", "agreed")
        image = out.stdout.strip().splitlines()[-1].split()[-1]
        assert inspect(image)["Config"]["Labels"]["tljh_repo2docker.hub"] == real_name
        # the service lists it
        admin = hub.user_token("admin")
        listed = hub.service_api("GET", "/environments", token=admin).json()["environments"]
        assert [e["name"] for e in listed] == ["agreed"]
        # and the hub's spawner offers it and starts it
        user = hub.user_token("alice")
        r = hub.api("POST", "/users/alice/server", token=user, json={"environment": "agreed"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("alice")
        hub.api("DELETE", "/users/alice/server", token=user)
        hub.wait_stopped("alice")
    finally:
        hub.stop()
        remove_hub_objects(real_name)
        remove_hub_objects(yaml_name)
