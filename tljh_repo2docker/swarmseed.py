"""Copy an environment's files into a user's home on a swarm (issue 12).

On one host the spawner copies the image's home out through the local
engine (``projects.seed_project``). On a swarm the control node may not
hold the image at all: the copy runs where images are, as a one-shot
Swarm job on a worker. The job runs the environment's image **as the home's
owner** (never root, no capabilities) with the user's home
mounted beside the image's home, and copies with the same rules as on one
host:

- only the image home's visible entries (no dot files, caches, links or
  special files: nothing in the copy can point outside it);
- made in a hidden staging folder of the home, then moved to its name with
  one ``renameat2(RENAME_NOREPLACE)``: never half made, and a folder, file
  or link of the user's under that name is never touched or replaced;
- owner read/write; execute bits as in the image.

Because the copy runs with the user's own rights, a link the user's other
server swaps in can gain them nothing they do not have.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time

import docker.errors
import requests

from . import labels
from .aiotime import within

log = logging.getLogger(__name__)

SEED_LABEL = "tljh_repo2docker.seed"
HOME_MOUNT = "/srv/tljh-r2d-home"  # the user's home, in the job's container
FINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})

# Run by the image's python3 (every single-user image has one). Arguments:
# the image's home, the mounted user home, the folder name, "1" to make no
# folder when there is nothing to copy. The verdict is the exit code (read
# from the task's status: no logging driver needed); anything else is a
# failure whose traceback is in the job's log.
COPIED, EXISTS, NOTHING = 0, 3, 4
SEED_SCRIPT = r"""
import ctypes, errno, os, shutil, stat, sys, tempfile, time

src, home, name, skip_empty = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
target = os.path.join(home, name)


def done(code):
    sys.exit(code)  # 0 copied, 3 the name is taken, 4 nothing to copy


def copy_into(source, dest, names):
    # folders and regular files only: never links or special files
    for entry in names:
        old, new = os.path.join(source, entry), os.path.join(dest, entry)
        mode = os.lstat(old).st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(new, 0o700)
            copy_into(old, new, sorted(os.listdir(old)))
            os.chmod(new, (mode & 0o755) | 0o700)
        elif stat.S_ISREG(mode):
            shutil.copyfile(old, new, follow_symlinks=False)
            os.chmod(new, (mode & 0o755) | 0o600)


def move_no_replace(old, new):
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(-100, old.encode(), -100, new.encode(), 1) == 0:  # RENAME_NOREPLACE
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), new)
    if os.path.lexists(new):
        return False
    os.rename(old, new)
    return True


# staging left by a copy that was killed (its job timed out) an hour ago
for entry in os.listdir(home):
    path = os.path.join(home, entry)
    if entry.startswith(".tljh-r2d-seed-") and not os.path.islink(path):
        try:
            if os.path.isdir(path) and time.time() - os.lstat(path).st_mtime > 3600:
                shutil.rmtree(path)
        except OSError:
            pass
if os.path.lexists(target):
    done(3)
entries = sorted(e for e in os.listdir(src) if not e.startswith("."))  # no dot files
if skip_empty and not entries:
    done(4)
