"""Docker helpers for tests: real engine, cleanup by label, logs on failure."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tljh_repo2docker import labels

ROOT = Path(__file__).resolve().parent.parent
# scripts/setup-host builds one per JupyterHub major; the test run on
# JupyterHub 5 (scripts/test) points this at the matching one.
SINGLEUSER_IMAGE = os.environ.get(
    "TLJH_R2D_SINGLEUSER_IMAGE", "tljh-repo2docker-dev/singleuser:latest"
)


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(
        ["docker", *args], check=check, capture_output=True, text=True
    ).stdout.strip()


def containers(hub_name: str, user: str | None = None, all_states: bool = True) -> list[str]:
    filters = ["--filter", f"label={labels.HUB}={hub_name}", "--filter", f"label={labels.SERVER}"]
    if user:
        filters += ["--filter", f"label={labels.USER}={user}"]
    out = docker("ps", "-q", *(["-a"] if all_states else []), *filters)
    return out.split()


def inspect(ref: str) -> dict:
    return json.loads(docker("inspect", ref))[0]


def dump_container_logs(hub_name: str) -> str:
    parts = []
    for cid in containers(hub_name):
        logs = subprocess.run(
            ["docker", "logs", "--tail", "50", cid], capture_output=True, text=True
        )
        parts.append(f"--- container {cid} ---\n{logs.stdout}{logs.stderr}")
    return "\n".join(parts)


def remove_hub_objects(hub_name: str):
    """Remove every container and image that carries this hub's label."""
    for cid in containers(hub_name):
        docker("rm", "-f", "-v", cid, check=False)  # and anonymous volumes
    images = docker("images", "-q", "--filter", f"label={labels.HUB}={hub_name}").split()
    if images:
        docker("rmi", "-f", *sorted(set(images)), check=False)


def make_git_repo(path: Path, marker: str) -> Path:
    """A Dockerfile repository (the only kind that builds offline) with a tag."""
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nRUN echo {marker} > /tmp/marker-v1\n"
    )

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
            cwd=path,
            check=True,
            capture_output=True,
        )

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-qm", "first")
    git("tag", "-a", "v1", "-m", "version 1")
    return path


def make_course_repo(path: Path, marker: str) -> Path:
    """A repository whose image has its files in the home, as repo2docker's
    build packs put them: ``lesson.md``, ``data/points.csv`` and a hidden
    ``.hidden`` that is never copied into a home."""
    make_git_repo(path, marker=marker)
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    )
    (path / "lesson.md").write_text("# Lesson 1\n")
    (path / "data").mkdir()
    (path / "data" / "points.csv").write_text("x,y\n1,2\n")
    (path / ".hidden").write_text("not for users\n")
    commit_change(path, "# with files")
    return path


def commit_change(path: Path, line: str) -> str:
    with open(path / "Dockerfile", "a") as f:
        f.write(line + "\n")
    return commit_all(path)


def commit_all(path: Path, message: str = "change") -> str:
    """Commit everything in the working tree; the new commit's hash."""
    for args in (["add", "."], ["commit", "-qm", message]):
        subprocess.run(
            ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
            cwd=path,
            check=True,
            capture_output=True,
        )
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()
