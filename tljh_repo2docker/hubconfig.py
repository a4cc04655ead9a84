"""Turn tljh-config values into JupyterHub config: the plugin's whole effect.

``apply_hub_config`` is pure apart from the traitlets ``Config`` it fills: the
TLJH hook, the demo hub and the tests all call it, so there is one source of
truth for the configuration.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SPAWNER_CLASS = "tljh_repo2docker.spawner.Repo2DockerSpawner"

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
}
# Keys read here rather than mapped onto a trait.
OWN_KEYS = {"hub_ip"}


class UnknownKey(ValueError):
    pass


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


def apply_hub_config(c, settings: dict, docker_bridge_ip: str | None) -> list[str]:
    """Fill JupyterHub config ``c`` from the ``repo2docker`` settings.

    Returns warnings for the log (the hub should start even with a typo in
    config.yaml; unknown keys are reported, not applied).
    """
    warnings = []
    c.JupyterHub.spawner_class = SPAWNER_CLASS
    # Servers keep running while the hub restarts (tljh-config reload hub);
    # the spawner finds its containers again from its saved state.
    c.JupyterHub.cleanup_servers = False

    # Containers reach the hub on the Docker bridge; binding only that
    # address keeps the hub's port off every public interface.
    hub_ip = settings.get("hub_ip") or docker_bridge_ip
    if hub_ip:
        c.JupyterHub.hub_ip = hub_ip
    else:
        warnings.append(
            "no Docker bridge (docker0) found: the hub listens on 127.0.0.1 only and "
            "containers cannot reach it until Docker is installed and the hub restarted"
        )

    # TLJH sets c.Spawner.cmd for its own user environment; containers run
    # the single-user server of their image instead.
    c.Repo2DockerSpawner.cmd = ["jupyterhub-singleuser"]

    return warnings + settings_to_config(c, settings)


def settings_to_config(c, settings: dict) -> list[str]:
    """Set the traits that tljh-config keys map to; warn about unknown keys."""
    warnings = []
    for key, value in settings.items():
        if key in OWN_KEYS:
            continue
        if key not in KEYS:
            warnings.append(f"unknown key repo2docker.{key} ignored")
            continue
        cls, trait = KEYS[key]
        setattr(c[cls], trait, value)
    return warnings
