"""A throwaway Debian 12 machine with systemd as PID 1, for a real TLJH install.

The "box" is a Docker container run with the capabilities that work on these
machines instead of ``--privileged`` (see ``../shared/ENVIRONMENT.md``). Its
image is built from ``tests/tljh/image`` and cached under a tag made from a
hash of its inputs, so a warm machine only starts it. Everything the box
creates on the host (container, its ``/var/lib/docker`` volume, temp dirs) is
labelled and removed by :meth:`Box.remove`, also after a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = Path(__file__).resolve().parent / "image"
TLJH_TARBALL = ROOT.parent / "shared" / "vendor" / "the-littlest-jupyterhub-84ed38f.tar.gz"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_BUILDX = Path("/usr/local/lib/docker/cli-plugins/docker-buildx")
BASE_IMAGE = "tljh-repo2docker-dev/base:bookworm"
SINGLEUSER_IMAGE = "tljh-repo2docker-dev/singleuser:jh5"
BOX_REPO = "tljh-repo2docker-dev/tljh-box"
LABEL = "tljh-repo2docker-dev.tljh-box=1"

# What systemd in a container needs, without --privileged (which fails here:
# root lacks CAP_SYS_RESOURCE); measured in ENVIRONMENT.md.
RUN_FLAGS = [
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--device-cgroup-rule",
    "a *:* rwm",
    "--cgroupns=private",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
]


class BoxError(AssertionError):
    pass


def run(args, *, input=None, check=True, timeout=600, text=True):
    """Run a host command; on failure raise with its output."""
    result = subprocess.run(
        args, input=input, capture_output=True, text=text, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        out, err = result.stdout, result.stderr
        if not text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        raise BoxError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{out}\n{err}")
    return result


def missing_prerequisites() -> str:
    """What the host lacks to run the TLJH box ('' when nothing)."""
    if shutil.which("docker") is None:
        return "docker CLI not found (run scripts/setup-host)"
    if run(["docker", "info"], check=False, timeout=60).returncode != 0:
        return "the Docker engine is not running (run scripts/setup-host)"
    problems = []
    if not TLJH_TARBALL.is_file():
        problems.append(f"TLJH source {TLJH_TARBALL} is missing")
    if not HOST_CA.is_file():
        problems.append(f"{HOST_CA} is missing")
    if not HOST_BUILDX.is_file():
        problems.append(f"{HOST_BUILDX} is missing (run scripts/setup-host)")
    if run(["docker", "image", "inspect", BASE_IMAGE], check=False).returncode != 0:
        problems.append(f"image {BASE_IMAGE} is missing (run scripts/setup-host)")
    return "; ".join(problems)


def image_id(tag: str) -> str:
    result = run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def plugin_requirements() -> str:
    """The plugin's install requirements (as installed in this venv), to warm
    the box's pip cache: a cache only, the install resolves them itself."""
    from importlib.metadata import requires

    reqs = [r for r in requires("tljh-repo2docker") or [] if "extra ==" not in r]
    return "".join(f"{r}\n" for r in sorted(reqs))


