"""Security specification: what a hostile user can NOT do with a server.

The user is a stranger to the admin. They may build any Dockerfile (the
default build policy), so the image, its USER and its entrypoint are theirs;
they can run any code in their running servers at any moment, also while
the hub prepares another of their servers. Someone else's launch link may
run code in their server. Each test below is one rule, with a real Docker
engine, a real hub and real repo2docker builds:

1. A server never runs as root, whatever the image says: it runs as the uid
   that owns the home, with every capability dropped, ``no-new-privileges``,
   a seccomp profile, a pids limit and a memory limit.
2. No setuid/setgid file and no device node can be made in a home (which
   any local account could otherwise use on the host).
3. An image that needs root to start fails with a message that says why,
   and leaves no container or anonymous volume behind.
4. Code started from a launch link sees only its project folder, unless
   the user (or admin) opens the whole home on purpose; either way the
   project folder is the server's root.
5. A link or a swapped folder in the home never gets anything but the
   user's own folder mounted into a server.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest
import requests

from tljh_repo2docker import labels, projects

from ..conftest import run_cli
from ..dockerfixtures import SINGLEUSER_IMAGE, commit_change, containers, docker, make_git_repo

pytestmark = pytest.mark.docker

# What the hostile image runs when its server starts, before the real server.
HOSTILE_START = """#!/bin/sh
{
  id
  cp /bin/sh "$HOME/rootsh" && chmod u+s "$HOME/rootsh" && echo SETUID-MADE
  chmod g+s "$HOME/rootsh" && echo SETGID-MADE
  mknod "$HOME/mem" c 1 1 && echo DEVICE-MADE
  chown 0:0 "$HOME/rootsh" && echo CHOWNED-TO-ROOT
} > "$HOME/attempts.txt" 2>&1
exec /opt/venv/bin/jupyterhub-singleuser-real "$@"
"""

# An entrypoint that fails whoever runs it.
CRASHING_START = """#!/bin/sh
echo "this server gives up"
exit 3
"""

# An entrypoint that cannot work without root.
NEEDS_ROOT_START = """#!/bin/sh
set -e
echo "preparing as root"
touch /root/prepared
exec /opt/venv/bin/jupyterhub-singleuser-real "$@"
"""

WRAPPING_DOCKERFILE = f"""FROM {SINGLEUSER_IMAGE}
USER root
RUN mv /opt/venv/bin/jupyterhub-singleuser /opt/venv/bin/jupyterhub-singleuser-real
COPY start.sh /opt/venv/bin/jupyterhub-singleuser
RUN chmod 755 /opt/venv/bin/jupyterhub-singleuser
VOLUME /scratch
USER root
"""

# Run inside a server (as the server's user): every way to make a setuid,
# setgid or device file, or to get capabilities back; prints what worked.
PROBE = r"""
import ctypes, json, os, stat
libc = ctypes.CDLL(None, use_errno=True)
home = os.environ["HOME"]
base = os.path.join(home, "probe")
open(base, "w").close()
results = {}
def attempt(name, fn):
    try:
        r = fn()
        if isinstance(r, int) and r < 0:
            raise OSError(ctypes.get_errno(), "syscall")
        results[name] = "ALLOWED"
    except OSError as e:
        results[name] = e.errno
