"""The copy job of a swarm (swarmseed.py): its script, run here by this
machine's python3 on real folders exactly as the job runs it in the image,
and the job's spec. The job on a real swarm is in tests/swarm/test_swarm_hub.py."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
import time

import docker.errors
import pytest

from tljh_repo2docker import labels, swarmseed


def run_script(src, home, name, skip_empty=False):
    result = subprocess.run(
        [sys.executable, "-c", swarmseed.SEED_SCRIPT, str(src), str(home), name,
         "1" if skip_empty else "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode in (swarmseed.COPIED, swarmseed.EXISTS, swarmseed.NOTHING), (
        result.stderr
    )
    return result.returncode


@pytest.fixture
def image_home(tmp_path):
    home = tmp_path / "image-home"
    (home / "lessons").mkdir(parents=True)
    (home / "lessons" / "one.ipynb").write_text("{}")
    (home / "run.sh").write_text("#!/bin/sh\n")
    (home / "run.sh").chmod(0o755)
    (home / ".cache").mkdir()
    (home / ".bashrc").write_text("x")
    (home / "lessons" / ".hidden-inside").write_text("kept: only the top is filtered")
    os.symlink("/etc/passwd", home / "passwd")
    os.symlink("/etc", home / "lessons" / "etc")
    os.mkfifo(home / "pipe")
    return home


def listing(root):
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )


def test_copies_visible_files_and_folders_only(image_home, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert run_script(image_home, home, "course") == swarmseed.COPIED
    assert listing(home / "course") == [
        "lessons", "lessons/.hidden-inside", "lessons/one.ipynb", "run.sh",
    ]  # fmt: skip
    assert stat.S_IMODE(os.stat(home / "course" / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(home / "course" / "lessons" / "one.ipynb").st_mode) & 0o600 == 0o600
    assert os.listdir(home) == ["course"]  # no staging left behind


@pytest.mark.parametrize("kind", ["folder", "file", "link"])
def test_a_name_already_taken_is_never_touched(image_home, tmp_path, kind):
    home = tmp_path / "home"
    home.mkdir()
    target = home / "course"
    if kind == "folder":
        target.mkdir()
        (target / "mine.txt").write_text("mine")
    elif kind == "file":
        target.write_text("mine")
    else:
        os.symlink("/etc", target)
    assert run_script(image_home, home, "course") == swarmseed.EXISTS
    if kind == "folder":
        assert listing(target) == ["mine.txt"]
    elif kind == "file":
        assert target.read_text() == "mine"
    else:
        assert os.readlink(target) == "/etc"
    assert sorted(os.listdir(home)) == ["course"]


def test_nothing_to_copy_makes_no_folder_when_asked(tmp_path):
    src = tmp_path / "image-home"
    src.mkdir()
    (src / ".bashrc").write_text("x")
    home = tmp_path / "home"
    home.mkdir()
    assert run_script(src, home, "course", skip_empty=True) == swarmseed.NOTHING
    assert os.listdir(home) == []
    assert run_script(src, home, "project") == swarmseed.COPIED  # a launch: an empty folder
    assert os.listdir(home / "project") == []


def test_the_job_runs_as_the_owner_without_rights_and_names_are_arguments():
    spec = swarmseed.job_spec(
        image="reg:5000/h/demo:abc", user="1000:100", home="/home/jupyter-ann",
        image_home="/home/jovyan", name="x'; rm -rf /", skip_empty=True,
        constraints=["node.role==worker"], hub_name="h", owner="ann",
    )  # fmt: skip
    container = spec["task_template"]["ContainerSpec"]
    assert container["User"] == "1000:100"
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Command"] == ["python3", "-c", swarmseed.SEED_SCRIPT]
    assert container["Args"] == ["/home/jovyan", swarmseed.HOME_MOUNT, "x'; rm -rf /", "1"]
    assert container["Mounts"] == [
        {"Type": "bind", "Source": "/home/jupyter-ann", "Target": swarmseed.HOME_MOUNT}
    ]
    assert spec["mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert spec["task_template"]["RestartPolicy"] == {"Condition": "none"}
    assert spec["task_template"]["Placement"]["Constraints"] == ["node.role==worker"]
    assert spec["labels"][labels.HUB] == "h" and spec["labels"][labels.USER] == "ann"


def finished(state, code):
    return {"Status": {"State": state, "ContainerStatus": {"ExitCode": code}}}


def test_the_verdict_is_the_exit_code_in_the_tasks_status():
    assert swarmseed.verdict(finished("complete", 0)) is True
    assert swarmseed.verdict(finished("failed", swarmseed.EXISTS)) is False
    assert swarmseed.verdict(finished("failed", swarmseed.NOTHING)) is False
    assert swarmseed.verdict(finished("failed", 1)) is None  # a traceback
    assert swarmseed.verdict(finished("rejected", None)) is None
    assert swarmseed.verdict({}) is None


def test_a_failure_in_the_copy_is_an_error_not_a_verdict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", swarmseed.SEED_SCRIPT, str(tmp_path / "missing"), str(tmp_path),
         "x", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode not in (swarmseed.COPIED, swarmseed.EXISTS, swarmseed.NOTHING)
    assert "FileNotFoundError" in result.stderr
    assert os.listdir(tmp_path) == []


def test_staging_left_by_a_killed_copy_long_ago_is_removed(image_home, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    old = home / ".tljh-r2d-seed-old"
    (old / "half").mkdir(parents=True)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    recent = home / ".tljh-r2d-seed-now"  # maybe another copy at work
    recent.mkdir()
    assert run_script(image_home, home, "course") == swarmseed.COPIED
    assert sorted(os.listdir(home)) == [".tljh-r2d-seed-now", "course"]


class FakeManager:
    """docker-py's calls that run_seed_job makes, answering with ``tasks``."""

    def __init__(self, tasks, log=b"", services=()):
        self._tasks = tasks
        self._log = log
        self._services = list(services)
        self.created = []
        self.removed = []

    def services(self, filters):
        assert filters == {"label": [f"{swarmseed.SEED_LABEL}=true", f"{labels.HUB}=hub1"]}
        return self._services

    def create_service(self, **spec):
        self.created.append(spec)
        return {"ID": "job1"}

    def tasks(self, filters):
        assert filters == {"service": "job1"}
        return self._tasks

    def service_logs(self, service_id, **kwargs):
        assert kwargs["is_tty"] is False
        return iter([self._log])

    def remove_service(self, service_id):
        self.removed.append(service_id)


