"""Security specification: what a hostile user types or builds cannot reach
anyone else.

- Names: one namespace holds every environment, so a taken name cannot be
  given to someone else; but creating a taken name answers 409 "not
  available" in the same words whether the environment is public, private to
  someone else or the user's own, and reading one the user cannot see answers
  404 exactly like a name nobody holds. Neither says whose it is or what it is.
- Build logs are capped in bytes, per line and per build (settings
  ``log_max_line_bytes``, ``log_max_bytes``), not only in lines.
- The command line shows a build log's terminal escape sequences as text; it
  never lets a repository drive the admin's terminal.
- Repository hosts and ssh users starting with '-' (``ssh://-oProxyCommand=...``)
  are refused by the hub itself (400), whatever git and ssh would do.
"""

from __future__ import annotations

import secrets
import subprocess

import pytest

from tljh_repo2docker.cli import inert

from ..conftest import run_cli
from ..dockerfixtures import SINGLEUSER_IMAGE
from .gitserver import make_repo

pytestmark = pytest.mark.docker


# --- the existence oracle -------------------------------------------------------------
@pytest.fixture(scope="module")
def taken(open_service, git_root, git_server):
    """alice-diary: Alice's private environment; shared-tools: a public one."""
    make_repo(git_root, "plain", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"})
    open_service.create("alice", name="alice-diary", repo=git_server.url("plain"))
    open_service.create(
        "admin", name="shared-tools", repo=git_server.url("plain"), visibility="public"
    )
    return git_server.url("plain")


def answer(r, name):
    return r.status_code, r.json()["message"].replace(name, "NAME")


def test_creating_a_taken_name_answers_the_same_whoever_holds_it(open_service, taken):
    answers = {
        (who, name): answer(
            open_service("POST", "/environments", who, json={"name": name, "repo": taken}), name
        )
        for who, name in [
            ("mallory", "alice-diary"),  # private, someone else's
            ("mallory", "shared-tools"),  # public
            ("alice", "alice-diary"),  # her own
        ]
    }
    assert set(answers.values()) == {(409, "the name NAME is not available; choose another")}


@pytest.mark.parametrize(
    "path",
    [
        "/environments/{}",
        "/environments/{}/builds",
        "/environments/{}/versions",
        "/environments/{}/builds/1",
    ],
)
def test_reading_an_invisible_environment_reads_like_no_environment(open_service, taken, path):
    private = open_service("GET", path.format("alice-diary"), "mallory")
    absent = open_service("GET", path.format("nobody-has-this"), "mallory")
    assert answer(private, "alice-diary") == answer(absent, "nobody-has-this")
    assert private.status_code == 404
    assert "alice" not in private.text.replace("alice-diary", "")


# --- hosts that read as options ------------------------------------------------------------
@pytest.mark.parametrize(
    "repo",
    [
        "ssh://-oProxyCommand=touch%20/tmp/pwned/x",
        "ssh://-oProxyCommand=x/x",
        "git@-oProxyCommand=x:x",
        "ssh://-ohost/x",
        "ssh://-user@example.org/x",
        "-u@example.org:x",
    ],
)
def test_dash_hosts_and_users_are_refused(open_service, open_hub, repo):
    r = open_service("POST", "/environments", "mallory", json={"name": "dash", "repo": repo})
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith("repo:")
    result = run_cli(open_hub, "build", "--name", "dash", "--", repo, check=False)
    assert result.returncode == 2
    assert "repo:" in result.stderr


# --- logs capped in bytes ------------------------------------------------------------------
def test_a_flood_of_log_output_is_capped_in_bytes(open_service, git_root, git_server):
    # 100 kB in one line, then 3000 lines of 1.5 kB: 4.6 MB of output
    fresh = secrets.token_hex(8)  # never a cached step
    make_repo(
        git_root,
        "flood",
        {
            "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"
            f"RUN echo {fresh} && python3 -c \"print('L' * 100000)\" && "
            'python3 -c "[print(str(i % 10) * 1500) for i in range(3000)]"\n'
        },
    )
    build = open_service.build("admin", name="flood", repo=git_server.url("flood"))
    assert build["status"] == "succeeded", build
    log = open_service.log("admin", "flood", build["id"])
    # the hub caps lines at 2000 bytes and the build at 40000 (config.d);
    # BuildKit itself lets about 100 kB of this through
    assert len(log.encode()) < 40_000 * 1.1
    assert max(len(line.encode()) for line in log.splitlines()) < 2000 + 40
    assert "bytes cut]" in log
    assert "lines omitted" in log
    assert "Built image" in log  # the end is kept


# --- escape sequences on the admin's terminal ------------------------------------------------
ESC = "\x1b"
HOSTILE = [
    f"{ESC}]0;pwned title{ESC}\\",  # OSC: window title
    f"{ESC}]52;c;cHduZWQ=\x07",  # OSC 52: write the clipboard
    f"{ESC}[2J{ESC}[H",  # CSI: clear the screen
    f"{ESC}[31mred{ESC}[0m",  # CSI: colours
    "\x9b31m",  # a one-byte C1 CSI
    "fake\rover",  # carriage return over a line
    "bell\x07 backspace\x08",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_inert_leaves_no_control_character(text):
    shown = inert(text)
    assert not any(ord(c) < 32 and c not in "\n\t" for c in shown)
    assert not any(0x7F <= ord(c) <= 0x9F for c in shown)
    # what was there stays readable
    for word in ("pwned", "red", "fake", "over", "bell"):
        if word in text:
            assert word in shown


def test_inert_keeps_ordinary_text():
    text = "Step 1/3 : FROM python\tok\nünïcode ✓\n"
    assert inert(text) == text
    assert inert(f"{ESC}[2J") == "^[[2J"


def test_the_command_line_prints_a_repositorys_escape_sequences_inertly(open_hub, tmp_path):
    repo = tmp_path / "escapes"
    repo.mkdir()
    (repo / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\n"
        f"RUN echo {secrets.token_hex(8)} && "
        "printf 'start \\033]0;pwned\\007 \\033[2J \\033]52;c;cHduZWQ=\\007 end\\n'\n"
    )
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )
    result = run_cli(open_hub, "build", f"file://{repo}", "--name", "escapes")
    assert "start" in result.stdout and "end" in result.stdout
    assert ESC not in result.stdout and ESC not in result.stderr
    assert "\x07" not in result.stdout
    assert "^[]0;pwned" in result.stdout
