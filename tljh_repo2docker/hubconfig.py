"""Turn tljh-config values into JupyterHub config: the plugin's whole effect.

``apply_hub_config`` is pure apart from the traitlets ``Config`` it fills: the
TLJH hook, the demo hub and the tests all call it, so there is one source of
truth for the configuration.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import struct
import sys
import time
from dataclasses import dataclass

from . import tljhconfig
from .assets import TEMPLATES_DIR

GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,254}")
SPAWNER_CLASS = "tljh_repo2docker.spawner.Repo2DockerSpawner"
SWARM_SPAWNER_CLASS = "tljh_repo2docker.swarmspawner.Repo2DockerSwarmSpawner"
DEFAULT_SWARM_MANAGER = "unix:///var/run/docker.sock"
SERVICE_NAME = "environments"
DEFAULT_SERVICE_PORT = 15003
READ_SCOPE = "custom:environments:read"
BUILD_SCOPE = "custom:environments:build"
MANAGE_SCOPE = "custom:environments:manage"
BUILDER_ROLE = "environments-builder"
MANAGER_ROLE = "environments-manager"

# tljh-config key -> (traitlets class, trait). The README's table lists them.
KEYS = {
    "homes_dir": ("Repo2DockerSpawner", "homes_dir"),
    "default_environment": ("Repo2DockerSpawner", "default_environment"),
    "hub_name": ("BuildSettings", "hub_name"),
    "image_prefix": ("BuildSettings", "image_prefix"),
    "user_id": ("BuildSettings", "user_id"),
    "user_name": ("BuildSettings", "user_name"),
    "allowed_schemes": ("BuildSettings", "allowed_schemes"),
    "allow_local_repos": ("BuildSettings", "allow_local_repos"),
    "repo2docker_config": ("BuildSettings", "repo2docker_config"),
    "base_image": ("BuildSettings", "base_image"),
    "appendix": ("BuildSettings", "appendix"),
    "extra_args": ("BuildSettings", "extra_args"),
    "project_folders": ("BuildSettings", "project_folders"),
    "trusted_launch_sources": ("BuildSettings", "trusted_launch_sources"),
    "allowed_networks": ("BuildSettings", "allowed_networks"),
    "allowed_hosts": ("BuildSettings", "allowed_hosts"),
    "allowed_base_images": ("BuildSettings", "allowed_base_images"),
    "fetch_submodules": ("BuildSettings", "fetch_submodules"),
    "log_max_line_bytes": ("BuildSettings", "log_max_line_bytes"),
    "log_max_bytes": ("BuildSettings", "log_max_bytes"),
    "user_gid": ("BuildSettings", "user_gid"),
    "launch_home_access": ("BuildSettings", "launch_home_access"),
    "build_backend": ("BuildSettings", "build_backend"),
    "builder_base_image": ("BuildSettings", "builder_base_image"),
    "builder_image": ("BuildSettings", "builder_image"),
    "server_pids_limit": ("Repo2DockerSpawner", "pids_limit"),
    "server_mem_limit": ("Repo2DockerSpawner", "default_mem_limit"),
    "max_concurrent_starts": ("Repo2DockerSpawner", "max_concurrent_starts"),
    "server_start_timeout": ("Repo2DockerSpawner", "start_timeout"),
    "build_concurrency": ("EnvironmentsService", "build_concurrency"),
    "db_url": ("BuildSettings", "db_url"),
    "max_environments_per_user": ("EnvironmentsService", "max_environments_per_user"),
    "max_concurrent_builds_per_user": ("EnvironmentsService", "max_concurrent_builds_per_user"),
    "max_daily_builds_per_user": ("EnvironmentsService", "max_daily_builds_per_user"),
    "max_versions_per_environment": ("EnvironmentsService", "max_versions_per_environment"),
    "max_image_disk": ("EnvironmentsService", "max_image_disk"),
    "cors_allow_origin": ("EnvironmentsService", "cors_allow_origin"),
    "binder_service_name": ("EnvironmentsService", "binder_service_name"),
    "db_busy_timeout": ("EnvironmentsService", "db_busy_timeout"),
    "health_min_free_disk": ("EnvironmentsService", "health_min_free_disk"),
    "health_cache_seconds": ("EnvironmentsService", "health_cache_seconds"),
    "startup_retry_seconds": ("EnvironmentsService", "startup_retry_seconds"),
    "registry": ("BuildSettings", "registry"),
    "registry_scheme": ("BuildSettings", "registry_scheme"),
}
# Keys read here rather than mapped onto a trait.
OWN_KEYS = {"hub_ip", "service_port", "build_policy", "max_servers_per_user", "swarm"}
# repo2docker.swarm.* (several hosts, issue 12)
SWARM_KEYS = ("enabled", "manager", "hub_ip", "placement_constraints", "prepull")
# Repo2DockerSwarmSpawner.placement_constraints' default (not imported here:
# the hook must not load dockerspawner for a single host)
DEFAULT_PLACEMENT = ("node.role==worker",)
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Swarm's constraint grammar, narrowed: <attribute> ==|!= <value>
_CONSTRAINT_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}\s*(?:==|!=)\s*[A-Za-z0-9_.:/-]{1,128}")
MAX_CONSTRAINTS = 20


class UnknownKey(ValueError):
    pass


class ConfigError(ValueError):
    """A setting that would leave the hub broken (servers started where
    nobody meant, a hub no worker reaches). The hub does not start and
    its log says which key and why, instead of starting half-working."""


@dataclass(frozen=True)
class SwarmSettings:
    """``repo2docker.swarm.*`` checked: where the swarm's manager engine is,
    where the hub listens for its servers, where their tasks may run."""

    manager: str
    hub_ip: str
    placement_constraints: tuple[str, ...] | None  # None: the spawner's default
    prepull: bool = False


def manager_url(value) -> str:
    """The manager engine's URL: ``unix:///absolute/path`` or ``tcp://host:port``."""
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        raise ConfigError(f"repo2docker.swarm.manager must be a URL, not {value!r}")
    value = value.strip()
    if value.startswith("unix://"):
        path = value[len("unix://") :]
        parts = path.split("/")
        if not path.startswith("/") or ".." in parts or any(c in path for c in "?#\x00 "):
            raise ConfigError(
                f"repo2docker.swarm.manager {value!r}: a unix socket needs an absolute path "
                f"(e.g. {DEFAULT_SWARM_MANAGER})"
            )
        return value
    if value.startswith("tcp://"):
        host, colon, port = value[len("tcp://") :].rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(host)
            known = True
        except ValueError:
            known = bool(_HOSTNAME_RE.fullmatch(host)) and len(host) <= 253
        if not colon or not known or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"repo2docker.swarm.manager {value!r}: a TCP engine needs tcp://host:port "
                "(e.g. tcp://10.0.0.2:2376)"
            )
        return value
    raise ConfigError(
        f"repo2docker.swarm.manager {value!r} must start with unix:// (the hub runs on the "
        "manager) or tcp:// (host:port of the manager's engine)"
    )


