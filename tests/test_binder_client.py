"""BinderHub's own JavaScript client against this hub (issue 9).

``tests/binder/drive.mjs`` runs ``@jupyterhub/binderhub-client`` from the npm
registry, unmodified (scripts/setup-host installs it into .cache/binder), the
way BinderHub's page and jupyterhub-fancy-profiles drive it. Each test reads
what the client yielded and what it would open, then opens that URL: the
server must answer with the repository's file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tljh_repo2docker import providers

from .dockerfixtures import SINGLEUSER_IMAGE, commit_change, make_git_repo

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / ".cache" / "binder"
CLIENT = CLIENT_DIR / "node_modules" / "@jupyterhub" / "binderhub-client" / "lib" / "client.js"


@pytest.fixture(scope="module")
def driver():
    """drive.mjs next to the installed client (ESM resolves packages from
    the script's folder)."""
    if shutil.which("node") is None or not CLIENT.exists():
        pytest.fail(f"{CLIENT} missing: run scripts/setup-host")
    script = CLIENT_DIR / "drive.mjs"
    shutil.copyfile(ROOT / "tests" / "binder" / "drive.mjs", script)
    return script


def drive(driver, hub, token, spec, *, endpoint=None, timeout=300, **options) -> dict:
    args = {
        "endpoint": endpoint or f"{hub.service_url}/build/",
        "spec": spec,
        "apiToken": token,
        **options,
    }
    out = subprocess.run(
        ["node", str(driver), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=driver.parent,
    )
    lines = [json.loads(line[3:]) for line in out.stdout.splitlines() if line.startswith("@@ ")]
    assert out.returncode == 0, out.stdout + out.stderr
    events = [line["event"] for line in lines if "event" in line]
    first = next((line["first"] for line in lines if "first" in line), None)
    done = next(line["done"] for line in lines if "done" in line)
    return {"events": events, "done": done, "first": first}


# file:// repositories (the only ones that build offline) are for admins only
# (issue 8): the launching user here is an admin
USER = "admin"


@pytest.fixture(scope="module")
def student(hub):
    return hub.user_token(USER)


@pytest.fixture(scope="module")
def project_repo(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("binder") / "course", marker=hub_name)
    (path / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    )
    (path / "lesson.md").write_text("# Lesson 1\n")
    (path / "data").mkdir()
    (path / "data" / "points.csv").write_text("x,y\n1,2\n")
    commit_change(path, "# with files")
    return path


@pytest.fixture(scope="module")
def spec(project_repo):
    return "git/" + quote(f"file://{project_repo}", safe="") + "/main"


def server_of(spec: str) -> str:
    return providers.parse("git", spec[4:], allow_local=True).server_name


def opened(url: str) -> requests.Response:
    """Open what the client opens, as a browser would (cookies, redirects)."""
    s = requests.Session()
    r = s.get(url, timeout=60)
    r.session = s
    return r


def test_launch_with_urlpath_opens_the_file_from_the_server_root(driver, hub, student, spec):
    got = drive(driver, hub, student, spec, query="urlpath=files/lesson.md")
    phases = [e["phase"] for e in got["events"]]
    assert phases[0] == "waiting" and "building" in phases, phases
    ready = got["events"][-1]
    assert ready["phase"] == "ready"
    name = server_of(spec)
    assert ready["url"] == f"{hub.url}/user/{USER}/{name}/"  # the server's root
    assert ready["token"] and ready["image"]
    # every event carries a message; the spawner's own progress is shown
    assert all(isinstance(e.get("message"), str) for e in got["events"])
    assert len([p for p in phases if p == "launching"]) >= 2, phases
    url = got["done"]["open"]
    assert url.startswith(f"{hub.url}/user/{USER}/{name}/files/lesson.md?token=")
    r = opened(url)
    assert r.status_code == 200 and r.text == "# Lesson 1\n"


def test_labpath_opens_the_document_in_jupyterlab(driver, hub, student, spec):
    got = drive(driver, hub, student, spec, query="labpath=lesson.md")
    phases = [e["phase"] for e in got["events"]]
    assert "building" not in phases  # the image is reused
    name = server_of(spec)
    url = got["done"]["open"]
    assert url.startswith(f"{hub.url}/user/{USER}/{name}/doc/tree/lesson.md?token=")
    r = opened(url)
    assert r.status_code == 200 and "JupyterLab" in r.text
    # the document JupyterLab opens is the repository's file
    base = url.split("/doc/tree/")[0]
    content = r.session.get(f"{base}/api/contents/lesson.md", timeout=30).json()
    assert content["content"] == "# Lesson 1\n"


def test_filepath_opens_the_file(driver, hub, student, spec):
    got = drive(driver, hub, student, spec, query="filepath=data/points.csv")
    url = got["done"]["open"]
    assert f"/user/{USER}/{server_of(spec)}/tree/data/points.csv?token=" in url
    r = opened(url)
    # tree/ is Notebook 7's page (repo2docker's images have it; the test image
    # has JupyterLab only): the server itself answers, the token let us in
    assert not r.history and r.url == url, r.url
    assert r.status_code == 200 or "jupyter" in r.text.lower()
    base = url.split("/tree/")[0]
    raw = r.session.get(f"{base}/files/data/points.csv", timeout=30)
    assert raw.text == "x,y\n1,2\n"


def test_the_token_opens_this_server_only(driver, hub, student, spec):
    got = drive(driver, hub, student, spec)
    ready = got["events"][-1]
    token = ready["token"]
    # not the hub's API, not another user's or another server's
    assert hub.api("GET", "/users", token=token).status_code == 403
    r = requests.get(f"{hub.url}/user/{USER}/other/api/status?token={token}", timeout=30)
    assert r.status_code != 200 or "application/json" not in r.headers.get("Content-Type", "")


def test_build_only_gives_the_image_name_as_fancy_profiles_reads_it(
    driver, hub, student, spec, project_repo
):
    commit = commit_change(project_repo, "RUN echo second > /tmp/v2")
    # fancy-profiles builds through /services/binder/build/
    got = drive(
        driver,
        hub,
        student,
        spec,
        endpoint=f"{hub.url}/services/binder/build/",
        buildOnly=True,
    )
    phases = [e["phase"] for e in got["events"]]
    assert "built" not in phases and phases[-1] == "ready", phases
    assert got["done"]["imageName"].endswith(commit[:12])
    # again: found, not built; still one "ready" with imageName
    again = drive(driver, hub, student, spec, buildOnly=True)
    assert [e["phase"] for e in again["events"]][-1] == "ready"
    assert again["done"]["imageName"] == got["done"]["imageName"]
    assert "building" not in [e["phase"] for e in again["events"]]


def test_reconnect_mid_build_follows_the_same_build(driver, hub, student, spec, project_repo):
    commit = commit_change(project_repo, "RUN sleep 3 && echo third > /tmp/v3")
    got = drive(
        driver, hub, student, spec, reconnectAfter="building", query="urlpath=files/lesson.md"
    )
    assert got["first"] == {"closed": "building"}
    ready = got["events"][-1]
    assert ready["phase"] == "ready" and ready["image"].endswith(commit[:12])
    assert opened(got["done"]["open"]).text == "# Lesson 1\n"


@pytest.mark.parametrize(
    "spec, token_kind, status, words",
    [
        ("svn/x/y/main", "student", 400, "provider"),
        ("gh/org%2F..%2F..%2Fetc/repo/main", "student", 400, "GitHub"),
        ("git/" + quote("ftp://example.org/x", safe="") + "/main", "student", 400, "repo"),
        ("gh/org/repo/main", "none", 403, "authentication"),
        ("gh/org/repo/main", "bad", 403, "authentication"),
    ],
)
def test_errors_before_the_stream_reach_the_client(
    driver, hub, student, spec, token_kind, status, words
):
    token = {"student": student, "none": "", "bad": "not-a-token"}[token_kind]
    got = drive(driver, hub, token, spec)
    (failed,) = got["events"]
    assert failed["phase"] == "failed"
    assert failed["status_code"] == status
    assert words in failed["message"]
    assert "Failed to connect" not in failed["message"]
    assert got["done"]["failed"] == failed


def test_errors_during_the_stream_reach_the_client(driver, hub, student, tmp_path):
    broken = make_git_repo(tmp_path / "broken", marker="x")
    commit_change(broken, "RUN echo the build breaks here && exit 3")
    spec = "git/" + quote(f"file://{broken}", safe="") + "/main"
    got = drive(driver, hub, student, spec)
    phases = [e["phase"] for e in got["events"]]
    assert phases[0] == "waiting" and phases[-1] == "failed", phases
    assert "Build failed" in got["events"][-1]["message"]
    # an unknown ref fails in the stream too
    got = drive(driver, hub, student, spec.rsplit("/", 1)[0] + "/no-such-branch")
    assert got["events"][-1]["phase"] == "failed"
    assert "no-such-branch" in got["events"][-1]["message"]
