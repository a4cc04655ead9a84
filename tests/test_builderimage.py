"""The builder image's recipe and tag (pure parts; the image itself is built
and used for real in tests/test_build_containers.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tljh_repo2docker import builderimage


def test_the_recipe_pins_this_services_repo2docker_on_the_chosen_base():
    text = builderimage.dockerfile("ubuntu:24.04", "2026.4.0")
    assert text.startswith("FROM ubuntu:24.04\n")
    assert '"jupyter-repo2docker==2026.4.0"' in text
    # the image proves it can build before it is tagged
    assert "docker buildx version" in text and "-m repo2docker --version" in text
    assert text.rstrip().splitlines()[-1].startswith("ENTRYPOINT")


def test_the_tag_follows_every_input():
    files = {"Dockerfile": b"FROM x\n", "docker": b"cli-1", "docker-buildx": b"bx"}
    tag = builderimage.image_tag(files)
    assert tag.startswith(f"{builderimage.TAG_PREFIX}:{builderimage.repo2docker_version()}-")
    assert builderimage.image_tag(dict(files)) == tag
    assert builderimage.image_tag({**files, "docker": b"cli-2"}) != tag
    # a byte moved from one file to the next is another image
    assert builderimage.image_tag({**files, "docker": b"cli-1b", "docker-buildx": b"x"}) != tag


def test_no_buildx_on_the_host_is_a_reason(monkeypatch):
    monkeypatch.setattr(builderimage, "find_buildx", lambda: None)
    with pytest.raises(builderimage.BuilderImageError, match="buildx"):
        builderimage.context_files("debian:bookworm-slim")


async def start_entry(tmp_path, *command: str, stdin=asyncio.subprocess.PIPE):
    """The builder's entry script running ``command``, here as in the image."""
    entry = tmp_path / "entry.py"
    entry.write_text(builderimage.ENTRY_SCRIPT)
    return await asyncio.create_subprocess_exec(
        "python3", str(entry), *command,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def test_the_entry_takes_its_environment_and_files_from_stdin_and_runs_the_command(tmp_path):
    async def run():
        proc = await start_entry(tmp_path, "sh", "-c", 'printf "%s" "$SECRET_FOR_GIT"')
        job = {"env": {"SECRET_FOR_GIT": "s3cret"}, "files": {str(written): "c = 1\n"}}
        out, _ = await proc.communicate(json.dumps(job).encode() + b"\n")
        return out.decode()

    written = tmp_path / "made" / "config.py"
    assert asyncio.run(run()) == "s3cret"
    assert written.read_text() == "c = 1\n"


def test_the_host_binaries_are_hashed_once_per_change(monkeypatch, tmp_path):
    cli, buildx = tmp_path / "docker", tmp_path / "docker-buildx"
    cli.write_bytes(b"a")
    buildx.write_bytes(b"b")
    monkeypatch.setattr(builderimage, "find_docker_cli", lambda: str(cli))
    monkeypatch.setattr(builderimage, "find_buildx", lambda: str(buildx))
    first = builderimage.inputs_key("base")
    assert builderimage.inputs_key("base") == first
    cli.write_bytes(b"a newer docker CLI")
    assert builderimage.inputs_key("base") != first
    assert builderimage.inputs_key("other-base") != builderimage.inputs_key("base")


def test_the_entry_passes_a_stop_on_to_the_build_and_returns_its_code(tmp_path):
    """docker stop sends SIGTERM to the entry (PID 1 in the builder): the
    command's whole process group gets it, and the exit code is the command's."""
    command = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('stopping', flush=True), sys.exit(3)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    async def run():
        proc = await start_entry(tmp_path, "python3", "-c", command)
        proc.stdin.write(b"{}\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        proc.terminate()
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        return rest, await proc.wait()

    rest, code = asyncio.run(run())
    assert rest == b"stopping\n"
    assert code == 3


def test_the_entry_refuses_to_build_without_its_settings(tmp_path):
    """No JSON line (a container started some other way): no build without
    the network pinning and the config files."""

    async def run():
        proc = await start_entry(
            tmp_path, "sh", "-c", "echo built", stdin=asyncio.subprocess.DEVNULL
        )
        out, err = await proc.communicate()
        return proc.returncode, out, err

    code, out, err = asyncio.run(run())
    assert code != 0 and out == b""
    assert b"no build settings" in err


@pytest.mark.parametrize(
    "os_release, expected",
    [
        ('ID=ubuntu\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n', "ubuntu:24.04"),
        ('ID=ubuntu\nVERSION_ID="22.04"\n', "ubuntu:22.04"),
        ('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n', "debian:bookworm-slim"),
        ("ID=debian\nVERSION_CODENAME=trixie\n", "debian:trixie-slim"),
        ("ID=fedora\nVERSION_ID=40\n", "debian:bookworm-slim"),
        ('ID=ubuntu\nVERSION_ID="24.04; rm -rf /"\n', "debian:bookworm-slim"),
        (None, "debian:bookworm-slim"),
    ],
)
def test_the_default_base_is_the_hosts_distribution(tmp_path, os_release, expected):
    path = tmp_path / "os-release"
    if os_release is not None:
        path.write_text(os_release)
    assert builderimage.default_base_image(str(path)) == expected


def test_without_a_host_ca_bundle_the_image_keeps_its_own():
    assert "COPY ca-bundle.crt" not in builderimage.dockerfile("debian:12", "1.0", host_ca=False)
    assert "COPY ca-bundle.crt" in builderimage.dockerfile("debian:12", "1.0", host_ca=True)
    assert "apt-get upgrade -y" in builderimage.dockerfile("debian:12", "1.0")


def test_a_new_month_makes_a_new_image():
    files = {"Dockerfile": b"FROM x\n"}
    assert builderimage.image_tag(files, "2026-12") != builderimage.image_tag(files, "2027-01")
    assert builderimage.period(0) == "1970-01"


def test_proxy_settings_reach_the_image_build_and_nothing_else():
    environ = {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "localhost", "HOME": "/root"}
    assert builderimage.proxy_args(environ) == {
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "localhost",
    }


def test_a_local_repo2docker_build_pins_its_release(monkeypatch):
    monkeypatch.setattr(builderimage.metadata, "version", lambda name: "2024.07.0+36.gabc")
    assert builderimage.repo2docker_version() == "2024.07.0"