def swarm_hub_ip(value) -> str:
    """The address the hub binds and servers on workers call back: one
    address of this host, reachable from the workers."""
    try:
        address = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"repo2docker.swarm.hub_ip must be this host's IP address that the workers "
            f"reach (e.g. its private network address), not {value!r}"
        ) from None
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        raise ConfigError(
            f"repo2docker.swarm.hub_ip {value!r}: workers cannot reach a loopback address, "
            "and an unspecified one would open the hub's port on every interface; give the "
            "control node's address on the network the workers share"
        )
    return str(address)


def constraints(value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_CONSTRAINTS:
        raise ConfigError(
            "repo2docker.swarm.placement_constraints must be a list of 1 to "
            f"{MAX_CONSTRAINTS} constraints such as node.role==worker, not {value!r}"
        )
    for item in value:
        if not isinstance(item, str) or not _CONSTRAINT_RE.fullmatch(item.strip()):
            raise ConfigError(
                f"repo2docker.swarm.placement_constraints: {item!r} is not a constraint "
                "(<attribute>==<value> or <attribute>!=<value>, e.g. node.labels.gpu==yes)"
            )
    return tuple(item.strip() for item in value)


def check_registry(settings: dict) -> None:
    """repo2docker.registry, registry_scheme and image_prefix fit together."""
    from .builder import registry_host

    try:
        registry = registry_host(settings.get("registry") or "")
    except ValueError as e:
        raise ConfigError(f"repo2docker.{e}") from None
    scheme = settings.get("registry_scheme", "https")
    if scheme not in ("https", "http"):
        raise ConfigError(f"repo2docker.registry_scheme must be https or http, not {scheme!r}")
    prefix = settings.get("image_prefix")
    if registry and prefix and not (isinstance(prefix, str) and prefix.startswith(f"{registry}/")):
        raise ConfigError(
            f"repo2docker.image_prefix {prefix!r} is not under repo2docker.registry "
            f"{registry!r}: pushes would go elsewhere (Docker Hub). Unset image_prefix "
            f"(default {registry}/tljh-r2d/) or start it with {registry}/"
        )


def swarm_settings(settings: dict) -> SwarmSettings | None:
    """``repo2docker.swarm.*`` checked; None when the swarm is not enabled
    (today's single host). ConfigError on anything that would break a hub."""
    raw = settings.get("swarm")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"repo2docker.swarm must be a section of settings, not {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in SWARM_KEYS)
    if unknown:
        # a typo ("enable") must not silently leave the hub on one host
        raise ConfigError(
            f"unknown key(s) repo2docker.swarm.{', repo2docker.swarm.'.join(unknown)}: "
            f"known are {', '.join(SWARM_KEYS)}"
        )
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"repo2docker.swarm.enabled must be true or false, not {enabled!r}")
    if not enabled:
        return None
    if not settings.get("registry"):
        raise ConfigError(
            "repo2docker.swarm.enabled needs repo2docker.registry (host:port): workers "
            "pull the environments' images from there"
        )
    hub_ip = raw.get("hub_ip") or settings.get("hub_ip")
    if not hub_ip:
        raise ConfigError(
            "repo2docker.swarm.enabled needs repo2docker.swarm.hub_ip: the control node's "
            "address that the workers reach (the hub listens there for their servers)"
        )
    placement = raw.get("placement_constraints")
    prepull = raw.get("prepull", False)
    if not isinstance(prepull, bool):
        raise ConfigError(f"repo2docker.swarm.prepull must be true or false, not {prepull!r}")
    return SwarmSettings(
        manager=manager_url(raw.get("manager") or DEFAULT_SWARM_MANAGER),
        hub_ip=swarm_hub_ip(hub_ip),
        placement_constraints=None if placement is None else constraints(placement),
        prepull=prepull,
    )