def seed(manager, **kwargs):
    import asyncio

    spec = {"task_template": {}, "name": "n", "labels": {labels.HUB: "hub1"}, "mode": {}}
    return asyncio.run(swarmseed.run_seed_job(manager, spec, **kwargs))


def job(service_id: str, created: str, hub: str = "hub1", seed: str = "true") -> dict:
    return {
        "ID": service_id,
        "CreatedAt": created,
        "Spec": {"Labels": {swarmseed.SEED_LABEL: seed, labels.HUB: hub}},
    }


def test_jobs_a_stopped_hub_left_are_removed_before_the_next_copy():
    now = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    services = [
        job("old", "2026-12-01T11:50:00.123456789Z"),
        job("recent", "2026-12-01T11:58:30.5Z"),  # maybe another copy at work
        job("other-hub", "2026-12-01T10:00:00Z", hub="hub2"),
        job("not-a-copy", "2026-12-01T10:00:00Z", seed="false"),
        job("unreadable", "yesterday"),
    ]
    assert swarmseed.stale_jobs(services, "hub1", now, max_age=360) == ["old"]
    assert swarmseed.created_at("2026-12-01T11:50:00.123456789Z") == datetime.datetime(
        2026, 12, 1, 11, 50, 0, 123456, tzinfo=datetime.timezone.utc
    )
    left = job("left", "2020-01-01T00:00:00.000000001Z")
    manager = FakeManager([finished("complete", 0)], services=[left])
    assert seed(manager) is True
    assert manager.removed == ["left", "job1"]


def test_a_failed_look_for_leftovers_does_not_fail_the_copy():
    class Unreachable(FakeManager):
        def services(self, filters):
            raise docker.errors.APIError("manager gone")

    manager = Unreachable([finished("complete", 0)])
    assert seed(manager) is True
    assert manager.removed == ["job1"]


def test_the_job_answers_by_its_exit_code_and_is_always_removed():
    for tasks, expected in (
        ([finished("complete", 0)], True),
        ([finished("failed", swarmseed.EXISTS)], False),
    ):
        manager = FakeManager(tasks)
        assert seed(manager) is expected
        assert manager.removed == ["job1"]
    manager = FakeManager([finished("failed", 1)], log=b"Traceback\nPermissionError: x\n")
    with pytest.raises(swarmseed.SeedFailed, match="PermissionError"):
        seed(manager)
    assert manager.removed == ["job1"]


def test_a_job_no_node_can_take_says_swarms_reason_soon():
    pending = {"Status": {"State": "pending", "Err": "no suitable node (1 node not available)"}}
    manager = FakeManager([pending])
    began = time.monotonic()
    with pytest.raises(swarmseed.SeedFailed, match="no suitable node"):
        seed(manager, timeout=60, unschedulable_timeout=0.3)
    assert time.monotonic() - began < 10
    assert manager.removed == ["job1"]