staging = tempfile.mkdtemp(prefix=".tljh-r2d-seed-", dir=home)
try:
    copy_into(src, staging, entries)
    if not move_no_replace(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        done(3)
except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
done(0)
"""


class SeedFailed(RuntimeError):
    """The copy job did not finish; the message says why (Docker's reason,
    the job's last log lines)."""


def job_spec(
    image: str,
    user: str,
    home: str,
    image_home: str,
    name: str,
    skip_empty: bool,
    constraints: list[str],
    hub_name: str,
    owner: str,
) -> dict:
    """``services.create`` arguments of one copy job (pure)."""
    job_labels = {SEED_LABEL: "true", labels.HUB: hub_name, labels.USER: owner}
    return {
        "task_template": {
            "ContainerSpec": {
                "Image": image,
                # Command replaces the image's entrypoint: only the copy runs
                "Command": ["python3", "-c", SEED_SCRIPT],
                "Args": [image_home, HOME_MOUNT, name, "1" if skip_empty else "0"],
                "User": user,
                "Mounts": [{"Type": "bind", "Source": home, "Target": HOME_MOUNT}],
                "CapabilityDrop": ["ALL"],
                "Labels": job_labels,
            },
            "Resources": {"Limits": {"MemoryBytes": 256 * 2**20, "Pids": 64}},
            "Placement": {"Constraints": list(constraints)},
            "RestartPolicy": {"Condition": "none"},
            "Networks": [],
        },
        "name": f"tljh-r2d-seed-{os.urandom(4).hex()}",
        "labels": job_labels,
        "mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
    }


def verdict(task: dict) -> bool | None:
    """From a finished task (pure): True copied, False the name was taken or
    there was nothing to copy, None a failure."""
    status = task.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    if status.get("State") == "complete":
        return True  # exit code 0
    if status.get("State") == "failed" and code in (EXISTS, NOTHING):
        return False
    return None


def _log_text(client, service_id: str) -> str:
    """The job's last lines (docker-py's generator, read here: in a thread)."""
    try:
        chunks = client.service_logs(service_id, stdout=True, stderr=True, tail=20, is_tty=False)
        return b"".join(chunks).decode(errors="replace")
    except (docker.errors.DockerException, requests.RequestException):
        return ""  # no logs (a driver without them): the reason alone


def unplaceable(tasks: list[dict]) -> str:
    """Swarm's reason when the job's task waits for a node that fits (pure);
    '' while it is placed or nothing is said."""
    for task in tasks:
        status = task.get("Status") or {}
        if status.get("State") == "pending" and (status.get("Err") or ""):
            return str(status["Err"]).strip()[:500]
    return ""


def created_at(value: str) -> datetime.datetime | None:
    """Docker's ``CreatedAt`` (nanoseconds, ``Z``) as an aware time, or None."""
    try:
        stamp, _, fraction = value.rstrip("Z").partition(".")
        parsed = datetime.datetime.fromisoformat(stamp + "." + (fraction + "000000")[:6])
    except (AttributeError, ValueError):
        return None
    return parsed.replace(tzinfo=datetime.timezone.utc)


def stale_jobs(
    services: list[dict], hub_name: str, now: datetime.datetime, max_age: float
) -> list[str]:
    """The ids of this hub's copy jobs older than ``max_age`` seconds (pure).
    A live copy removes its job within its timeout; an older one was left by
    a hub that stopped mid-copy."""
    found = []
    for service in services:
        spec_labels = (service.get("Spec") or {}).get("Labels") or {}
        if spec_labels.get(SEED_LABEL) != "true" or spec_labels.get(labels.HUB) != hub_name:
            continue
        created = created_at(service.get("CreatedAt", ""))
        if created is not None and (now - created).total_seconds() > max_age:
            found.append(service["ID"])
    return found


async def sweep_stale_jobs(client, hub_name: str, max_age: float) -> list[str]:
    """Remove the copy jobs a stopped hub left on the swarm (best effort:
    a failure here must not fail a start)."""
    try:
        services = await asyncio.to_thread(
            client.services, filters={"label": [f"{SEED_LABEL}=true", f"{labels.HUB}={hub_name}"]}
        )
        now = datetime.datetime.now(datetime.timezone.utc)
        doomed = stale_jobs(services, hub_name, now, max_age)
        for service_id in doomed:
            log.warning("removing copy job %s that a stopped hub left", service_id)
            await asyncio.to_thread(client.remove_service, service_id)
        return doomed
    except (docker.errors.DockerException, requests.RequestException) as e:
        log.warning("could not look for copy jobs left on the swarm: %s", e)
        return []


async def run_seed_job(
    client, spec: dict, timeout: float = 300, unschedulable_timeout: float = 15
) -> bool:
    """Run one copy job with ``client`` (the spawner's docker-py client of
    the manager: its URL and TLS) and remove it; True when it copied, False
    when the folder was there already or there was nothing to copy.
    SeedFailed with the reason otherwise."""
    hub_name = (spec.get("labels") or {}).get(labels.HUB)
    if hub_name:
        # this hub's own leftovers: older than any copy still at work
        await sweep_stale_jobs(client, hub_name, max_age=timeout + 60)
    service = await asyncio.to_thread(client.create_service, **spec)
    service_id = service["ID"]
    try:
        started = time.monotonic()
        deadline = started + timeout
        delay = 0.1
        while True:
            tasks = await asyncio.to_thread(client.tasks, filters={"service": service_id})
            finished = [t for t in tasks if ((t.get("Status") or {}).get("State")) in FINAL_STATES]
            if finished:
                task = finished[0]
                break
            waiting = unplaceable(tasks)
            if waiting and time.monotonic() - started > unschedulable_timeout:
                raise SeedFailed(f"no node of the swarm can run the copy: {waiting}")
            if time.monotonic() > deadline:
                raise SeedFailed(f"the copy did not finish within {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        result = verdict(task)
        if result is not None:
            return result
        status = task.get("Status") or {}
        reason = str(status.get("Err") or status.get("Message") or status.get("State")).strip()
        try:  # a worker that stops answering must not hold the start
            log = await within(15, asyncio.to_thread(_log_text, client, service_id))
        except asyncio.TimeoutError:
            log = ""
        tail = log.strip()[-1500:]
        raise SeedFailed(reason + (f"; its log:\n{tail}" if tail else ""))
    finally:
        try:
            await asyncio.to_thread(client.remove_service, service_id)
        except docker.errors.DockerException:
            pass  # already gone