def swarm_build_settings(c, swarm: SwarmSettings) -> None:
    """What the builder (in the service) needs of the swarm: where servers
    run (versions in use, environments with servers) and where to pre-pull."""
    c.BuildSettings.swarm_manager = swarm.manager
    if swarm.prepull:
        c.BuildSettings.prepull = True
        c.BuildSettings.prepull_manager = swarm.manager
        c.BuildSettings.prepull_constraints = list(swarm.placement_constraints or DEFAULT_PLACEMENT)


def apply_swarm_config(c, swarm: SwarmSettings) -> list[str]:
    """The swarm backend: its class, its engine, where its tasks may run."""
    warnings = []
    c.JupyterHub.spawner_class = SWARM_SPAWNER_CLASS
    # the hub binds only this address: the workers' servers call back here
    c.JupyterHub.hub_ip = swarm.hub_ip
    # dockerspawner's client: the manager's engine (services live there)
    c.Repo2DockerSwarmSpawner.client_kwargs = {"base_url": swarm.manager}
    if swarm.placement_constraints is not None:
        c.Repo2DockerSwarmSpawner.placement_constraints = list(swarm.placement_constraints)
    if swarm.manager.startswith("tcp://"):
        warnings.append(
            f"repo2docker.swarm.manager {swarm.manager}: a Docker engine on TCP is root on "
            "that host for whoever reaches the port; use TLS "
            "(c.Repo2DockerSwarmSpawner.tls_config in a jupyterhub_config.d file) or a "
            "unix socket"
        )
    return warnings


