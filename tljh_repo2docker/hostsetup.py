"""What the plugin installs on a TLJH host besides packages, and why.

- a drop-in that orders ``jupyterhub.service`` after ``docker.service``: the
  hub binds the Docker bridge, which exists only once Docker runs; without it
  a reboot where Docker comes up late leaves the hub on 127.0.0.1, where no
  container can reach it;
- a drop-in that lets Traefik pass ``%2F`` (see ``traefikconf``);
- ``/usr/local/bin/tljh-repo2docker``: console scripts stay in TLJH's hub
  venv, which is not on sudo's PATH (``secure_path``), so the README's
  ``sudo tljh-repo2docker ...`` would say "command not found".

Drop-ins live in ``/etc/systemd/system/<unit>.d/`` and survive TLJH's
upgrades, which rewrite the unit files themselves. Rendering is pure; the
writers only write when the content changed and report whether it did.
"""

from __future__ import annotations

import os
import shlex
import sys

SYSTEMD_DIR = "/etc/systemd/system"
DROPIN_NAME = "tljh-repo2docker.conf"
SUDO_LINK = "/usr/local/bin/tljh-repo2docker"


def hub_dropin() -> str:
    # Wants= (not Requires=): a hub whose Docker fails still serves logins
    # and says what is wrong, instead of not starting at all.
    return (
        "# Installed by tljh-repo2docker: the hub binds the Docker bridge (docker0),\n"
        "# so it starts after Docker.\n"
        "[Unit]\n"
        "Wants=docker.service\n"
        "After=docker.service\n"
    )


def traefik_dropin(python: str, traefik_toml: str) -> str:
    # "+": run with full privileges; TLJH's unit has ProtectSystem=strict,
    # under which the state folder is read-only.
    command = shlex.join([python, "-m", "tljh_repo2docker.traefikconf", traefik_toml])
    return (
        "# Installed by tljh-repo2docker: launch links carry %2F, which Traefik\n"
        "# rejects unless its entry points allow encoded slashes.\n"
        "[Service]\n"
        f"ExecStartPre=+{command}\n"
    )


def write_if_changed(path: str, content: str, mode: int = 0o644) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    os.replace(tmp, path)
    return True


def install_dropins(
    install_prefix: str, python: str = sys.executable, systemd_dir: str = SYSTEMD_DIR
) -> dict[str, bool]:
    """Write both drop-ins; unit name -> whether its drop-in changed."""
    toml = os.path.join(install_prefix, "state", "traefik.toml")
    return {
        "jupyterhub.service": write_if_changed(
            os.path.join(systemd_dir, "jupyterhub.service.d", DROPIN_NAME), hub_dropin()
        ),
        "traefik.service": write_if_changed(
            os.path.join(systemd_dir, "traefik.service.d", DROPIN_NAME),
            traefik_dropin(python, toml),
        ),
    }


def link_console_script(
    venv_bin: str = os.path.dirname(sys.executable), link: str = SUDO_LINK
) -> str:
    """Link the CLI where sudo finds it. Returns what was done, for the log.

    Never replaces a file that is not already our link.
    """
    target = os.path.join(venv_bin, "tljh-repo2docker")
    if not os.path.exists(target):
        return f"{target} not found: not linked"
    if os.path.islink(link):
        if os.readlink(link) == target:
            return "already linked"
        if not os.path.exists(link) or "tljh" in os.readlink(link):
            os.unlink(link)  # ours, from an older venv path, or dangling
        else:
            return f"{link} points elsewhere: left as it is"
    elif os.path.lexists(link):
        return f"{link} exists and is not a link: left as it is"
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)
    return f"linked {link} -> {target}"
