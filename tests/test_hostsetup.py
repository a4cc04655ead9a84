"""What the plugin installs on a TLJH host: the Traefik patch, systemd drop-ins
and the sudo link. The real install test (tests/tljh) runs them under systemd;
these check the rules on files in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

from tljh_repo2docker import hostsetup, traefikconf

# What TLJH renders (tljh/traefik.toml.tpl through toml.dump), http only.
TLJH_HTTP = """\
[api]

[log]
level = "INFO"

[entryPoints.http]
address = ":80"

[entryPoints.auth_api]
address = "localhost:8099"

[entryPoints.http.transport.respondingTimeouts]
idleTimeout = "10m"

[providers.file]
directory = "/opt/tljh/state/rules"
watch = true
"""

# https on: an https entry point and a redirection table under http.http
TLJH_HTTPS = """\
[entryPoints.http]
address = ":80"

[entryPoints.https]
address = ":443"

[entryPoints.auth_api]
address = "localhost:8099"

[entryPoints.http.http.redirections.entryPoint]
to = "https"
scheme = "https"

[entryPoints.https.http.tls]
options = "default"
"""


def allowed(text: str) -> dict[str, bool]:
    entry_points = tomllib.loads(text)["entryPoints"]
    return {
        name: bool(
            entry.get("http", {}).get("encodedCharacters", {}).get("allowEncodedSlash") is True
        )
        for name, entry in entry_points.items()
    }


def test_http_entry_point_accepts_encoded_slashes():
    patched = traefikconf.allow_encoded_slash(TLJH_HTTP)
    assert allowed(patched) == {"http": True, "auth_api": False}
    # nothing else changed
    assert tomllib.loads(patched)["providers"] == tomllib.loads(TLJH_HTTP)["providers"]


def test_https_entry_point_too_and_no_entry_point_is_invented():
    patched = traefikconf.allow_encoded_slash(TLJH_HTTPS)
    assert allowed(patched) == {"http": True, "https": True, "auth_api": False}
    config = tomllib.loads(patched)["entryPoints"]
    assert config["http"]["http"]["redirections"]["entryPoint"]["to"] == "https"
    assert config["https"]["http"]["tls"]["options"] == "default"
    # http only: no https listener appears
    assert "https" not in tomllib.loads(traefikconf.allow_encoded_slash(TLJH_HTTP))["entryPoints"]


def test_patching_twice_changes_nothing():
    once = traefikconf.allow_encoded_slash(TLJH_HTTPS)
    assert traefikconf.allow_encoded_slash(once) == once


def test_an_admins_own_encoded_characters_table_is_kept():
    text = TLJH_HTTP + "\n[entryPoints.http.http.encodedCharacters]\nallowEncodedSemicolon = true\n"
    patched = traefikconf.allow_encoded_slash(text)
    encoded = tomllib.loads(patched)["entryPoints"]["http"]["http"]["encodedCharacters"]
    assert encoded == {"allowEncodedSemicolon": True, "allowEncodedSlash": True}


def test_the_command_patches_the_file_in_place_and_keeps_its_mode(tmp_path):
    path = tmp_path / "traefik.toml"
    path.write_text(TLJH_HTTP)
    path.chmod(0o600)
    run = [sys.executable, "-m", "tljh_repo2docker.traefikconf", str(path)]
    out = subprocess.run(run, capture_output=True, text=True, check=True)
    assert "accept %2F" in out.stdout
    assert allowed(path.read_text())["http"] is True
    assert path.stat().st_mode & 0o777 == 0o600
    # a missing or broken file never keeps Traefik from starting: exit 0
    assert subprocess.run([*run[:-1], str(tmp_path / "nope.toml")]).returncode == 0
    (tmp_path / "bad.toml").write_text("[entryPoints\n")
    assert subprocess.run([*run[:-1], str(tmp_path / "bad.toml")]).returncode == 0


def test_dropins_order_the_hub_after_docker_and_patch_before_traefik(tmp_path):
    changed = hostsetup.install_dropins("/opt/tljh", "/opt/tljh/hub/bin/python3", str(tmp_path))
    assert changed == {"jupyterhub.service": True, "traefik.service": True}
    hub = (tmp_path / "jupyterhub.service.d" / hostsetup.DROPIN_NAME).read_text()
    assert "After=docker.service" in hub and "Wants=docker.service" in hub
    traefik = (tmp_path / "traefik.service.d" / hostsetup.DROPIN_NAME).read_text()
    assert (
        "ExecStartPre=+/opt/tljh/hub/bin/python3 -m tljh_repo2docker.traefikconf "
        "/opt/tljh/state/traefik.toml" in traefik
    )
    # again: nothing to do, so no restart is needed
    again = hostsetup.install_dropins("/opt/tljh", "/opt/tljh/hub/bin/python3", str(tmp_path))
    assert again == {"jupyterhub.service": False, "traefik.service": False}


def test_sudo_link_points_at_the_venv_script_and_never_replaces_a_stranger(tmp_path):
    venv_bin = tmp_path / "hub" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "tljh-repo2docker").write_text("#!/bin/sh\n")
    link = tmp_path / "usr-local-bin" / "tljh-repo2docker"
    assert "linked" in hostsetup.link_console_script(str(venv_bin), str(link))
    assert os.readlink(link) == str(venv_bin / "tljh-repo2docker")
    assert hostsetup.link_console_script(str(venv_bin), str(link)) == "already linked"
    # someone else's file is left as it is
    link.unlink()
    link.write_text("not ours")
    assert "left as it is" in hostsetup.link_console_script(str(venv_bin), str(link))
    assert Path(link).read_text() == "not ours"
