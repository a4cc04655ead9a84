"""Unit tests for tljh_repo2docker.gitref: ls-remote parsing and ref resolution.

``resolve_ref`` runs against real git repositories made in tmp_path (no network).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time

import pytest

from tljh_repo2docker import gitref
from tljh_repo2docker.gitref import RefNotFound

C1 = "1111111111111111111111111111111111111111"
C2 = "2222222222222222222222222222222222222222"
C3 = "3333333333333333333333333333333333333333"
C4 = "4444444444444444444444444444444444444444"
C5 = "5555555555555555555555555555555555555555"
TAG_OBJECT = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

LS_REMOTE = f"""\
{C3}\tHEAD
{C2}\trefs/heads/feature
{C3}\trefs/heads/main
{C5}\trefs/pull/1/head
{C4}\trefs/tags/light
{TAG_OBJECT}\trefs/tags/v1.0
{C1}\trefs/tags/v1.0^{{}}
"""


# --- pick_commit --------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("HEAD", C3),
        ("main", C3),
        ("feature", C2),
        ("refs/heads/feature", C2),
        ("refs/heads/main", C3),
        ("light", C4),
        ("refs/tags/light", C4),
        ("v1.0", C1),  # the peeled commit, not the tag object
        ("refs/pull/1/head", C5),
    ],
)
def test_pick_commit(ref, expected):
    assert gitref.pick_commit(LS_REMOTE, ref) == expected


@pytest.mark.parametrize(
    "ref", ["missing", "Main", "mai", "ain", "v1", "heads/main", "refs/heads", "", C1]
)
def test_pick_commit_missing(ref):
    assert gitref.pick_commit(LS_REMOTE, ref) is None


def test_pick_commit_peeled_tag_wins_in_any_line_order():
    lines = LS_REMOTE.splitlines()
    rng = random.Random(4)
    for _ in range(20):
        rng.shuffle(lines)
        assert gitref.pick_commit("\n".join(lines), "v1.0") == C1


def test_pick_commit_branch_wins_over_tag_of_same_name():
    output = f"{C4}\trefs/tags/both\n{C5}\trefs/tags/both^{{}}\n{C2}\trefs/heads/both\n"
    assert gitref.pick_commit(output, "both") == C2
    assert gitref.pick_commit(output, "refs/tags/both^{}") == C5


def test_pick_commit_full_tag_name_returns_commit():
    assert gitref.pick_commit(LS_REMOTE, "refs/tags/v1.0") == C1


def test_pick_commit_ignores_garbage_lines():
    output = (
        "warning: redirecting to https://example.org/repo.git/\n"
        "\n"
        f"{C1[:7]}\trefs/heads/short\n"
        f"{TAG_OBJECT.upper()}\trefs/heads/upper\n"
        f"{C2}\n"
        f"{C2}\t\n"
        f"not-a-sha\trefs/heads/bogus\n"
        f"{C3}  refs/heads/spaces\n"
        f"{C4}\trefs/heads/good\r\n"
    )
    for ref in ("short", "upper", "bogus", "spaces", ""):
        assert gitref.pick_commit(output, ref) is None
    assert gitref.pick_commit(output, "good") == C4


def test_pick_commit_sha256_repositories():
    sha = "ab" * 32
    assert gitref.pick_commit(f"{sha}\trefs/heads/main\n", "main") == sha


def test_pick_commit_empty_output():
    assert gitref.pick_commit("", "HEAD") is None


# --- git_env ------------------------------------------------------------------


def test_git_env_never_prompts():
    env = gitref.git_env()
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_ASKPASS"] == "/bin/true"
    assert env["SSH_ASKPASS"] == "/bin/true"
    assert "BatchMode=yes" in env["GIT_SSH_COMMAND"]
    assert env.get("PATH") == os.environ.get("PATH")


def test_git_env_extra_overrides_and_does_not_touch_os_environ():
    before = dict(os.environ)
    env = gitref.git_env({"GIT_TERMINAL_PROMPT": "1", "EXTRA": "x"})
    assert env["GIT_TERMINAL_PROMPT"] == "1"
    assert env["EXTRA"] == "x"
    assert dict(os.environ) == before


# --- resolve_ref against a real repository ------------------------------------

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
}


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=GIT_ENV
    ).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """main: c1 - c3; feature: c1 - c2; annotated tag v1.0 -> c1; HEAD -> main."""
    path = tmp_path_factory.mktemp("gitref") / "repo"
    path.mkdir()
    git(path, "init", "-q", "--initial-branch=main")
    (path / "README.md").write_text("one\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "one")
    c1 = git(path, "rev-parse", "HEAD")
    git(path, "tag", "-a", "v1.0", "-m", "release 1.0")
    git(path, "checkout", "-q", "-b", "feature")
    (path / "feature.txt").write_text("two\n")
    git(path, "add", "feature.txt")
    git(path, "commit", "-q", "-m", "two")
    c2 = git(path, "rev-parse", "HEAD")
    git(path, "checkout", "-q", "main")
    (path / "README.md").write_text("three\n")
    git(path, "commit", "-q", "-am", "three")
    c3 = git(path, "rev-parse", "HEAD")
    tag_object = git(path, "rev-parse", "v1.0")
    assert len({c1, c2, c3, tag_object}) == 4
    return {
        "url": f"file://{path}",
        "path": path,
        "c1": c1,
        "c2": c2,
        "c3": c3,
        "tag_object": tag_object,
    }


def resolve(url, ref, **kwargs):
    return asyncio.run(gitref.resolve_ref(url, ref, **kwargs))


def test_resolve_branch(repo):
    assert resolve(repo["url"], "main") == repo["c3"]
    assert resolve(repo["url"], "feature") == repo["c2"]
    assert resolve(repo["url"], "refs/heads/feature") == repo["c2"]


def test_resolve_annotated_tag_gives_commit_not_tag_object(repo):
    commit = resolve(repo["url"], "v1.0")
    assert commit == repo["c1"]
    assert commit != repo["tag_object"]
    assert git(repo["path"], "cat-file", "-t", commit) == "commit"


def test_resolve_full_tag_name_gives_commit(repo):
    assert resolve(repo["url"], "refs/tags/v1.0") == repo["c1"]


def test_resolve_head(repo):
    assert resolve(repo["url"], "HEAD") == repo["c3"]


def test_resolve_full_sha(repo):
    assert resolve(repo["url"], repo["c1"]) == repo["c1"]
    assert resolve(repo["url"], repo["c2"]) == repo["c2"]


def test_resolve_full_sha_no_ref_points_at_is_passed_through(repo):
    # Documented: repo2docker fetches it and fails clearly if it does not exist.
    assert resolve(repo["url"], "f" * 40) == "f" * 40


def test_resolve_follows_new_commits(repo, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", repo["url"], str(clone)],
        check=True,
        env=GIT_ENV,
        capture_output=True,
    )
    url = f"file://{clone}"
    assert resolve(url, "main") == repo["c3"]
    (clone / "new.txt").write_text("new\n")
    git(clone, "add", "new.txt")
    git(clone, "commit", "-q", "-m", "new")
    assert resolve(url, "main") == git(clone, "rev-parse", "HEAD")


@pytest.mark.parametrize("ref", ["missing", "v2.0", "Main", "refs/heads/nope"])
def test_resolve_unknown_ref(repo, ref):
    with pytest.raises(RefNotFound) as info:
        resolve(repo["url"], ref)
    assert ref in str(info.value)


def test_resolve_unreachable_repository(tmp_path):
    with pytest.raises(RefNotFound) as info:
        resolve(f"file://{tmp_path}/does-not-exist", "main")
    assert str(info.value)  # git's last stderr line, for the person


def test_resolve_directory_that_is_not_a_repository(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(RefNotFound):
        resolve(f"file://{tmp_path}/plain", "HEAD")


def test_resolve_option_like_repository_is_not_an_option(repo, tmp_path, monkeypatch):
    # Run from a clone with an 'origin': were the repo string read as an option, git would
    # list origin with the injected upload-pack command and create the marker.
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", repo["url"], str(clone)],
        check=True,
        env=GIT_ENV,
        capture_output=True,
    )
    monkeypatch.chdir(clone)
    marker = tmp_path / "pwned"
    for hostile in (
        f"--upload-pack=touch {marker}",
        f"--upload-pack=touch {marker};git-upload-pack",
    ):
        with pytest.raises(RefNotFound):
            resolve(hostile, "HEAD")
    assert not marker.exists()


# --- timeouts -----------------------------------------------------------------


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def fake_ssh(tmp_path):
    """Make an 'ssh' for git that never answers and records its pid.

    It always holds git's protocol pipes. With ``keep_pipes`` it also keeps the stderr it
    inherited from git, i.e. our pipe (as a real ssh or git-remote-https helper does).
    Every helper still alive at the end is killed.
    """
    pidfiles = []

    def make(seconds, keep_pipes):
        pidfile = tmp_path / f"ssh-{len(pidfiles)}.pid"
        script = tmp_path / f"fake-ssh-{len(pidfiles)}"
        redirect = "" if keep_pipes else " 2>/dev/null"
        script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep {seconds}{redirect}\n")
        script.chmod(0o755)
        pidfiles.append(pidfile)
        env = gitref.git_env({"GIT_SSH_COMMAND": str(script), "GIT_SSH_VARIANT": "simple"})
        return env, pidfile

    yield make
    for pidfile in pidfiles:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


SSH_URL = "ssh://git.example.org/repo.git"


def test_resolve_times_out(fake_ssh):
    env, _ = fake_ssh(30, keep_pipes=False)
    start = time.monotonic()
    with pytest.raises(RefNotFound, match="did not answer"):
        resolve(SSH_URL, "main", timeout=0.5, env=env)
    assert time.monotonic() - start < 5


def test_resolve_timeout_leaves_no_helper_running(fake_ssh):
    env, pidfile = fake_ssh(30, keep_pipes=False)
    with pytest.raises(RefNotFound):
        resolve(SSH_URL, "main", timeout=0.5, env=env)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 1
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def test_resolve_timeout_is_honoured_when_helper_holds_pipes(fake_ssh):
    env, _ = fake_ssh(2, keep_pipes=True)
    start = time.monotonic()
    with pytest.raises(RefNotFound):
        resolve(SSH_URL, "main", timeout=0.5, env=env)
    assert time.monotonic() - start < 1.5