def box_image() -> tuple[str, bool]:
    """The box image's tag, built only when its inputs changed; (tag, built)."""
    extra = {
        "host-ca.crt": HOST_CA.read_bytes(),
        "tljh.tar.gz": TLJH_TARBALL.read_bytes(),
        "warm-requirements.txt": plugin_requirements().encode(),
    }
    digest = hashlib.sha256()
    for path in sorted(IMAGE_DIR.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name, data in sorted(extra.items()):
        digest.update(name.encode() + b"\0" + data + b"\0")
    digest.update(image_id(BASE_IMAGE).encode())
    tag = f"{BOX_REPO}:{digest.hexdigest()[:16]}"
    if image_id(tag):
        return tag, False
    with tempfile.TemporaryDirectory(prefix="tljh-box-ctx-") as ctx:
        for path in IMAGE_DIR.iterdir():
            shutil.copy(path, ctx)
        for name, data in extra.items():
            (Path(ctx) / name).write_bytes(data)
        run(
            ["docker", "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, ctx],
            timeout=1200,
        )
    # older box images (inputs since changed) are ours and of no further use;
    # one still in use by a running box is refused by docker and stays
    old = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", BOX_REPO]).stdout
    for other in old.split():
        if other != tag:
            run(["docker", "rmi", other], check=False)
    return tag, True


def singleuser_image() -> bool:
    """A JupyterHub-5 single-user image (TLJH runs JupyterHub 5), as
    scripts/setup-host builds the JupyterHub-6 one; True when built now."""
    if image_id(SINGLEUSER_IMAGE):
        return False
    with tempfile.TemporaryDirectory(prefix="tljh-singleuser-ctx-") as ctx:
        shutil.copy(ROOT / "scripts" / "singleuser.Dockerfile", Path(ctx) / "Dockerfile")
        shutil.copy(HOST_CA, Path(ctx) / "host-ca.crt")
        run(
            [
                "docker",
                "build",
                "-q",
                "--build-arg",
                f"BASE={BASE_IMAGE}",
                "--build-arg",
                "HUB_MAJOR=5",
                "-t",
                SINGLEUSER_IMAGE,
                ctx,
            ],
            timeout=1200,
        )
    return True


def snapshot_plugin(dest: Path) -> Path:
    """The working tree as it is now (uncommitted changes included), as a git
    repository with one commit on ``main``: what ``--plugin git+file://`` installs.

    ``TLJH_PLUGIN_SOURCE=DIR`` (development only, never in CI) takes the files
    of another tree instead, e.g. ``git archive HEAD`` unpacked, to show which
    checks fail without the working tree's changes."""
    source = Path(os.environ.get("TLJH_PLUGIN_SOURCE") or ROOT)
    if (source / ".git").exists():
        listed = run(
            ["git", "-C", str(source), "ls-files", "-z", "-co", "--exclude-standard"], text=False
        ).stdout.split(b"\0")
    else:
        listed = [str(p.relative_to(source)).encode() for p in source.rglob("*") if p.is_file()]
    dest.mkdir(parents=True)
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = source / rel
        if not src.is_file() or src.is_symlink() and not src.exists():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "tljh test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "tljh test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", str(dest), *args], check=True, env=env, capture_output=True)
    return dest


def unpack_tljh(dest: Path) -> Path:
    with tarfile.open(TLJH_TARBALL) as tar:
        tar.extractall(dest, filter="data")
    (top,) = [p for p in dest.iterdir() if p.is_dir()]
    return top


class Box:
    """One running box: ``exec``/``sh`` run commands in it as root."""

    def __init__(self, image: str):
        self.image = image
        suffix = os.urandom(4).hex()
        self.name = f"tljh-box-{suffix}"
        self.volume = f"tljh-box-docker-{suffix}"
        self.started = False

    # -- lifecycle -----------------------------------------------------------
    @classmethod
    def attach(cls, name: str) -> Box:
        """A box kept by an earlier run (``TLJH_BOX_KEEP=1``), reused with
        ``TLJH_BOX_REUSE=<name>``: development only, to rerun some checks
        without a new install. Neither is set in CI."""
        box = cls("")
        box.name = name
        box.volume = run(
            ["docker", "inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", name]
        ).stdout.strip()
        return box

    def start(self) -> Box:
        run(["docker", "volume", "create", "--label", LABEL, self.volume])
        run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                self.name,
                "--hostname",
                "tljh",
                "--label",
                LABEL,
                *RUN_FLAGS,
                "-v",
                f"{self.volume}:/var/lib/docker",
                # Traefik's ports 80 and 443 (once https is on) on loopback
                # only, on ports Docker picks.
                "-p",
                "127.0.0.1::80",
                "-p",
                "127.0.0.1::443",
                self.image,
            ]
        )
        self.started = True
        self.wait_for_systemd()
        return self

    def wait_for_systemd(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.exec(["systemctl", "is-system-running"], check=False)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise BoxError(f"systemd in {self.name} did not come up: {state!r}\n{self.logs()}")

    def restart(self) -> None:
        """A reboot: systemd stops every unit, then the box boots again."""
        run(["docker", "restart", "-t", "30", self.name], timeout=120)
        self.wait_for_systemd()

    def remove(self) -> None:
        # also when start() failed half-way: docker run may have created it
        run(["docker", "rm", "-f", "-v", self.name], check=False, timeout=120)
        run(["docker", "volume", "rm", "-f", self.volume], check=False, timeout=120)

    def leftovers(self) -> list[str]:
        """This box's container or volume, if still on the host."""
        found = []
        for kind, name in (("container", self.name), ("volume", self.volume)):
            if run(["docker", kind, "inspect", name], check=False).returncode == 0:
                found.append(f"{kind} {name}")
        return found

    # -- commands ------------------------------------------------------------
    def exec(self, args, *, input=None, check=True, timeout=600, user=None, env=None):
        cmd = ["docker", "exec", "-i"]
        if user:
            cmd += ["-u", user]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        return run([*cmd, self.name, *args], input=input, check=check, timeout=timeout)

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.exec(["bash", "-euo", "pipefail", "-c", script], **kwargs)

    def copy_in(self, src: Path, dest: str) -> None:
        self.exec(["mkdir", "-p", dest])
        run(["docker", "cp", f"{src}/.", f"{self.name}:{dest}"], timeout=300)

    def load_image(self, *tags: str) -> None:
        """docker save on the host | docker load in the box (it cannot pull).
        One stream for all tags: layers they share are sent once."""
        save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
        try:
            load = subprocess.run(
                ["docker", "exec", "-i", self.name, "docker", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            save.stdout.close()
            save.wait(timeout=600)
        if load.returncode != 0 or save.returncode != 0:
            raise BoxError(f"loading {tags} into the box failed:\n{load.stdout}\n{load.stderr}")

    def url(self, scheme: str = "http") -> str:
        """Traefik's port 80 (or 443 for ``https``), published on the host's loopback."""
        port = {"http": 80, "https": 443}[scheme]
        out = run(["docker", "port", self.name, f"{port}/tcp"]).stdout.split()
        address = next(a for a in out if a.startswith("127.0.0.1:"))
        return f"{scheme}://{address}"

    def logs(self) -> str:
        return run(["docker", "logs", "--tail", "50", self.name], check=False).stderr

    def journal(self, lines: int = 200) -> str:
        result = self.exec(
            [
                "bash",
                "-c",
                # Traefik's access log of successful requests would drown the rest
                "journalctl --no-pager -u jupyterhub -u traefik -u docker"
                " | grep -v -e '\"DownstreamStatus\":[23]' -e 'module=grpc'"
                f" | tail -n {int(lines)};"
                " echo '--- docker ps -a (in the box)'; docker ps -a 2>&1;"
                " echo '--- uptime'; uptime",
            ],
            check=False,
        )
        return result.stdout + result.stderr

    def config(self) -> dict:
        """TLJH's config.yaml, as ``tljh-config show`` prints it."""
        import yaml

        return yaml.safe_load(self.exec(["tljh-config", "show"]).stdout) or {}