attempt("chmod_setuid", lambda: os.chmod(base, 0o4755))
attempt("chmod_setgid", lambda: os.chmod(base, 0o2755))
attempt("fchmod_setuid", lambda: os.fchmod(os.open(base, os.O_RDONLY), 0o4755))
attempt("fchmodat2_setuid", lambda: libc.syscall(452, -100, base.encode(), 0o4755, 0))
attempt("open_creat_setuid", lambda: os.open(base + "-new", os.O_CREAT | os.O_WRONLY, 0o4755))
attempt("open_tmpfile_setgid", lambda: os.open(home, os.O_TMPFILE | os.O_WRONLY, 0o2755))
attempt("mknod_setuid_file", lambda: os.mknod(base + "-reg", stat.S_IFREG | 0o4755))
dev = os.makedev(1, 3)
attempt("mknod_char_device", lambda: os.mknod(base + "-dev", stat.S_IFCHR | 0o666, dev))
attempt("chown_root", lambda: os.chown(base, 0, 0))
attempt("unshare_user_namespace", lambda: libc.unshare(0x10000000))
attempt("io_uring_setup", lambda: libc.syscall(425, 8, ctypes.create_string_buffer(120)))
attempt("chmod_plain", lambda: os.chmod(base, 0o755))  # ordinary work still works
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
keys = ("Uid", "Gid", "CapEff", "CapPrm", "NoNewPrivs", "Seccomp")
results["status"] = {k: status[k].strip() for k in keys}
print(json.dumps(results))
"""


def build(hub, tmp_path_factory, name: str, files: dict, dockerfile: str) -> str:
    repo = make_git_repo(tmp_path_factory.mktemp(name) / name, marker=name)
    for path, text in files.items():
        (repo / path).write_text(text)
    (repo / "Dockerfile").write_text(dockerfile)
    commit_change(repo, f"# {name}")
    result = run_cli(hub, "build", f"file://{repo}", "--name", name)
    return result.stdout.strip().splitlines()[-1].split()[-1]


@pytest.fixture(scope="module")
def hostile_image(hub, tmp_path_factory):
    return build(hub, tmp_path_factory, "hostile", {"start.sh": HOSTILE_START}, WRAPPING_DOCKERFILE)


@pytest.fixture(scope="module")
def needs_root_image(hub, tmp_path_factory):
    return build(
        hub, tmp_path_factory, "needsroot", {"start.sh": NEEDS_ROOT_START}, WRAPPING_DOCKERFILE
    )


@pytest.fixture(scope="module")
def crashing_image(hub, tmp_path_factory):
    return build(
        hub, tmp_path_factory, "crashing", {"start.sh": CRASHING_START}, WRAPPING_DOCKERFILE
    )


@pytest.fixture(scope="module")
def course_image(hub, tmp_path_factory):
    """A repository whose files repo2docker-style land in the image's home."""
    return build(
        hub,
        tmp_path_factory,
        "course",
        {"lesson.md": "# Lesson\n"},
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n",
    )


def home_of(hub_settings, user: str) -> str:
    return os.path.join(hub_settings["homes_dir"], f"jupyter-{user}")


def start(hub, user: str, options: dict, server: str = "") -> requests.Response:
    hub.api("POST", f"/users/{user}")
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    return hub.api("POST", path, json=options)


def the_container(hub_name: str, user: str, server: str = "") -> str:
    ids = [
        cid
        for cid in containers(hub_name, user)
        if docker("inspect", "-f", f'{{{{index .Config.Labels "{labels.SERVER_NAME}"}}}}', cid)
        == server
    ]
    assert len(ids) == 1, ids
    return ids[0]


def run_in(cid: str, *command: str) -> subprocess.CompletedProcess:
    """Code the user runs in their server (docker exec keeps the container's
    user, capabilities, no-new-privileges and seccomp profile)."""
    return subprocess.run(
        ["docker", "exec", cid, *command], capture_output=True, text=True, timeout=60
    )


