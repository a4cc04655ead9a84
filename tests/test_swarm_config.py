"""One setting switches between one host and a swarm (issue 12), on a real
traitlets Config as TLJH's hook fills it (see test_hubconfig.py)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from tljh_repo2docker import builder, hubconfig
from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.catalogue import Catalogue
from tljh_repo2docker.imagestore import DockerImageStore, RegistryImageStore
from tljh_repo2docker.spawner import Repo2DockerSpawner
from tljh_repo2docker.spawnermixin import shared_catalogue
from tljh_repo2docker.swarmspawner import Repo2DockerSwarmSpawner

from .test_hubconfig import tljh_defaults

ROOT = Path(__file__).resolve().parent.parent
# The last commit of hubconfig.py before the switch: its output is "today's".
BEFORE = "c72053918cd27b7634d556b207cf96b3aa4b1368"
BRIDGE = "172.17.0.1"

SWARM = {
    "registry": "registry.example.org:5000",
    "swarm": {"enabled": True, "hub_ip": "10.0.0.2"},
}


def hubconfig_before():
    """hubconfig.py as it was before this change, imported from git."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE}:tljh_repo2docker/hubconfig.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = "tljh_repo2docker._hubconfig_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "tljh_repo2docker"
    sys.modules[name] = module
    try:
        exec(compile(source, "hubconfig_before.py", "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules[name]
    return module


def configure(settings: dict, module=hubconfig) -> tuple[Config, list[str]]:
    c = tljh_defaults()
    warnings = module.apply_hub_config(c, settings, BRIDGE)
    return c, warnings


def without_service_settings(c: Config) -> Config:
    c = Config(copy.deepcopy(dict(c)))
    for service in c.JupyterHub.services:
        service.get("environment", {}).pop("TLJH_R2D_SETTINGS", None)
    return c


SINGLE_HOST_INPUTS = [
    {},
    {"homes_dir": "/srv/homes", "hub_name": "class-a", "image_prefix": "school/"},
    {"hub_ip": "10.0.0.5", "service_port": 16000, "build_policy": "admins", "typo": 1},
    {"server_mem_limit": "1G", "max_servers_per_user": 2, "allowed_hosts": ["git.example.org"]},
]


@pytest.mark.parametrize("settings", SINGLE_HOST_INPUTS)
def test_disabled_is_exactly_todays_config(settings):
    old = hubconfig_before()
    assert not hasattr(old, "swarm_settings")  # really the code of before the switch
    before, before_warnings = configure(settings, old)
    after, after_warnings = configure(settings)
    assert after == before
    assert after_warnings == before_warnings
    # written out, the swarm switch off is the same as no swarm section (but
    # for the settings handed to the service, which hold it as written)
    off, _ = configure({**settings, "swarm": {"enabled": False}})
    assert without_service_settings(off) == without_service_settings(after)
    assert after.JupyterHub.spawner_class == hubconfig.SPAWNER_CLASS
    assert BuildSettings(config=after).registry == ""


def test_single_host_catalogues_are_todays():
    settings = BuildSettings(config=configure({})[0])
    assert settings.catalogue_options() == {}
    assert settings.image_store() is None
    assert settings.image_prefix == "tljh-r2d/"
    catalogue = shared_catalogue("swarm-config-test", 0.5, settings)
    assert isinstance(catalogue.store, DockerImageStore)
    assert (catalogue.max_age, catalogue.max_stale) == (0.5, 5.0)
    # the same one as the spawner's call without settings (one cache per process)
    assert shared_catalogue("swarm-config-test", 0.5) is catalogue
    # what admins change is read from the service's database (its default place)
    assert catalogue.records.url == settings.db_url
    assert settings.db_url.endswith("/state/tljh-repo2docker.sqlite")


def test_swarm_switch_sets_the_swarm_backend():
    c, warnings = configure(
        {
            **SWARM,
            "homes_dir": "/srv/homes",
            "swarm": {
                **SWARM["swarm"],
                "manager": "unix:///run/docker.sock",
                "placement_constraints": ["node.role==worker", "node.labels.gpu != yes"],
            },
        }
    )
    assert warnings == []
    assert c.JupyterHub.spawner_class == hubconfig.SWARM_SPAWNER_CLASS
    assert c.JupyterHub.hub_ip == "10.0.0.2"  # not the bridge: workers call back here
    spawner = Repo2DockerSwarmSpawner(config=c)
    assert spawner.client_kwargs == {"base_url": "unix:///run/docker.sock"}
    assert spawner.placement_constraints == ["node.role==worker", "node.labels.gpu != yes"]
    # the settings written for Repo2DockerSpawner hold for the swarm backend too
    assert spawner.homes_dir == "/srv/homes"
    assert spawner.cmd == ["jupyterhub-singleuser"]
    settings = spawner.build_settings
    assert settings.registry == "registry.example.org:5000"
    assert settings.image_prefix == "registry.example.org:5000/tljh-r2d/"
    assert settings.registry_problem() == ""


def test_swarm_defaults_manager_constraints_and_the_top_level_hub_ip():
    c, _ = configure(
        {"registry": "127.0.0.1:5000", "hub_ip": "192.168.1.4", "swarm": {"enabled": True}}
    )
    spawner = Repo2DockerSwarmSpawner(config=c)
    assert spawner.client_kwargs == {"base_url": hubconfig.DEFAULT_SWARM_MANAGER}
    assert spawner.placement_constraints == ["node.role==worker"]
    assert c.JupyterHub.hub_ip == "192.168.1.4"


def test_prepull_tells_the_builder_where_and_on_which_nodes():
    c, _ = configure({**SWARM, "swarm": {**SWARM["swarm"], "prepull": True}})
    settings = BuildSettings(config=c)
    assert settings.prepull is True
    assert settings.prepull_manager == hubconfig.DEFAULT_SWARM_MANAGER
    # the servers' own default constraints
    assert settings.prepull_constraints == Repo2DockerSwarmSpawner(config=c).placement_constraints
    # the service reads the same settings (plugin_config), with the admin's constraints
    swarm = {**SWARM["swarm"], "prepull": True, "placement_constraints": ["node.labels.gpu==yes"]}
    service, _ = hubconfig.plugin_config({**SWARM, "swarm": swarm}, "/nonexistent")
    settings = BuildSettings(config=service)
    assert settings.prepull_constraints == ["node.labels.gpu==yes"]
    assert settings.registry == SWARM["registry"]
    # off by default, in swarm mode too
    assert BuildSettings(config=configure(SWARM)[0]).prepull is False


def test_the_service_learns_where_servers_run():
    """Versions in use and environments with servers are the swarm's, in
    swarm mode with or without pre-pull; this host's otherwise."""
    service, _ = hubconfig.plugin_config(SWARM, "/nonexistent")
    assert BuildSettings(config=service).swarm_manager == hubconfig.DEFAULT_SWARM_MANAGER
    single, _ = hubconfig.plugin_config({}, "/nonexistent")
    assert BuildSettings(config=single).swarm_manager == ""


def test_tcp_manager_is_accepted_with_a_warning():
    c, warnings = configure(
        {**SWARM, "swarm": {**SWARM["swarm"], "manager": "tcp://10.0.0.2:2376"}}
    )
    assert Repo2DockerSwarmSpawner(config=c).client_kwargs == {"base_url": "tcp://10.0.0.2:2376"}
    assert any("TLS" in w for w in warnings)


def test_registry_alone_keeps_one_host_and_lists_the_registry():
    c, _ = configure({"registry": "127.0.0.1:5000", "registry_scheme": "http"})
    assert c.JupyterHub.spawner_class == hubconfig.SPAWNER_CLASS
    assert c.JupyterHub.hub_ip == BRIDGE
    settings = Repo2DockerSpawner(config=c).build_settings
    assert settings.image_prefix == "127.0.0.1:5000/tljh-r2d/"
    options = settings.catalogue_options()
    store = options["store"]
    assert isinstance(store, RegistryImageStore)
    assert store.base_url == "http://127.0.0.1:5000"
    assert store.path_prefix == "tljh-r2d/"
    assert (options["max_age"], options["max_stale"]) == (
        builder.REGISTRY_MAX_AGE,
        builder.REGISTRY_MAX_STALE,
    )
    catalogue = shared_catalogue("swarm-config-registry", 0.5, settings)
    assert isinstance(catalogue.store, RegistryImageStore)
    assert catalogue.max_age == builder.REGISTRY_MAX_AGE
    assert not catalogue.is_local
    # the single-host catalogue of the same hub is another one
    assert shared_catalogue("swarm-config-registry", 0.5) is not catalogue
    assert isinstance(Catalogue("x", **settings.catalogue_options()).store, RegistryImageStore)


def test_admin_image_prefix_under_the_registry_is_kept():
    c, _ = configure({"registry": "127.0.0.1:5000", "image_prefix": "127.0.0.1:5000/course/"})
    assert BuildSettings(config=c).image_prefix == "127.0.0.1:5000/course/"


BAD = [
    # (settings, words of the error)
    ({"registry": "http://registry.example.org:5000"}, "no scheme"),
    ({"registry": "registry"}, "host[:port]"),
    ({"registry": "user:pw@registry.example.org"}, "credentials"),
    ({"registry": "registry.example.org:99999"}, "host[:port]"),
    ({"registry": 5000}, "host[:port]"),
    ({"registry": "registry.example.org:5000/x"}, "no scheme, path"),
    ({"registry": "127.0.0.1:5000", "registry_scheme": "ftp"}, "https or http"),
    ({"registry": "127.0.0.1:5000", "image_prefix": "tljh-r2d/"}, "Docker Hub"),
    ({"registry": "127.0.0.1:5000", "image_prefix": "127.0.0.1:5001/x/"}, "not under"),
    ({"swarm": "yes"}, "section"),
    ({"swarm": {"enable": True}}, "repo2docker.swarm.enable"),
    ({"swarm": {"enabled": "yes"}}, "true or false"),
    ({"swarm": {"enabled": True, "hub_ip": "10.0.0.2"}}, "needs repo2docker.registry"),
    ({"registry": "127.0.0.1:5000", "swarm": {"enabled": True}}, "needs repo2docker.swarm.hub_ip"),
    ({**SWARM, "swarm": {"enabled": True, "hub_ip": "127.0.0.1"}}, "loopback"),
    ({**SWARM, "swarm": {"enabled": True, "hub_ip": "0.0.0.0"}}, "unspecified"),  # noqa: S104
    ({**SWARM, "swarm": {"enabled": True, "hub_ip": "hub.example.org"}}, "IP address"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "manager": "http://10.0.0.2"}}, "unix://"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "manager": "tcp://10.0.0.2"}}, "tcp://host:port"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "manager": "tcp://a b:1"}}, "tcp://host:port"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "manager": "unix://var/run"}}, "absolute"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "manager": "unix:///a/../b"}}, "absolute"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "manager": ["unix:///x"]}}, "must be a URL"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "prepull": "on"}}, "true or false"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "placement_constraints": []}}, "1 to"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "placement_constraints": ["rm -rf /"]}}, "not a"),
    ({**SWARM, "swarm": {**SWARM["swarm"], "placement_constraints": [{"a": 1}]}}, "not a"),
    (
        {**SWARM, "swarm": {**SWARM["swarm"], "placement_constraints": ["node.role==x"] * 21}},
        "1 to",
    ),
]


@pytest.mark.parametrize(("settings", "words"), BAD)
def test_bad_values_stop_the_hub_with_the_key_and_reason(settings, words):
    c = tljh_defaults()
    untouched = tljh_defaults()
    with pytest.raises(hubconfig.ConfigError) as raised:
        hubconfig.apply_hub_config(c, settings, BRIDGE)
    assert words in str(raised.value)
    assert "repo2docker." in str(raised.value)  # which key
    assert c == untouched  # nothing half-applied


def test_a_bad_registry_in_a_config_d_file_fails_the_settings():
    # the same check where tljh-config is not the source
    c = Config()
    c.BuildSettings.registry = "https://registry.example.org"
    with pytest.raises(ValueError, match="no scheme"):
        BuildSettings(config=c)
    c = Config()
    c.BuildSettings.registry = "127.0.0.1:5000"
    c.BuildSettings.image_prefix = "school/"
    assert "not under the registry" in BuildSettings(config=c).registry_problem()