def bridge_ip(interface: str = "docker0") -> str | None:
    """IPv4 address of the Docker bridge, or None when there is none (yet).

    Docker 20.10 leaves the gateway empty in `docker network inspect`, so the
    interface itself is asked (SIOCGIFADDR).
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface[:15].encode()))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def docker_installed() -> bool:
    return shutil.which("dockerd") is not None


def wait_for_bridge(
    timeout: float = 30, interval: float = 0.5, interface: str = "docker0"
) -> str | None:
    """The bridge address, waiting for it while Docker is installed but not up.

    The hub binds this address once, at start: reading it before Docker has
    made docker0 would leave the hub on 127.0.0.1 until the next restart. The
    systemd drop-in orders the hub after Docker; this covers the rest (Docker
    still starting, a hand-made restart order). Without Docker installed at
    all (TLJH starts the hub before the plugin installs it) there is nothing
    to wait for.
    """
    address = bridge_ip(interface)
    if address or not docker_installed():
        return address
    deadline = time.monotonic() + timeout
    while address is None and time.monotonic() < deadline:
        time.sleep(interval)
        address = bridge_ip(interface)
    return address


def apply_hub_config(c, settings: dict, docker_bridge_ip: str | None) -> list[str]:
    """Fill JupyterHub config ``c`` from the ``repo2docker`` settings.

    Returns warnings for the log (the hub should start even with a typo in
    config.yaml; unknown keys are reported, not applied).
    """
    warnings = []
    # checked before anything is set: a bad value stops the hub with the
    # key and the reason instead of leaving it half configured (issue 12)
    check_registry(settings)
    swarm = swarm_settings(settings)
    c.JupyterHub.spawner_class = SPAWNER_CLASS
    # Servers keep running while the hub restarts (tljh-config reload hub);
    # the spawner finds its containers again from its saved state.
    c.JupyterHub.cleanup_servers = False

    # Containers reach the hub on the Docker bridge; binding only that
    # address keeps the hub's port off every public interface.
    hub_ip = settings.get("hub_ip") or docker_bridge_ip
    if swarm is not None:
        warnings += apply_swarm_config(c, swarm)
    elif hub_ip:
        c.JupyterHub.hub_ip = hub_ip
    else:
        warnings.append(
            "no Docker bridge (docker0) found: the hub listens on 127.0.0.1 only and "
            "no server can start until Docker runs and the hub is restarted "
            "(sudo tljh-config reload hub)"
        )

    # TLJH sets c.Spawner.cmd for its own user environment; containers run
    # the single-user server of their image instead.
    c.Repo2DockerSpawner.cmd = ["jupyterhub-singleuser"]

    add_service(c, settings)
    return warnings + settings_to_config(c, settings)


def _config_list(section, key) -> list:
    value = section[key] if key in section else []
    return list(value) if isinstance(value, list | tuple) else []


def add_build_policy(c, roles: dict, policy: str, access: str):
    """Who gets ``custom:environments:build``: every user ("users"), only
    admins ("admins"), or the members of one JupyterHub group ("group:NAME")."""
    if policy == "users":
        roles["user"]["scopes"] = sorted(set(roles["user"]["scopes"]) | {BUILD_SCOPE})
    elif policy.startswith("group:") and GROUP_RE.fullmatch(policy[len("group:") :]):
        group = policy[len("group:") :]
        groups = dict(c.JupyterHub.load_groups) if "load_groups" in c.JupyterHub else {}
        groups.setdefault(group, {"users": []})  # the role needs the group to exist
        c.JupyterHub.load_groups = groups
        roles[BUILDER_ROLE] = {
            "name": BUILDER_ROLE,
            "description": "Build tljh-repo2docker environments",
            "scopes": [BUILD_SCOPE, READ_SCOPE, access],
            "groups": [group],
        }
    elif policy != "admins":
        # never stop the hub over a typo: fall back to the strictest policy
        logging.getLogger("tljh_repo2docker").warning(
            "repo2docker.build_policy must be users, admins or group:NAME, not %r: "
            "only admins may build",
            policy,
        )


def add_service(c, settings: dict, python: str = sys.executable):
    """The environments service, its scopes and roles, and the navigation link."""
    port = int(settings.get("service_port") or DEFAULT_SERVICE_PORT)
    services = [s for s in _config_list(c.JupyterHub, "services") if s.get("name") != SERVICE_NAME]
    services.append(
        {
            "name": SERVICE_NAME,
            "url": f"http://127.0.0.1:{port}",
            "command": [python, "-m", "tljh_repo2docker.service"],
            "environment": {
                "TLJH_R2D_SETTINGS": json.dumps(settings),
                "TLJH_INSTALL_PREFIX": tljhconfig.install_prefix(),
            },
            "oauth_no_confirm": True,
            # our scopes, and the user's own groups (for group-shared environments)
            "oauth_client_allowed_scopes": [
                READ_SCOPE,
                BUILD_SCOPE,
                MANAGE_SCOPE,
                "read:users:groups!user",
            ],
            # the navigation bar gets its own "Environments" link instead
            "display": False,
        }
    )
    # BinderHub's API under /services/binder/ too (jupyterhub-fancy-profiles
    # looks for it there): a second route to the same service process
    binder = settings.get("binder_service_name", "binder")
    if binder and isinstance(binder, str) and binder != SERVICE_NAME:
        services = [s for s in services if s.get("name") != binder]
        services.append({"name": binder, "url": f"http://127.0.0.1:{port}", "display": False})
    c.JupyterHub.services = services
    # launch links open a named server per repository
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = int(settings.get("max_servers_per_user", 5))

    scopes = dict(c.JupyterHub.custom_scopes) if "custom_scopes" in c.JupyterHub else {}
    scopes[READ_SCOPE] = {"description": "See environments and their builds."}
    scopes[BUILD_SCOPE] = {
        "description": "Build environments of one's own, and new versions from launch links.",
        "subscopes": [READ_SCOPE],
    }
    scopes[MANAGE_SCOPE] = {
        "description": "Build, update, cancel and delete all environments.",
        "subscopes": [BUILD_SCOPE, READ_SCOPE],
    }
    c.JupyterHub.custom_scopes = scopes

    access = f"access:services!service={SERVICE_NAME}"
    admins = c.Authenticator.admin_users if "admin_users" in c.Authenticator else set()
    roles = {r["name"]: dict(r) for r in _config_list(c.JupyterHub, "load_roles")}
    user_role = roles.setdefault("user", {"name": "user", "scopes": ["self"]})
    user_role["scopes"] = sorted(set(user_role.get("scopes", [])) | {READ_SCOPE, access})
    manager = roles.setdefault(MANAGER_ROLE, {"name": MANAGER_ROLE, "scopes": []})
    manager["description"] = "Manage tljh-repo2docker environments"
    manager["scopes"] = sorted(set(manager["scopes"]) | {MANAGE_SCOPE, READ_SCOPE, access})
    manager["users"] = sorted(set(manager.get("users", [])) | set(admins))
    add_build_policy(c, roles, str(settings.get("build_policy") or "users"), access)
    roles["environments-service"] = {
        "name": "environments-service",
        "description": "What the environments service does on the hub: start and stop "
        "servers, and give a launch a short-lived token that opens one server",
        "scopes": ["admin:servers", "read:users", "tokens"],
        "services": [SERVICE_NAME],
    }
    c.JupyterHub.load_roles = list(roles.values())

    # The hub's pages get an "Environments" link (templates/hub/page.html).
    hub_templates = os.path.join(TEMPLATES_DIR, "hub")
    paths = _config_list(c.JupyterHub, "template_paths")
    c.JupyterHub.template_paths = [hub_templates, *[p for p in paths if p != hub_templates]]
    base_url = c.JupyterHub.base_url if "base_url" in c.JupyterHub else "/"
    template_vars = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
    template_vars["tljh_repo2docker_url"] = base_url.rstrip("/") + f"/services/{SERVICE_NAME}/"
    c.JupyterHub.template_vars = template_vars


# The classes whose settings the hub, the service and the command line share.
PLUGIN_CLASSES = ("BuildSettings", "EnvironmentsService", "Repo2DockerSpawner")


def config_d_files(install_prefix: str) -> list[str]:
    """TLJH's ``config/jupyterhub_config.d/*.py``, in the order TLJH loads them."""
    folder = os.path.join(install_prefix, "config", "jupyterhub_config.d")
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(folder, n) for n in names]


