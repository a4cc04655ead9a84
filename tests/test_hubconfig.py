"""The TLJH hook's effect, on a real traitlets Config, as TLJH would call it."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pluggy
import pytest
import yaml
from jupyterhub.app import JupyterHub
from traitlets.config import Config

from tljh_repo2docker import hubconfig, plugin
from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.spawner import Repo2DockerSpawner


def tljh_defaults() -> Config:
    """What TLJH sets before it calls plugins (tljh/jupyterhub_config.py)."""
    c = Config()
    c.JupyterHub.spawner_class = "tljh.user_creating_spawner.UserCreatingSpawner"
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.hub_port = 15001
    c.Spawner.cmd = ["/opt/tljh/user/bin/jupyterhub-singleuser"]
    c.Spawner.default_url = "/lab"
    c.Spawner.mem_limit = None
    c.Authenticator.admin_users = {"teacher"}
    c.JupyterHub.services = [{"name": "cull-idle", "admin": True, "command": ["cull"]}]
    return c


@pytest.fixture
def tljh_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("TLJH_INSTALL_PREFIX", str(tmp_path))
    (tmp_path / "config").mkdir()

    def write(section: dict | None):
        data = {"users": {"admin": ["teacher"]}}
        if section is not None:
            data["repo2docker"] = section
        (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(data))

    return write


def run_hook(c: Config, bridge="172.17.0.1", monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setattr(hubconfig, "bridge_ip", lambda interface="docker0": bridge)
        # as on a fresh TLJH install: no Docker yet, so nothing to wait for
        monkeypatch.setattr(hubconfig, "docker_installed", lambda: False)
    plugin.tljh_custom_jupyterhub_config(c)
    return c


def test_hook_sets_spawner_network_and_cmd(tljh_prefix, monkeypatch):
    tljh_prefix(None)
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    assert c.JupyterHub.spawner_class == hubconfig.SPAWNER_CLASS
    assert c.JupyterHub.hub_ip == "172.17.0.1"
    assert c.JupyterHub.cleanup_servers is False
    spawner = Repo2DockerSpawner(config=c)
    # TLJH's c.Spawner.cmd must not reach containers
    assert spawner.cmd == ["jupyterhub-singleuser"]
    assert spawner.remove is True
    assert spawner.pull_policy == "never"
    assert spawner.extra_host_config == {"auto_remove": False}
    assert spawner.homes_dir == "/home"
    assert spawner.default_url == "/lab"


def test_settings_map_onto_traits(tljh_prefix, monkeypatch):
    tljh_prefix(
        {
            "homes_dir": "/srv/homes",
            "default_environment": "python",
            "hub_name": "class-a",
            "image_prefix": "school/",
            "user_id": 1500,
            "allowed_schemes": ["https"],
            "allow_local_repos": True,
            "repo2docker_config": ["/etc/r2d.py"],
            "extra_args": ["--cache-from", "x"],
            "hub_ip": "10.0.0.5",
        }
    )
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    spawner = Repo2DockerSpawner(config=c)
    assert spawner.homes_dir == "/srv/homes"
    assert spawner.default_environment == "python"
    settings = BuildSettings(config=c)
    assert settings.hub_name == "class-a"
    assert settings.image_prefix == "school/"
    assert settings.user_id == 1500
    assert settings.allowed_schemes == ["https"]
    assert settings.allow_local_repos is True
    assert settings.repo2docker_config == ["/etc/r2d.py"]
    assert settings.extra_args == ["--cache-from", "x"]
    assert spawner.build_settings.hub_name == "class-a"
    # an explicit hub_ip wins over the bridge
    assert c.JupyterHub.hub_ip == "10.0.0.5"


def test_unknown_keys_warn_and_are_not_applied(tljh_prefix, monkeypatch, caplog):
    tljh_prefix({"homes_dri": "/typo"})
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    assert "unknown key repo2docker.homes_dri" in caplog.text
    assert Repo2DockerSpawner(config=c).homes_dir == "/home"


def test_without_docker_bridge_the_hub_stays_on_loopback(tljh_prefix, monkeypatch, caplog):
    tljh_prefix(None)
    c = run_hook(tljh_defaults(), bridge=None, monkeypatch=monkeypatch)
    assert "hub_ip" not in c.JupyterHub
    assert "no Docker bridge" in caplog.text


def test_service_scopes_and_roles(tljh_prefix, monkeypatch):
    tljh_prefix({"service_port": 16000, "build_concurrency": 2})
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert "cull-idle" in services, "TLJH's idle culler must stay"
    env = services[hubconfig.SERVICE_NAME]
    assert env["url"] == "http://127.0.0.1:16000"
    assert env["command"][1:] == ["-m", "tljh_repo2docker.service"]
    assert json.loads(env["environment"]["TLJH_R2D_SETTINGS"])["build_concurrency"] == 2
    assert env["oauth_no_confirm"] is True
    assert set(env["oauth_client_allowed_scopes"]) == {
        hubconfig.READ_SCOPE,
        hubconfig.BUILD_SCOPE,
        hubconfig.MANAGE_SCOPE,
        "read:users:groups!user",
    }
    assert set(c.JupyterHub.custom_scopes) == {
        hubconfig.READ_SCOPE,
        hubconfig.BUILD_SCOPE,
        hubconfig.MANAGE_SCOPE,
    }
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.named_server_limit_per_user == 5
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "self" in roles["user"]["scopes"]
    assert hubconfig.READ_SCOPE in roles["user"]["scopes"]
    assert hubconfig.MANAGE_SCOPE not in roles["user"]["scopes"]
    assert roles[hubconfig.MANAGER_ROLE]["users"] == ["teacher"]
    assert hubconfig.MANAGE_SCOPE in roles[hubconfig.MANAGER_ROLE]["scopes"]
    assert roles["environments-service"]["services"] == [hubconfig.SERVICE_NAME]
    assert c.JupyterHub.template_paths[0].endswith("hub")
    assert c.JupyterHub.template_vars["tljh_repo2docker_url"] == "/services/environments/"


@pytest.mark.parametrize(
    "policy, user_builds, group",
    [("users", True, None), ("admins", False, None), ("group:teachers", False, "teachers")],
)
def test_build_policy(tljh_prefix, monkeypatch, policy, user_builds, group):
    tljh_prefix({"build_policy": policy})
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert (hubconfig.BUILD_SCOPE in roles["user"]["scopes"]) is user_builds
    if group:
        assert roles[hubconfig.BUILDER_ROLE]["groups"] == [group]
        assert group in c.JupyterHub.load_groups
    else:
        assert hubconfig.BUILDER_ROLE not in roles
    # managers always build
    manager_scopes = c.JupyterHub.custom_scopes[hubconfig.MANAGE_SCOPE]["subscopes"]
    assert hubconfig.BUILD_SCOPE in manager_scopes


def test_a_bad_build_policy_falls_back_to_admins(tljh_prefix, monkeypatch, caplog):
    tljh_prefix({"build_policy": "everyone!"})
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert hubconfig.BUILD_SCOPE not in roles["user"]["scopes"]
    assert "build_policy" in caplog.text


def test_hook_twice_does_not_duplicate(tljh_prefix, monkeypatch):
    tljh_prefix(None)
    c = run_hook(run_hook(tljh_defaults(), monkeypatch=monkeypatch))
    names = [s["name"] for s in c.JupyterHub.services]
    assert names.count(hubconfig.SERVICE_NAME) == 1
    roles = [r["name"] for r in c.JupyterHub.load_roles]
    assert len(roles) == len(set(roles))
    assert len(c.JupyterHub.template_paths) == 1


def test_jupyterhub_accepts_the_config(tljh_prefix, monkeypatch):
    tljh_prefix(None)
    c = run_hook(tljh_defaults(), monkeypatch=monkeypatch)
    app = JupyterHub(config=c)
    assert app.spawner_class is Repo2DockerSpawner
    assert app.hub_ip == "172.17.0.1"
    assert hubconfig.READ_SCOPE in app.custom_scopes


class TLJHSpec:
    """The hook specifications TLJH declares (tljh/hooks.py), for pluggy."""

    hookspec = pluggy.HookspecMarker("tljh")

    @hookspec
    def tljh_extra_apt_packages(self):
        pass

    @hookspec
    def tljh_extra_hub_pip_packages(self):
        pass

    @hookspec
    def tljh_custom_jupyterhub_config(self, c):
        pass

    @hookspec
    def tljh_post_install(self):
        pass


def test_plugin_is_registered_and_loads_like_tljh_loads_it(tljh_prefix, monkeypatch):
    tljh_prefix(None)
    found = [ep for ep in entry_points(group="tljh") if ep.name == "tljh_repo2docker"]
    assert found and found[0].value == "tljh_repo2docker.plugin"
    pm = pluggy.PluginManager("tljh")
    pm.add_hookspecs(TLJHSpec)
    pm.load_setuptools_entrypoints("tljh")
    monkeypatch.setattr(plugin, "apt_has_candidate", lambda name: False)
    assert ["docker.io", "git"] in pm.hook.tljh_extra_apt_packages()
    c = tljh_defaults()
    monkeypatch.setattr(hubconfig, "bridge_ip", lambda interface="docker0": "172.17.0.1")
    pm.hook.tljh_custom_jupyterhub_config(c=c)
    assert c.JupyterHub.spawner_class == hubconfig.SPAWNER_CLASS


def test_buildx_is_asked_for_only_where_apt_has_it(monkeypatch):
    monkeypatch.setattr(plugin, "apt_has_candidate", lambda name: name == "docker-buildx")
    assert "docker-buildx" in plugin.tljh_extra_apt_packages()
    monkeypatch.setattr(plugin, "apt_has_candidate", lambda name: False)
    assert "docker-buildx" not in plugin.tljh_extra_apt_packages()


def test_bridge_ip_reads_an_interface():
    assert hubconfig.bridge_ip("lo") == "127.0.0.1"
    assert hubconfig.bridge_ip("no-such-if0") is None


def test_container_names_are_per_hub():
    c = Config()
    c.BuildSettings.hub_name = "class-b"
    assert Repo2DockerSpawner(config=c).prefix == "jupyter-class-b"
    # the default hub keeps TLJH-like names: jupyter-<user>
    assert Repo2DockerSpawner(config=Config()).prefix == "jupyter"


def test_the_hub_waits_for_the_bridge_while_docker_starts(monkeypatch):
    """A reboot where Docker comes up after the hub: the address is read once
    docker0 exists, not fixed to loopback at the wrong moment."""
    answers = iter([None, None, "172.17.0.1"])
    monkeypatch.setattr(hubconfig, "bridge_ip", lambda interface="docker0": next(answers))
    monkeypatch.setattr(hubconfig, "docker_installed", lambda: True)
    assert hubconfig.wait_for_bridge(timeout=5, interval=0.01) == "172.17.0.1"


def test_waiting_for_the_bridge_ends(monkeypatch):
    monkeypatch.setattr(hubconfig, "bridge_ip", lambda interface="docker0": None)
    monkeypatch.setattr(hubconfig, "docker_installed", lambda: True)
    assert hubconfig.wait_for_bridge(timeout=0.05, interval=0.01) is None
    # without Docker installed there is nothing to wait for
    monkeypatch.setattr(hubconfig, "docker_installed", lambda: False)
    assert hubconfig.wait_for_bridge(timeout=60, interval=30) is None
