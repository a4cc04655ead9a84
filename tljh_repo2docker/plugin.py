"""The TLJH plugin: hook implementations, registered under the ``tljh`` entry point.

Thin by design: everything is decided in ``hubconfig`` (testable without TLJH).
The marker is created here, so the package imports without TLJH installed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

import pluggy

from . import hostsetup, hubconfig, tljhconfig

hookimpl = pluggy.HookimplMarker("tljh")
log = logging.getLogger("tljh_repo2docker")


def apt_has_candidate(package: str) -> bool:
    """Whether apt can install ``package`` on this machine."""
    try:
        out = subprocess.run(
            ["apt-cache", "policy", package], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return False
    return any(
        line.strip().startswith("Candidate:") and "(none)" not in line for line in out.splitlines()
    )


@hookimpl
def tljh_extra_apt_packages():
    # docker.io is the engine on Debian and Ubuntu. repo2docker >= 2025 needs
    # buildx: the docker-buildx package exists on Ubuntu 22.04+ and Debian 13
    # but not on Debian 12, where naming it would fail the whole install
    # (the README says how to add it there).
    packages = ["docker.io", "git"]
    if apt_has_candidate("docker-buildx"):
        packages.append("docker-buildx")
    return packages


@hookimpl
def tljh_extra_hub_pip_packages():
    # Everything the hub imports is already an install requirement of this
    # package (TLJH starts the hub before it installs these).
    return []


@hookimpl
def tljh_custom_jupyterhub_config(c):
    settings = tljhconfig.load_section()
    for warning in hubconfig.apply_hub_config(c, settings, hubconfig.wait_for_bridge()):
        log.warning("tljh-repo2docker: %s", warning)


def install_host_files() -> dict[str, bool]:
    """systemd drop-ins and the sudo link (see ``hostsetup``)."""
    changed = hostsetup.install_dropins(tljhconfig.install_prefix())
    log.info("tljh-repo2docker: %s", hostsetup.link_console_script())
    return changed


@hookimpl
def tljh_config_post_install(config):
    # The installer calls this before it writes TLJH's units and (re)starts
    # Traefik and the hub, so both start with the drop-ins from the very
    # first install on. ``config`` is left as the admin wrote it.
    if shutil.which("systemctl"):
        install_host_files()


@hookimpl
def tljh_post_install():
    """Start Docker, then restart the hub so that it binds the Docker bridge.

    TLJH starts the hub before it installs apt packages: at that moment there
    was no docker0, so the hub listened on 127.0.0.1 only.
    """
    systemctl = shutil.which("systemctl")
    if not systemctl:
        return
    changed = install_host_files()
    subprocess.run([systemctl, "daemon-reload"], check=False)
    subprocess.run([systemctl, "enable", "--now", "docker.service"], check=False)
    if changed["traefik.service"]:
        subprocess.run([systemctl, "try-restart", "traefik.service"], check=False)
    subprocess.run([systemctl, "try-restart", "jupyterhub.service"], check=False)