def special_files(top: str) -> list[str]:
    """Everything under ``top`` (on the host) that is setuid, setgid or a device."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if info.st_mode & (stat.S_ISUID | stat.S_ISGID) or stat.S_ISCHR(
                info.st_mode
            ) | stat.S_ISBLK(info.st_mode):
                found.append(os.path.join(dirpath, name))
    return found


def stop(hub, user: str, server: str = ""):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    hub.api("DELETE", path)
    hub.wait_stopped(user, server)


# --- 1 and 2: never root, nothing special in the home ----------------------------


def test_an_image_ending_in_user_root_runs_as_the_homes_owner_confined(
    hub, hostile_image, hub_name, hub_settings
):
    """An image whose Dockerfile ends with ``USER root`` and wraps
    jupyterhub-singleuser starts as the home's owner (uid 1000, group 100),
    with no capability, no-new-privileges, seccomp, a pids limit and the
    default memory limit (the environment and TLJH set none)."""
    r = start(hub, "mallory", {"environment": "hostile"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("mallory")
    cid = the_container(hub_name, "mallory")
    info = json.loads(docker("inspect", cid))[0]
    assert info["Config"]["User"] == "1000:100"
    host = info["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert any(opt.startswith("seccomp=") for opt in host["SecurityOpt"])
    assert not host["Privileged"]
    assert host["PidsLimit"] == 1024
    assert host["Memory"] == 2 * 1024**3
    # every process of the server, as the kernel sees it
    ps = run_in(cid, "sh", "-c", "cat /proc/[0-9]*/status | grep -E '^(Uid|CapEff|NoNewPrivs)'")
    lines = ps.stdout.splitlines()
    assert lines, ps.stderr
    for line in lines:
        key, value = line.split(":", 1)
        if key == "Uid":
            assert value.split() == ["1000"] * 4, line
        elif key == "CapEff":
            assert int(value, 16) == 0, line
        else:
            assert value.strip() == "1", line
    attempts = open(os.path.join(home_of(hub_settings, "mallory"), "attempts.txt")).read()
    assert "uid=1000" in attempts and "gid=100" in attempts, attempts
    for made in ("SETUID-MADE", "SETGID-MADE", "DEVICE-MADE", "CHOWNED-TO-ROOT"):
        assert made not in attempts, attempts


def test_no_setuid_setgid_or_device_file_can_be_made_in_a_running_server(
    hub, hostile_image, hub_name, hub_settings
):
    """Inside a running server, every system call that would make a setuid
    or setgid file (chmod, fchmod, fchmodat2, open/O_CREAT, O_TMPFILE,
    mknod) or a device node, chown to root, or get capabilities back in a
    user namespace fails; ordinary chmod still works. On the host, the home
    holds no setuid, setgid or device file."""
    cid = the_container(hub_name, "mallory")
    result = run_in(cid, "python3", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    status = got.pop("status")
    assert got.pop("chmod_plain") == "ALLOWED"
    allowed = [name for name, outcome in got.items() if outcome == "ALLOWED"]
    assert allowed == [], got
    assert status["Uid"].split() == ["1000"] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    # the shell's own chmod/mknod/chown too
    shell = run_in(
        cid,
        "sh",
        "-c",
        'cp /bin/sh "$HOME/sh2"; chmod u+s "$HOME/sh2" && echo S; '
        'mknod "$HOME/null2" c 1 3 && echo D; chown root "$HOME/sh2" && echo C; true',
    )
    assert shell.stdout.strip() == "", shell
    assert special_files(home_of(hub_settings, "mallory")) == []
    stop(hub, "mallory")


def test_homes_are_made_with_a_group_that_is_no_admin_group(hub, hostile_image, hub_settings):
    """New homes belong to the user uid and group 100 ("users"), not gid
    1000 (TLJH's jupyterhub-admins); their files too."""
    home = home_of(hub_settings, "mallory")
    assert (os.stat(home).st_uid, os.stat(home).st_gid) == (1000, 100)
    assert os.stat(os.path.join(home, "attempts.txt")).st_gid == 100


def test_an_existing_home_keeps_its_owner_and_group(hub, hostile_image, hub_name, hub_settings):
    """A home made before (e.g. 1000:1000 by an older version) is never
    chowned; the server runs as its owner uid with the non-admin group."""
    home = home_of(hub_settings, "olduser")
    os.makedirs(home, mode=0o700)
    with open(os.path.join(home, "old.txt"), "w") as f:
        f.write("mine")
    for path in (home, os.path.join(home, "old.txt")):
        os.chown(path, 1000, 1000)
    r = start(hub, "olduser", {"environment": "hostile"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("olduser")
    cid = the_container(hub_name, "olduser")
    assert docker("inspect", "-f", "{{.Config.User}}", cid) == "1000:100"
    assert (os.stat(home).st_uid, os.stat(home).st_gid) == (1000, 1000)
    assert os.stat(os.path.join(home, "old.txt")).st_gid == 1000
    stop(hub, "olduser")


def test_a_home_owned_by_root_is_refused(hub, hostile_image, hub_name, hub_settings):
    """A home that belongs to root (and holds files) never starts a server,
    and nothing in it changes."""
    home = home_of(hub_settings, "rootowned")
    os.makedirs(home, mode=0o755)
    with open(os.path.join(home, "x"), "w") as f:
        f.write("x")
    r = start(hub, "rootowned", {"environment": "hostile"})
    assert r.status_code == 500, r.text
    assert "belongs to root" in r.json()["message"]
    assert containers(hub_name, "rootowned") == []
    assert os.stat(home).st_uid == 0 and os.listdir(home) == ["x"]


# --- 3: an image that needs root fails clearly, and leaves nothing ----------------


def test_an_image_that_needs_root_fails_with_the_reason(hub, needs_root_image, hub_name):
    """The server cannot start; the user is told that servers run without
    root and that the log shows a permission problem, with the log's lines."""
    r = start(hub, "needy", {"environment": "needsroot"})
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    assert "never as root" in message and "permission problem" in message, message
    assert "Permission denied" in message  # the log's own line
    hub.wait_stopped("needy")
    assert containers(hub_name, "needy") == []


def docker_events(since: str, until: str, *filters: str, fmt: str) -> list[str]:
    args = [a for f in filters for a in ("--filter", f)]
    return docker("events", "--since", since, "--until", until, *args, "--format", fmt).splitlines()


def test_a_server_that_exits_while_starting_leaves_no_container_or_volume(
    hub, crashing_image, hub_name
):
    """JupyterHub does not call stop() for a server that has already exited;
    its container and anonymous volume (the image declares VOLUME /scratch)
    must go all the same, once its log has been read for the message."""
    since = str(int(time.time()) - 1)
    r = start(hub, "crashy", {"environment": "crashing"})
    assert r.status_code == 500, r.text
    assert "this server gives up" in r.json()["message"]
    hub.wait_stopped("crashy")
    assert containers(hub_name, "crashy") == []
    until = str(int(time.time()) + 1)
    created = docker_events(
        since,
        until,
        "type=container",
        "event=create",
        f"label={labels.USER}=crashy",
        fmt="{{.Actor.ID}}",
    )
    assert created, "the server's container was never created"
    mounted = docker_events(
        since,
        until,
        "type=volume",
        "event=mount",
        fmt='{{.Actor.ID}} {{index .Actor.Attributes "container"}}',
    )
    volumes = [line.split()[0] for line in mounted if line.split()[-1] in created]
    assert volumes, "the image's VOLUME was not mounted"
    left = docker("volume", "ls", "-q").split()
    assert [v for v in volumes if v in left] == []


# --- 4: launched code sees its project only ---------------------------------------


@pytest.fixture(scope="module")
def student_home(hub_settings):
    """A home with files of other projects and of the user's own."""
    home = home_of(hub_settings, "student")
    os.makedirs(os.path.join(home, "other-project"), mode=0o700)
    for path, text in [
        ("secret.txt", "PRIVATE-NOTES"),
        ("other-project/notes.md", "OTHER-PROJECT-NOTES"),
    ]:
        with open(os.path.join(home, path), "w") as f:
            f.write(text)
    for dirpath, dirnames, filenames in os.walk(home):
        for name in [".", *dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), 1000, 100)
    return home


def server_api(hub, user: str, server: str, path: str, token: str):
    return requests.get(
        f"{hub.url}/user/{user}/{server}/api/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )


def test_launched_code_sees_only_its_project_folder(hub, course_image, hub_name, student_home):
    """A launch (user option ``project``) mounts ``~/<project>`` as the
    server's home and root: the repository's files are there, paths relative
    to the repository work from the server's root, the default URL is the
    hub's (``/lab``), and neither the user's other files nor their other
    projects can be read from the server."""
    token = hub.user_token("student")
    r = start(hub, "student", {"environment": "course", "project": "course1"}, "course1")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("student", "course1")
    cid = the_container(hub_name, "student", "course1")
    r = server_api(hub, "student", "course1", "contents/lesson.md", token)
    assert r.status_code == 200, r.text
    names = [
        m["name"]
        for m in server_api(hub, "student", "course1", "contents/", token).json()["content"]
    ]
    assert "lesson.md" in names and "secret.txt" not in names
    env = docker("inspect", "-f", "{{json .Config.Env}}", cid)
    assert "JUPYTERHUB_DEFAULT_URL=/lab" in json.loads(env)
    # every file of the container, except the kernel's and the image's software
    search = run_in(
        cid,
        "sh",
        "-c",
        "grep -rlsI --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=usr "
        "--exclude-dir=venv -e PRIVATE-NOTES -e OTHER-PROJECT-NOTES / 2>/dev/null; true",
    )
    assert search.stdout.strip() == "", search.stdout
    assert "lesson.md" in run_in(cid, "ls", "/home/jovyan").stdout.split()
    # what the server writes lands in the project folder on the host
    assert run_in(cid, "sh", "-c", "echo mine > $HOME/work.txt").returncode == 0
    assert open(os.path.join(student_home, "course1", "work.txt")).read() == "mine\n"
    stop(hub, "student", "course1")


def test_a_user_can_open_the_whole_home_to_a_launch_on_purpose(
    hub, course_image, hub_name, student_home
):
    """With ``whole_home: true`` the whole home is mounted, and the project
    folder is still the server's root (relative paths work the same)."""
    token = hub.user_token("student")
    options = {"environment": "course", "project": "course2", "whole_home": True}
    r = start(hub, "student", options, "course2")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("student", "course2")
    cid = the_container(hub_name, "student", "course2")
    assert server_api(hub, "student", "course2", "contents/lesson.md", token).status_code == 200
    assert run_in(cid, "cat", "/home/jovyan/secret.txt").stdout == "PRIVATE-NOTES"
    stop(hub, "student", "course2")


def test_whole_home_must_be_a_boolean(hub, course_image, hub_name):
    r = start(hub, "student", {"environment": "course", "project": "x", "whole_home": "yes"}, "x")
    assert r.status_code == 400, r.text
    assert "whole_home" in r.json()["message"]


# --- 5: links in the home never widen a mount -------------------------------------


def test_a_project_folder_that_is_a_link_is_never_mounted(
    hub, course_image, hub_name, hub_settings, student_home
):
    """The user makes ``~/course3`` a link to another user's home (their
    running server can do this at any time) and launches course3: refused,
    and nothing of the other home is mounted anywhere."""
    victim = home_of(hub_settings, "victim")
    os.makedirs(victim, mode=0o700)
    with open(os.path.join(victim, "diary.txt"), "w") as f:
        f.write("VICTIM-DIARY")
    os.symlink(victim, os.path.join(student_home, "course3"))
    r = start(hub, "student", {"environment": "course", "project": "course3"}, "course3")
    assert r.status_code == 409, r.text
    assert "not a folder of yours" in r.json()["message"]
    for cid in containers(hub_name):
        binds = docker("inspect", "-f", "{{json .HostConfig.Binds}}", cid)
        assert victim not in binds
    assert os.listdir(victim) == ["diary.txt"]


def test_a_folder_swapped_while_docker_mounts_it_is_not_what_gets_mounted(tmp_path):
    """Docker resolves a bind mount's source path when the container starts.
    While it does, the project folder is parked where the user cannot reach
    it, so a link the user's running server puts at its name meanwhile is
    not what gets mounted, and the folder comes back, whole."""
    homes = tmp_path / "homes"
    home = homes / "jupyter-eve"
    (home / "proj").mkdir(parents=True)
    (home / "proj" / "mine.txt").write_text("EVE")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "theirs.txt").write_text("NOT-EVE")
    for path in (home, home / "proj", home / "proj" / "mine.txt"):
        os.chown(path, 1000, 100)
    staging = projects.staging_root(str(homes))
    with projects.pinned_folder(str(home / "proj"), 1000, staging) as source:
        # the user's running server swaps the folder for a link now
        os.symlink(tmp_path / "elsewhere", home / "proj")
        assert os.stat(staging).st_mode & 0o777 == 0o700
        seen = docker(
            "run",
            "--rm",
            "--label",
            "tljh-repo2docker-test=isolation",
            "-v",
            f"{source}:/mnt",
            SINGLEUSER_IMAGE,
            "sh",
            "-c",
            "cat /mnt/*",
        )
    assert seen == "EVE"
    assert os.listdir(staging) == []
    (restored,) = [n for n in os.listdir(home) if n.startswith("proj.restored-")]
    assert (home / restored / "mine.txt").read_text() == "EVE"