def plugin_config(settings: dict, install_prefix: str):
    """The plugin's own traitlets config, as the hub ends up with it.

    The hub applies tljh-config's ``repo2docker`` section (through the hook)
    and then TLJH loads ``jupyterhub_config.d/*.py``, which win. The service
    and the command line run in other processes; they call this to read the
    same two sources in the same order, so that, e.g., a ``hub_name`` set in
    a config.d file is the same everywhere. Only the plugin's classes are
    kept. Returns (Config, warnings).
    """
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    c = Config()
    warnings = settings_to_config(c, settings)
    for path in config_d_files(install_prefix):
        try:
            loaded = PyFileConfigLoader(
                os.path.basename(path), path=os.path.dirname(path)
            ).load_config()
        except Exception as e:  # the hub reports its own errors; we go on
            warnings.append(f"{path}: not read ({e.__class__.__name__}: {e})")
            continue
        mine = Config({k: v for k, v in loaded.items() if k in PLUGIN_CLASSES})
        c.merge(mine)
    return c, warnings


def settings_to_config(c, settings: dict) -> list[str]:
    """Set the traits that tljh-config keys map to; warn about unknown keys."""
    warnings = []
    swarm = swarm_settings(settings)
    if swarm is not None:
        swarm_build_settings(c, swarm)
    for key, value in settings.items():
        if key in OWN_KEYS:
            continue
        if key not in KEYS:
            warnings.append(f"unknown key repo2docker.{key} ignored")
            continue
        cls, trait = KEYS[key]
        setattr(c[cls], trait, value)
    return warnings
