"""The environments service's REST API with a real hub, service, Docker and repo2docker.

The tests of this module run in order and share one hub: the authorization
matrix, then the life of environments (create and stream the log, cached
rebuild, a new commit, edits, cancel, restarts, delete), hostile input and
private-repository credentials. Every API response is recorded and, last,
validated against the OpenAPI document (tljh_repo2docker/service/openapi.yaml).

The hub is configured as an admin who opened the network rules for this
machine's git server would (docs/security.md): users' repositories are served
over http from 127.0.0.1 (``allowed_networks``; ``file://`` is for admins
only) and their Dockerfiles may start from the test single-user image
(``allowed_base_images``). The admin's environments use ``file://``.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tljh_repo2docker import labels

from .dockerfixtures import (
    SINGLEUSER_IMAGE,
    commit_change,
    containers,
    docker,
    inspect,
    make_git_repo,
)
from .hubprocess import hub_settings_for
from .security.gitserver import GitServer
from .test_openapi import (
    operation,
    operations,
    required_scope,
    response_errors,
    schema_errors,
)

pytestmark = pytest.mark.docker

SUFFIX = secrets.token_hex(3)
DEMO = f"api-demo-{SUFFIX}"
XSS = f"api-xss-{SUFFIX}"
BADREPO = f"api-badrepo-{SUFFIX}"
SLOW = f"api-slow-{SUFFIX}"
SLOW2 = f"api-slow2-{SUFFIX}"
PRIVATE = f"api-private-{SUFFIX}"
PRIVATE_HTTP = f"api-private-http-{SUFFIX}"
IMAGE_PREFIX = "tljh-r2d-test/"
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"

READ = "custom:environments:read"
MANAGE = "custom:environments:manage"
BUILD = "custom:environments:build"


# --- recording every response for the OpenAPI check -------------------------------
@dataclass
class Recorded:
    method: str
    path: str
    status: int
    content_type: str
    body: object = None
    events: list = field(default_factory=list)


RECORDED: list[Recorded] = []


def record(method: str, path: str, r: requests.Response, events=None):
    path = path.split("?")[0]
    content_type = r.headers.get("Content-Type", "")
    if events is not None:
        body = [(e.event, e.data) for e in events]
    elif content_type.startswith("application/json"):
        body = r.json()
    else:
        body = r.text or None
    RECORDED.append(Recorded(method, path, r.status_code, content_type, body))


class Api:
    """hub.service_api with a token per principal; every response recorded."""

    def __init__(self, hub, tokens: dict):
        self.hub = hub
        self.tokens = tokens

    def __call__(self, method: str, path: str, who: str = "admin", **kwargs):
        r = self.hub.service_api(method, path, token=self.tokens[who], **kwargs)
        if not kwargs.get("stream"):
            record(method, path, r)
        return r

    def ok(self, method: str, path: str, status: int, who: str = "admin", **kwargs):
        r = self(method, path, who, **kwargs)
        assert r.status_code == status, (method, path, r.status_code, r.text[:500])
        return r.json() if r.content else None

    def refused(self, method: str, path: str, status: int, who: str = "admin", **kwargs) -> str:
        """The JSON error's message, after checking status and shape."""
        r = self(method, path, who, **kwargs)
        assert r.status_code == status, (method, path, kwargs, r.status_code, r.text[:500])
        assert r.headers["Content-Type"].startswith("application/json"), r.headers
        body = r.json()
        assert body == {"status": status, "message": body["message"]}, body
        assert body["message"] and len(body["message"]) < 600, body
        return body["message"]

    def wait_build(self, name: str, build_id: int, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            build = self.ok("GET", f"/environments/{name}/builds/{build_id}", 200, "reader")
            if build["status"] in FINAL:
                return build
            time.sleep(0.2)
        raise AssertionError(f"build {build_id} of {name} did not end in {timeout} s")


# --- Server-Sent Events --------------------------------------------------------------
@dataclass
class Event:
    id: str | None
    event: str
    data: str

    @property
    def json(self):
        return json.loads(self.data)


def read_events(response: requests.Response, until=None) -> list[Event]:
    """Parse an event stream until it ends (or ``until(event)`` is true)."""
    events, fields = [], {}
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line == "":
            if "data" in fields:
                events.append(
                    Event(fields.get("id"), fields.get("event", "message"), fields["data"])
                )
                if until is not None and until(events[-1]):
                    break
            fields = {}
            continue
        if line.startswith(":"):
            continue  # a comment (keepalive)
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        fields[key] = fields[key] + "\n" + value if key == "data" and key in fields else value
    return events


def stream_log(
    api: Api, name: str, build_id: int, who="reader", headers=None, query="", until=None
):
    path = f"/environments/{name}/builds/{build_id}/log"
    headers = dict(headers or {})
    if api.tokens[who] is not None:
        headers["Authorization"] = f"token {api.tokens[who]}"
    r = requests.get(
        f"{api.hub.service_url}/api/v1{path}{query}",
        headers=headers,
        stream=True,
        timeout=(10, 90),  # keepalive comments come every 15 s
    )
    with r:
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(r, until)
    record("GET", path, r, events=events)
    return events


def log_lines(events: list[Event]) -> list[Event]:
    return [e for e in events if e.event == "message"]


def final_status(events: list[Event]) -> dict:
    assert events and events[-1].event == "status", [e.event for e in events[-3:]]
    return events[-1].json


# --- processes, images, git ------------------------------------------------------------
def processes() -> dict[int, tuple[bytes, int, str]]:
    """pid -> (cmdline, process group, state) of every process on the host."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (cmdline, int(fields[2]), fields[0])
    return found


def repo2docker_pids(name: str) -> list[int]:
    """Live ``python -m repo2docker`` processes building environment ``name``
    (not their children: docker buildx's arguments name the image too)."""
    needle = f"{IMAGE_PREFIX}{name}:".encode()
    return [
        pid
        for pid, (cmd, _, state) in processes().items()
        if b"\0-m\0repo2docker\0" in cmd and needle in cmd and state != "Z"
    ]


def group_alive(pgid: int) -> list[int]:
    return [pid for pid, (_, group, state) in processes().items() if group == pgid and state != "Z"]


def images_of(name: str, hub_name: str) -> list[str]:
    out = docker(
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        f"label={labels.HUB}={hub_name}",
        "--filter",
        f"label={labels.ENVIRONMENT}={name}",
    )
    return sorted(set(out.split()))


def image_exists(tag: str) -> bool:
    return bool(docker("images", "-q", tag))


def rev_parse(repo: Path, ref: str) -> str:
    return os.popen(f"git -C {repo} rev-parse {ref}^{{commit}}").read().strip()


def wait_for(predicate, timeout: float = 15, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def service_pid(hub) -> int:
    """The environments service process that this test's hub started."""
    for pid, (cmd, _, state) in processes().items():
        if b"tljh_repo2docker.service" not in cmd or state == "Z":
            continue
        try:
            ppid = int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[1])
        except OSError:
            continue
        if ppid == hub.proc.pid:
            return pid
    raise AssertionError("the hub's environments service process was not found")


def wait_running(api: Api, name: str, build_id: int) -> list[Event]:
    """Follow the log until the slow Dockerfile step is running."""
    events = stream_log(
        api, name, build_id, until=lambda e: e.event == "message" and "sleep" in e.json["message"]
    )
    assert "sleep" in events[-1].data, [e.data for e in events[-5:]]
    time.sleep(1)  # inside the step
    return events


# --- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens(hub):
    """Tokens of the principals of the authorization matrix."""
    for name in ("admin", "reader", "noscope"):
        hub.api("POST", f"/users/{name}")
    r = hub.api("POST", "/users/noscope/tokens", json={"scopes": ["read:users:name!user"]})
    assert r.status_code == 201, r.text
    noscope = r.json()["token"]
    r = hub.api("POST", "/users/admin/tokens", json={"scopes": [READ]})
    assert r.status_code == 201, r.text
    assert MANAGE not in r.json()["scopes"]
    admin_readonly = r.json()["token"]
    return {
        "admin": hub.user_token("admin"),  # the environments-manager role
        "reader": hub.user_token("reader"),  # the user role: read only
        "noscope": noscope,  # a user's token without our scopes
        "admin-readonly": admin_readonly,  # an admin's token restricted to reading
        "dev-admin": hub.token,  # a service with the hub's admin role
        "anonymous": None,
    }


@pytest.fixture(scope="module")
def api(hub, tokens):
    return Api(hub, tokens)


@pytest.fixture(scope="module")
def hub_settings(tmp_path_factory, hub_name):
    return hub_settings_for(
        hub_name,
        str(tmp_path_factory.mktemp("homes")),
        # users' repositories come from this machine's git server (GitServer),
        # and their Dockerfiles start from the local single-user image
        allowed_networks=["127.0.0.0/8"],
        allowed_base_images=[SINGLEUSER_IMAGE],
    )


@pytest.fixture(scope="module")
def served_root(tmp_path_factory):
    """Where the module's repositories live: GitServer serves this folder."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def git_server(served_root):
    with GitServer(served_root) as server:
        yield server


def http_url(server: GitServer, repo: Path) -> str:
    # a working tree ``<root>/<name>`` is served as ``/<name>`` (new commits
    # are served at once); ``/<name>.git`` is only for bare repositories
    return f"http://{server.host}:{server.port}/{repo.relative_to(server.root)}"


@pytest.fixture(scope="module")
def git_repo(served_root, hub_name):
    return make_git_repo(served_root / "env", marker=hub_name)


@pytest.fixture(scope="module")
def repo_url(git_repo):
    return f"file://{git_repo}"  # the admin's: file:// repositories are for admins


@pytest.fixture(scope="module")
def user_repo_url(git_server, git_repo):
    """The same repository as a user may name it: over http."""
    return http_url(git_server, git_repo)


@pytest.fixture(scope="module")
def xss_repo(tmp_path_factory, hub_name):
    path = make_git_repo(tmp_path_factory.mktemp("xss") / "repo", marker=hub_name + "-xss")
    commit_change(path, f"RUN echo '{SCRIPT}'")
    return path


@pytest.fixture(scope="module")
def slow_repo(served_root, hub_name):
    path = make_git_repo(served_root / "slow", marker=hub_name + "-slow")
    commit_change(path, "RUN sleep 300")
    return path


@pytest.fixture(scope="module")
def state(hub):
    """Values the tests of this module hand on to later ones."""
    return {}


# --- authorization matrix --------------------------------------------------------------
# (method, path, JSON body, status once authorized): cheap requests that change
# nothing. Unknown environments give 404 only after the scope check passed.
MISSING = "no-such-env"
ENDPOINTS = [
    ("GET", "/environments", None, 200),
    ("POST", "/environments", {}, 400),
    ("GET", f"/environments/{MISSING}", None, 404),
    ("PATCH", f"/environments/{MISSING}", {"display_name": "x"}, 404),
    ("DELETE", f"/environments/{MISSING}", None, 404),
    ("GET", f"/environments/{MISSING}/builds", None, 404),
    ("POST", f"/environments/{MISSING}/builds", {}, 404),
    ("GET", f"/environments/{MISSING}/builds/1", None, 404),
    ("POST", f"/environments/{MISSING}/builds/1/cancel", None, 404),
    ("GET", f"/environments/{MISSING}/builds/1/log", None, 404),
    ("GET", f"/environments/{MISSING}/versions", None, 404),
    ("DELETE", f"/environments/{MISSING}/versions/0123abc", None, 404),
]
# principal -> the scopes its token has, of ours
PRINCIPALS = {
    "admin": {READ, BUILD, MANAGE},
    "reader": {READ, BUILD},  # build_policy "users" (the default): users build their own
    "noscope": set(),
    "admin-readonly": {READ},
    "dev-admin": set(),  # JupyterHub's admin role has no custom scopes: verified here
    "anonymous": set(),
}


@pytest.mark.parametrize("who", list(PRINCIPALS))
@pytest.mark.parametrize(
    "method, path, body, authorized", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_authorization_matrix(api, who, method, path, body, authorized):
    scope = required_scope(method, path)  # what the OpenAPI document says
    assert scope == (READ if method == "GET" else BUILD)
    kwargs = {} if body is None else {"json": body}
    if scope in PRINCIPALS[who]:
        r = api(method, path, who, **kwargs)
        assert r.status_code == authorized, (who, r.status_code, r.text)
        if authorized >= 400:
            assert r.json()["status"] == authorized
    else:
        message = api.refused(method, path, 403, who, **kwargs)
        assert scope in message, message  # what to ask for
        if not PRINCIPALS[who]:
            assert "authentication required" in message, message


def test_unknown_api_paths_are_json_404(api):
    for path in ("/nope", "/environments/Bad%20Name", "/environments/x/builds/abc"):
        assert "no such API endpoint" in api.refused("GET", path, 404)


def test_the_dev_admin_token_is_a_hub_admin(hub):
    """The dev-admin service token of the matrix has the hub's admin role (it
    can do anything on the hub) and still gets 403 from the service: custom
    scopes must be granted explicitly."""
    r = hub.api("GET", "/users")
    assert r.status_code == 200
    whoami = hub.api("GET", "/user").json()
    assert whoami["kind"] == "service"
    assert "admin" in whoami["roles"]
    assert READ not in whoami["scopes"] and MANAGE not in whoami["scopes"]


# --- create, build, stream ----------------------------------------------------------------
def test_create_builds_and_streams_the_log(api, repo_url, git_repo, state):
    before = time.monotonic()
    env = api.ok(
        "POST",
        "/environments",
        201,
        json={
            "name": DEMO,
            "repo": repo_url,
            "ref": "main",
            "display_name": "API demo",
            "mem_limit": "512M",
            "cpu_limit": 0.5,
            "build_args": {"GREETING": "hello"},
        },
    )
    assert env["name"] == DEMO and env["display_name"] == "API demo"
    assert env["mem_limit"] == "512M" and env["cpu_limit"] == 0.5
    assert env["build_args"] == {"GREETING": "hello"}
    assert env["created_by"] == "admin"
    build = env["latest_build"]
    assert build["status"] in ("queued", "running")
    assert build["log_url"].endswith(f"/api/v1/environments/{DEMO}/builds/{build['id']}/log")

    # live: read two lines, drop the connection, resume from the last id seen
    first = stream_log(api, DEMO, build["id"], until=lambda e: e.id == "2")
    rest = stream_log(api, DEMO, build["id"], headers={"Last-Event-ID": "2"})
    live = log_lines(first) + log_lines(rest)
    events = stream_log(api, DEMO, build["id"])  # the whole log, now stored
    final = final_status(events)
    assert final["status"] == "succeeded", [e.data for e in events]
    assert final_status(rest) == final
    lines = log_lines(events)
    assert [(e.id, e.data) for e in live] == [(e.id, e.data) for e in lines]
    assert [int(e.id) for e in lines] == list(range(1, len(lines) + 1))
    assert lines[0].json["phase"] == "fetching"
    assert any("Built image" in e.json["message"] for e in lines)
    assert final["log_lines"] == len(lines)
    commit = rev_parse(git_repo, "main")
    assert final["commit"] == commit
    assert final["image"] == f"{IMAGE_PREFIX}{DEMO}:{commit[:12]}"
    assert final["cached"] is False
    assert time.monotonic() - before < 120
    state.update(demo_build=final, demo_events=events)


def test_get_and_list_show_image_commit_and_size(api, state):
    build = state["demo_build"]
    env = api.ok("GET", f"/environments/{DEMO}", 200, "reader")
    assert env["image"] == build["image"]
    assert env["commit"] == build["commit"]
    assert env["size"] and env["size"] > 10_000_000
    assert env["status"] == "succeeded"
    assert env["servers"] == []
    listed = api.ok("GET", "/environments", 200, "reader")["environments"]
    (entry,) = [e for e in listed if e["name"] == DEMO]
    assert entry == env
    builds = api.ok("GET", f"/environments/{DEMO}/builds", 200, "reader")["builds"]
    assert [b["id"] for b in builds] == [build["id"]]
    assert api.ok("GET", f"/environments/{DEMO}/builds/{build['id']}", 200) == builds[0]


def test_a_reconnect_resumes_after_the_last_event_id(api, state):
    build_id = state["demo_build"]["id"]
    full = log_lines(state["demo_events"])
    assert len(full) > 4
    for n in (1, 3, len(full) - 1, len(full)):
        for kwargs in ({"headers": {"Last-Event-ID": str(n)}}, {"query": f"?last_event_id={n}"}):
            events = stream_log(api, DEMO, build_id, **kwargs)
            resumed = log_lines(events)
            assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in full[n:]]
            assert final_status(events)["status"] == "succeeded"
    # the header wins over the query parameter
    events = stream_log(
        api, DEMO, build_id, headers={"Last-Event-ID": "2"}, query="?last_event_id=0"
    )
    assert log_lines(events)[0].id == "3"
    message = api.refused(
        "GET", f"/environments/{DEMO}/builds/{build_id}/log", 400, headers={"Last-Event-ID": "abc"}
    )
    assert "Last-Event-ID" in message


def test_creating_an_existing_name_conflicts(api, repo_url):
    message = api.refused("POST", "/environments", 409, json={"name": DEMO, "repo": repo_url})
    # the same words for every taken name (no existence oracle): tests/security
    assert message == f"the name {DEMO} is not available; choose another"


def test_a_build_of_the_same_commit_is_cached(api, state):
    first = state["demo_build"]
    started = time.monotonic()
    build = api.ok("POST", f"/environments/{DEMO}/builds", 202, json={})
    assert build["status"] in ("queued", "running", "succeeded")
    events = stream_log(api, DEMO, build["id"])
    final = final_status(events)
    assert final["status"] == "succeeded" and final["cached"] is True
    assert final["image"] == first["image"] and final["commit"] == first["commit"]
    assert time.monotonic() - started < 15
    messages = [e.json["message"] for e in log_lines(events)]
    assert any("already built" in m for m in messages), messages
    # no repo2docker run: only resolving the ref and finding the image
    assert len(messages) == 3, messages
    assert not any("Step" in m or "#1 " in m for m in messages)


def test_a_new_commit_builds_a_new_image_and_keeps_the_old(api, git_repo, hub_name, state):
    old = state["demo_build"]
    commit = commit_change(git_repo, "RUN echo v2 > /tmp/marker-v2")
    build = api.ok("POST", f"/environments/{DEMO}/builds", 202)  # no body at all
    final = final_status(stream_log(api, DEMO, build["id"]))
    assert final["status"] == "succeeded" and final["cached"] is False
    assert final["commit"] == commit != old["commit"]
    assert final["image"] == f"{IMAGE_PREFIX}{DEMO}:{commit[:12]}"
    assert images_of(DEMO, hub_name) == sorted([old["image"], final["image"]])
    env = wait_for(
        lambda: (e := api.ok("GET", f"/environments/{DEMO}", 200))["image"] == final["image"] and e
    )
    assert env and env["commit"] == commit
    builds = api.ok("GET", f"/environments/{DEMO}/builds", 200)["builds"]
    assert [b["id"] for b in builds] == sorted((b["id"] for b in builds), reverse=True)
    assert len(builds) == 3
    state["demo_new"] = final


def test_patch_relabels_images_and_the_spawn_form(api, hub, hub_name, state):
    display = 'Renamed <b>env</b> & "quoted"'
    env = api.ok(
        "PATCH",
        f"/environments/{DEMO}",
        200,
        json={"display_name": display, "mem_limit": "1G", "cpu_limit": 1.5},
    )
    assert env["display_name"] == display
    assert env["mem_limit"] == "1G" and env["cpu_limit"] == 1.5
    for tag in images_of(DEMO, hub_name):
        image_labels = inspect(tag)["Config"]["Labels"]
        assert image_labels[labels.DISPLAY_NAME] == display, tag
        assert image_labels[labels.MEM_LIMIT] == "1G"
        assert image_labels[labels.CPU_LIMIT] == "1.5"
        assert image_labels[labels.HUB] == hub_name
    assert api.ok("GET", f"/environments/{DEMO}", 200)["image"] == state["demo_new"]["image"]

    session = hub.login("reader")

    def form_shows_it():
        page = session.get(hub.url + "/hub/spawn").text
        return "Renamed &lt;b&gt;env&lt;/b&gt; &amp;" in page and page

    page = wait_for(form_shows_it, timeout=10)
    assert page, "the spawn form does not show the new display name"
    assert "<b>env</b>" not in page
    assert "1G memory" in page

    # a new ref and build arguments are for the next build; the labels stay
    env = api.ok("PATCH", f"/environments/{DEMO}", 200, json={"ref": "v1", "build_args": "A=1"})
    assert env["ref"] == "v1" and env["build_args"] == {"A": "1"}
    env = api.ok("PATCH", f"/environments/{DEMO}", 200, json={"ref": "main", "build_args": {}})
    assert env["ref"] == "main" and env["build_args"] == {}
    # clearing the limits
    env = api.ok("PATCH", f"/environments/{DEMO}", 200, json={"mem_limit": "", "cpu_limit": None})
    assert env["mem_limit"] is None and env["cpu_limit"] is None
    env = api.ok("PATCH", f"/environments/{DEMO}", 200, json={"mem_limit": "1G", "cpu_limit": 1.5})


# --- untrusted text in pages ------------------------------------------------------------------
def test_script_in_names_repos_and_logs_is_escaped(api, hub, xss_repo, state):
    display = f'Evil "><img src=x onerror=alert(1)> {SCRIPT}'
    env = api.ok(
        "POST",
        "/environments",
        201,
        json={"name": XSS, "repo": f"file://{xss_repo}", "display_name": display},
    )
    assert env["display_name"] == display
    build = env["latest_build"]
    events = stream_log(api, XSS, build["id"])
    assert final_status(events)["status"] == "succeeded"
    # the log line is sent as it is (JSON in an event stream: not HTML)
    assert any(SCRIPT in e.json["message"] for e in log_lines(events))
    assert api.ok("GET", f"/environments/{XSS}", 200)["display_name"] == display

    bad_repo = f"file:///nonexistent/{SCRIPT}"
    env = api.ok("POST", "/environments", 201, json={"name": BADREPO, "repo": bad_repo})
    assert env["repo"] == bad_repo
    failed = api.wait_build(BADREPO, env["latest_build"]["id"])
    assert failed["status"] == "failed"
    assert "Cannot resolve" in failed["error"]
    assert api.ok("GET", f"/environments/{BADREPO}", 200)["image"] is None
    state["xss_build"] = build

    session = hub.login("admin")
    prefix = hub.service_url
    pages = {
        "list": prefix + "/",
        "environment": f"{prefix}/environments/{XSS}",
        "build": f"{prefix}/environments/{XSS}/builds/{build['id']}",
        "bad repo": f"{prefix}/environments/{BADREPO}",
        "bad repo build": f"{prefix}/environments/{BADREPO}/builds/{failed['id']}",
    }
    for what, url in pages.items():
        r = session.get(url)
        assert r.status_code == 200 and r.url == url, (what, r.status_code, r.url)
        assert ESCAPED_SCRIPT in r.text, what
        assert "<script>alert" not in r.text, what
        assert "<img src=x" not in r.text, what
    assert "&lt;img src=x onerror=alert(1)&gt;" in session.get(pages["list"]).text

    # the same session through the API: cookies need the XSRF token to change anything
    r = session.post(f"{prefix}/api/v1/environments/{XSS}/builds", json={})
    assert r.status_code == 403, r.text
    assert r.json()["status"] == 403


# --- private repositories --------------------------------------------------------------------
class RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(dict(self.headers))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def assert_secret_absent(secrets_: list[str], *texts: str):
    for secret in secrets_:
        for text in texts:
            assert secret not in text


def test_credentials_are_used_but_never_kept_or_shown(api, hub, repo_url, git_repo, hub_name):
    username, token = "someone", "tok-" + secrets.token_hex(16)
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    secret_forms = [token, basic]

    r = api(
        "POST",
        "/environments",
        json={"name": PRIVATE, "repo": repo_url, "ref": "v1", "username": username, "token": token},
    )
    assert r.status_code == 201, r.text
    seen = [r.text]
    build = r.json()["latest_build"]
    events = stream_log(api, PRIVATE, build["id"])
    final = final_status(events)
    assert final["status"] == "succeeded"
    seen += [e.data for e in events]
    # a second build with credentials (cached)
    r = api("POST", f"/environments/{PRIVATE}/builds", json={"username": username, "token": token})
    assert r.status_code == 202, r.text
    seen.append(r.text)
    cached = api.wait_build(PRIVATE, r.json()["id"])
    assert cached["cached"] is True

    # with an http repository git really sends them (file:// ignores the header)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        http_repo = f"http://127.0.0.1:{server.server_port}/private.git"
        r = api(
            "POST",
            "/environments",
            json={"name": PRIVATE_HTTP, "repo": http_repo, "username": username, "token": token},
        )
        assert r.status_code == 201, r.text
        http_build = api.wait_build(PRIVATE_HTTP, r.json()["latest_build"]["id"])
    finally:
        server.shutdown()
        server.server_close()
    assert http_build["status"] == "failed"
    assert any(h.get("Authorization") == f"Basic {basic}" for h in RecordingHandler.seen), (
        RecordingHandler.seen
    )
    http_events = stream_log(api, PRIVATE_HTTP, http_build["id"])
    seen += [e.data for e in http_events]

    for name in (PRIVATE, PRIVATE_HTTP):
        seen.append(api("GET", f"/environments/{name}").text)
        seen.append(api("GET", f"/environments/{name}/builds").text)
    seen.append(api("GET", "/environments").text)
    session = hub.login("admin")
    for path in (
        f"/environments/{PRIVATE}",
        f"/environments/{PRIVATE}/builds/{build['id']}",
        f"/environments/{PRIVATE_HTTP}/builds/{http_build['id']}",
    ):
        page = session.get(hub.service_url + path)
        assert page.status_code == 200
        seen.append(page.text)
    for tag in images_of(PRIVATE, hub_name):
        seen.append(json.dumps(inspect(tag)))
    seen.append(docker("history", "--no-trunc", images_of(PRIVATE, hub_name)[0]))
    assert_secret_absent(secret_forms, *seen)

    # nor in the service's database (SQLite and its write-ahead log) or output
    state_dir = Path(hub.prefix) / "state"
    db_files = list(state_dir.glob("tljh-repo2docker.sqlite*"))
    assert db_files
    for path in db_files:
        data = path.read_bytes()
        for secret in secret_forms:
            assert secret.encode() not in data, path
    assert_secret_absent(secret_forms, hub.log_path.read_text(errors="replace"))

    # refused credentials are not echoed either
    for body in (
        {"username": username},
        {"token": token},
        {"username": username, "token": token + "x" * 2000},
        {"username": username, "token": token + "\nX-Evil: 1"},
        {"username": ["a"], "token": token},
    ):
        message = api.refused("POST", f"/environments/{PRIVATE}/builds", 400, json=body)
        assert_secret_absent(secret_forms, message)


# --- cancel, conflicts while building ----------------------------------------------------------
def test_cancel_a_running_build(api, slow_repo, hub_name):
    env = api.ok("POST", "/environments", 201, json={"name": SLOW, "repo": f"file://{slow_repo}"})
    build_id = env["latest_build"]["id"]
    wait_running(api, SLOW, build_id)
    running = api.ok("GET", f"/environments/{SLOW}/builds/{build_id}", 200)
    assert running["status"] == "running" and running["finished_at"] is None
    assert running["commit"] == rev_parse(slow_repo, "HEAD")
    (pid,) = repo2docker_pids(SLOW)

    # a second environment waits for the build slot (build_concurrency 1)
    queued = api.ok(
        "POST", "/environments", 201, json={"name": SLOW2, "repo": f"file://{slow_repo}"}
    )
    queued_id = queued["latest_build"]["id"]
    waiting = wait_for(
        lambda: (
            (b := api.ok("GET", f"/environments/{SLOW2}/builds/{queued_id}", 200))["queue_position"]
            and b
        )
    )
    assert waiting and waiting["status"] == "queued" and waiting["queue_position"] == 1
    events = stream_log(api, SLOW2, queued_id, until=lambda e: e.event == "status")
    assert events[-1].json["status"] == "queued" and events[-1].json["queue_position"] == 1
    cancelled = api.ok("POST", f"/environments/{SLOW2}/builds/{queued_id}/cancel", 202)
    assert cancelled["status"] == "cancelled" and cancelled["started_at"]
    assert cancelled["queue_position"] is None
    assert repo2docker_pids(SLOW2) == [] and images_of(SLOW2, hub_name) == []

    # conflicts while it runs
    assert "already running" in api.refused("POST", f"/environments/{SLOW}/builds", 409, json={})
    assert "running build" in api.refused(
        "PATCH", f"/environments/{SLOW}", 409, json={"display_name": "x"}
    )
    assert "cancel" in api.refused("DELETE", f"/environments/{SLOW}", 409)
    api.refused("POST", f"/environments/{SLOW}/builds/{build_id}/cancel", 403, "reader")

    started = time.monotonic()
    cancelled = api.ok("POST", f"/environments/{SLOW}/builds/{build_id}/cancel", 202)
    assert cancelled["status"] == "cancelled"
    assert time.monotonic() - started < 15
    assert cancelled["finished_at"] and cancelled["image"] is None
    assert group_alive(pid) == [], "repo2docker's process group must be gone"
    assert repo2docker_pids(SLOW) == []
    assert images_of(SLOW, hub_name) == []
    assert not image_exists(f"{IMAGE_PREFIX}{SLOW}:{running['commit'][:12]}")
    events = stream_log(api, SLOW, build_id)
    assert final_status(events)["status"] == "cancelled"
    assert log_lines(events)[-1].json == {"phase": "cancelled", "message": "Build cancelled\n"}
    assert "already cancelled" in api.refused(
        "POST", f"/environments/{SLOW}/builds/{build_id}/cancel", 409
    )
    assert api.ok("GET", f"/environments/{SLOW}", 200)["status"] == "cancelled"


# --- hostile input ---------------------------------------------------------------------------
LONG = "x" * 10_000


# Where the OpenAPI request schema cannot say the rule (schemes, ranges of
# sizes given as text, '..' in refs), it says it in words: the service refuses
# more than the schema. Everything else the schema refuses too.
SCHEMA_SAYS_IN_WORDS = {"scheme", "credentials", "range", "dots"}


def create_cases(repo_url: str):
    ok = {"name": "api-hostile", "repo": repo_url}
    return [
        ({**ok, "name": "Bad Name"}, "name", None),
        ({**ok, "name": "-dash"}, "name", None),
        ({**ok, "name": "a" * 64}, "name", None),
        ({**ok, "name": LONG}, "name", None),
        ({**ok, "name": "tab\tname"}, "name", None),
        ({**ok, "name": 5}, "name", None),
        ({"repo": repo_url}, "name", None),
        ({**ok, "repo": "ftp://example.org/repo"}, "repo", "scheme"),
        ({**ok, "repo": "ext::sh -c touch% /tmp/pwned"}, "repo", None),
        ({**ok, "repo": "ext::sh"}, "repo", "scheme"),
        ({**ok, "repo": "--upload-pack=touch /tmp/x"}, "repo", None),
        ({**ok, "repo": "/srv/repo"}, "repo", "scheme"),
        ({**ok, "repo": "https://user:secret@example.org/repo"}, "repo", "credentials"),
        ({**ok, "repo": "https://example.org/" + LONG}, "repo", None),
        ({**ok, "repo": "https://example.org/a\x00b"}, "repo", None),
        ({"name": "api-hostile"}, "repo", None),
        ({**ok, "ref": "--upload-pack=touch /tmp/x"}, "ref", None),
        ({**ok, "ref": "-x"}, "ref", None),
        ({**ok, "ref": "a..b"}, "ref", "dots"),
        ({**ok, "ref": LONG}, "ref", None),
        ({**ok, "ref": "ma\nin"}, "ref", None),
        ({**ok, "display_name": LONG}, "display_name", None),
        ({**ok, "display_name": "bell\x07"}, "display_name", None),
        ({**ok, "display_name": "line\nbreak"}, "display_name", None),
        ({**ok, "display_name": {"a": 1}}, "display_name", None),
        ({**ok, "mem_limit": "lots"}, "mem_limit", None),
        ({**ok, "mem_limit": "1P"}, "mem_limit", None),
        ({**ok, "mem_limit": "1K"}, "mem_limit", "range"),
        ({**ok, "mem_limit": LONG}, "mem_limit", None),
        ({**ok, "mem_limit": -5}, "mem_limit", None),
        ({**ok, "mem_limit": True}, "mem_limit", None),
        ({**ok, "cpu_limit": -1}, "cpu_limit", None),
        ({**ok, "cpu_limit": 0}, "cpu_limit", None),
        ({**ok, "cpu_limit": 1e9}, "cpu_limit", None),
        ({**ok, "cpu_limit": "many"}, "cpu_limit", None),
        ({**ok, "cpu_limit": LONG}, "cpu_limit", None),
        ({**ok, "build_args": {"1BAD": "x"}}, "build_args", None),
        ({**ok, "build_args": {"A B": "x"}}, "build_args", None),
        ({**ok, "build_args": {"A": 1}}, "build_args", None),
        ({**ok, "build_args": {"A": LONG}}, "build_args", None),
        ({**ok, "build_args": {LONG: "x"}}, "build_args", None),
        ({**ok, "build_args": ["A=1"]}, "build_args", None),
        ({**ok, "build_args": "NOEQUALS"}, "build_args", "syntax"),
        ({**ok, "username": "u", "token": LONG}, "token", None),
        ({**ok, "username": LONG, "token": "t"}, "username", None),
        ({**ok, "token": "t"}, "username", "pairs"),
        ({**ok, "owner": "me"}, "unknown fields", None),
        ({**ok, LONG: 1}, "unknown fields", None),
    ]


def test_hostile_create_requests_are_refused(api, repo_url, hub_name):
    request = operation("POST", "/environments")["requestBody"]["content"]["application/json"]
    for body, field_name, in_words in create_cases(repo_url):
        message = api.refused("POST", "/environments", 400, json=body)
        assert message.startswith(field_name) or field_name in message, (field_name, message)
        assert LONG not in message
        if in_words is None:
            assert schema_errors(request["schema"], body), (field_name, str(body)[:200])
    assert schema_errors(request["schema"], create_cases(repo_url)[0][0])
    assert not schema_errors(request["schema"], {"name": "ok", "repo": repo_url, "ref": "v1"})
    names = [e["name"] for e in api.ok("GET", "/environments", 200)["environments"]]
    assert "api-hostile" not in names
    assert images_of("api-hostile", hub_name) == []


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not json", "not valid JSON"),
        (b"{'name': 1}", "not valid JSON"),
        (b'["name", "repo"]', "JSON object"),
        (b"null", "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"name": "x", "repo": "file:///x", "mem_limit": NaN}', "mem_limit"),
        (b'{"name": "x", "repo": "file:///x", "mem_limit": Infinity}', "mem_limit"),
        (b'{"name": "x", "repo": "file:///x", "cpu_limit": NaN}', "cpu_limit"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(api, data, message):
    text = api.refused(
        "POST", "/environments", 400, data=data, headers={"Content-Type": "application/json"}
    )
    assert message in text


def test_hostile_updates_and_build_requests_are_refused(api):
    path = f"/environments/{DEMO}"
    before = api.ok("GET", path, 200)
    builds_before = api.ok("GET", f"{path}/builds", 200)["builds"]
    for body, field_name in [
        ({"name": "renamed"}, "unknown fields"),
        ({"repo": "file:///etc"}, "unknown fields"),
        ({"display_name": LONG}, "display_name"),
        ({"display_name": ""}, "display_name"),
        ({"display_name": "a\x1bb"}, "display_name"),
        ({"mem_limit": "lots"}, "mem_limit"),
        ({"cpu_limit": -1}, "cpu_limit"),
        ({"ref": "--upload-pack=x"}, "ref"),
        ({"ref": LONG}, "ref"),
        ({"build_args": {"A-B": "x"}}, "build_args"),
    ]:
        message = api.refused("PATCH", path, 400, json=body)
        assert field_name in message, (field_name, message)
        assert LONG not in message
    for data in (b"[1]", b'{"mem_limit": Infinity}', b"{"):
        api.refused("PATCH", path, 400, data=data, headers={"Content-Type": "application/json"})
    assert api.ok("GET", path, 200) == before, "a refused update must change nothing"
    for body, field_name in [
        ({"ref": "main"}, "unknown fields"),
        ({"name": DEMO}, "unknown fields"),
        ({"username": "u"}, "token"),
    ]:
        assert field_name in api.refused("POST", f"{path}/builds", 400, json=body)
    assert api.ok("GET", f"{path}/builds", 200)["builds"] == builds_before


def test_file_urls_of_missing_repositories_fail_as_builds(api, state):
    env = api.ok("GET", f"/environments/{BADREPO}", 200)
    assert env["status"] == "failed" and env["image"] is None


# --- delete while in use ------------------------------------------------------------------
def test_versions_can_be_pinned_listed_and_deleted(api, hub, hub_name):
    versions = api.ok("GET", f"/environments/{DEMO}/versions", 200)["versions"]
    assert len(versions) >= 2, versions
    assert versions[0]["current"] and not any(v["current"] for v in versions[1:])
    old = versions[-1]
    # a server pinned to an old version starts from it, and keeps it
    hub.api("POST", "/users/pinned")
    r = hub.api(
        "POST", "/users/pinned/server", json={"environment": DEMO, "version": old["commit"][:12]}
    )
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("pinned")
    (cid,) = containers(hub_name, "pinned")
    assert inspect(cid)["Config"]["Image"] == old["image"]
    listed = {
        v["image"]: v for v in api.ok("GET", f"/environments/{DEMO}/versions", 200)["versions"]
    }
    assert listed[old["image"]]["in_use"]
    assert "stop it first" in api.refused(
        "DELETE", f"/environments/{DEMO}/versions/{old['commit']}", 409
    )
    # only the owner or an admin
    api.refused("DELETE", f"/environments/{DEMO}/versions/{old['commit']}", 403, "reader")
    hub.api("DELETE", "/users/pinned/server")
    hub.wait_stopped("pinned")
    api.ok("DELETE", f"/environments/{DEMO}/versions/{old['commit'][:12]}", 204)
    after = [v["image"] for v in api.ok("GET", f"/environments/{DEMO}/versions", 200)["versions"]]
    assert old["image"] not in after and after
    assert docker("images", "-q", old["image"]) == ""


def test_delete_while_a_server_uses_it(api, hub, hub_settings, hub_name, tokens, state):
    r = hub.api("POST", "/users/reader/server", json={"environment": DEMO})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("reader")
    r = requests.put(
        f"{hub.url}/user/reader/api/contents/kept.txt",
        json={"type": "file", "format": "text", "content": "still here"},
        headers={"Authorization": f"token {tokens['reader']}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    env = wait_for(lambda: (e := api.ok("GET", f"/environments/{DEMO}", 200))["servers"] and e)
    assert env["servers"] == [{"user": "reader", "server_name": ""}]

    before = images_of(DEMO, hub_name)
    message = api.refused("DELETE", f"/environments/{DEMO}", 409)
    assert "reader" in message and "server" in message
    assert images_of(DEMO, hub_name) == before and before  # nothing removed
    api.refused("DELETE", f"/environments/{DEMO}?stop_servers=true", 403, "reader")

    r = api("DELETE", f"/environments/{DEMO}?stop_servers=true")
    assert r.status_code == 204, r.text
    assert r.content == b""
    model = hub.api("GET", "/users/reader").json()
    assert "" not in model["servers"], model
    assert images_of(DEMO, hub_name) == []
    assert "no environment" in api.refused("GET", f"/environments/{DEMO}", 404)
    assert DEMO not in [e["name"] for e in api.ok("GET", "/environments", 200)["environments"]]
    home = Path(hub_settings["homes_dir"]) / "jupyter-reader"
    assert (home / "kept.txt").read_text() == "still here"


# --- restarts ---------------------------------------------------------------------------
def running_again(api: Api, build_id: int, old_pid: int, note: str) -> list[str]:
    """After a restart: the same build runs again in one new repo2docker
    process, and its log goes on past ``note`` to the slow step again.
    Returns the log's messages."""
    pids = wait_for(lambda: [p for p in repo2docker_pids(SLOW) if p != old_pid], timeout=90)
    assert len(pids) == 1 and old_pid not in repo2docker_pids(SLOW), pids
    seen = []

    def again(event) -> bool:
        if event.event == "message":
            seen.append(event.json["message"])
        return any(note in m for m in seen) and "sleep" in seen[-1]

    stream_log(api, SLOW, build_id, until=again)
    assert "sleep" in seen[-1], seen[-5:]
    after = api.ok("GET", f"/environments/{SLOW}/builds/{build_id}", 200)
    assert after["status"] == "running" and not after["finished_at"], after
    return seen


def cancel_and_check_nothing_left(api: Api, build_id: int, hub_name: str):
    cancelled = api.ok("POST", f"/environments/{SLOW}/builds/{build_id}/cancel", 202)
    assert cancelled["status"] == "cancelled", cancelled
    assert wait_for(lambda: repo2docker_pids(SLOW) == [], timeout=10)
    assert images_of(SLOW, hub_name) == []


def test_a_hub_restart_runs_a_running_build_again(api, hub, hub_name, state):
    """The build queue outlives the service (issue 12): a clean stop puts a
    running build back in the queue, and the next start runs it again."""
    build = api.ok("POST", f"/environments/{SLOW}/builds", 202, json={})
    before = [e.json["message"] for e in log_lines(wait_running(api, SLOW, build["id"]))]
    (pid,) = repo2docker_pids(SLOW)
    hub.stop()  # stops the service too (SIGINT/SIGTERM: a clean shutdown)
    assert group_alive(pid) == []
    hub.start()
    seen = running_again(api, build["id"], pid, "starts again when it is back")
    assert seen[: len(before)] == before, "the log written before the stop is kept"
    cancel_and_check_nothing_left(api, build["id"], hub_name)
    names = {e["name"]: e for e in api.ok("GET", "/environments", 200)["environments"]}
    assert names[XSS]["image"] and names[XSS]["status"] == "succeeded"
    assert names[PRIVATE]["image"]


def test_a_killed_services_build_runs_again_once(api, hub, hub_name):
    build = api.ok("POST", f"/environments/{SLOW}/builds", 202, json={})
    wait_running(api, SLOW, build["id"])
    (pid,) = repo2docker_pids(SLOW)
    os.kill(service_pid(hub), signal.SIGKILL)
    time.sleep(0.5)
    assert group_alive(pid), "repo2docker outlives a killed service (recovery must end it)"
    hub.stop()
    hub.start()  # the service starts again: recovery kills the orphan, then runs it again
    assert wait_for(lambda: not group_alive(pid), timeout=10)
    running_again(api, build["id"], pid, "restarted: this build starts again")
    cancel_and_check_nothing_left(api, build["id"], hub_name)
    names = {e["name"] for e in api.ok("GET", "/environments", 200)["environments"]}
    assert {XSS, PRIVATE, SLOW, BADREPO} <= names
    # and the environment builds again (cancelled at once: the step sleeps)
    again = api.ok("POST", f"/environments/{SLOW}/builds", 202, json={})
    cancelled = api.ok("POST", f"/environments/{SLOW}/builds/{again['id']}/cancel", 202)
    assert cancelled["status"] == "cancelled"


def test_private_environments_are_invisible_until_shared(
    api, hub, repo_url, user_repo_url, hub_name
):
    name = f"private-{SUFFIX}"
    env = api.ok(
        "POST",
        "/environments",
        201,
        "reader",
        json={"name": name, "repo": user_repo_url, "ref": "main"},
    )
    assert (env["owner"], env["visibility"]) == ("reader", "private")
    # the same repository as a file:// URL is for admins only, even with allow_local_repos
    local = f"{name}-local"
    assert api.refused(
        "POST", "/environments", 400, "reader", json={"name": local, "repo": repo_url}
    ).startswith("repo")
    api.refused("GET", f"/environments/{local}", 404, "admin")  # nothing was kept
    build = api.wait_build(name, env["latest_build"]["id"])
    assert build["status"] == "succeeded"
    api.tokens["other"] = hub.user_token("other")

    # invisible to another user by every route: list, get, builds, spawn form, REST spawn
    listed = api.ok("GET", "/environments", 200, "other")["environments"]
    assert name not in [e["name"] for e in listed]
    for method, path in [
        ("GET", f"/environments/{name}"),
        ("GET", f"/environments/{name}/builds"),
        ("POST", f"/environments/{name}/builds"),
        ("PATCH", f"/environments/{name}"),
        ("DELETE", f"/environments/{name}"),
    ]:
        api.refused(method, path, 404, "other", **({"json": {}} if method == "PATCH" else {}))
    assert f'value="{name}"' not in hub.login("other").get(hub.url + "/hub/spawn").text
    r = hub.api("POST", "/users/other/server", json={"environment": name})
    assert r.status_code == 400 and "is not an environment" in r.json()["message"]
    assert f'value="{name}"' in hub.login("reader").get(hub.url + "/hub/spawn").text
    # admins see everything
    assert api.ok("GET", f"/environments/{name}", 200, "admin")["owner"] == "reader"

    # shared with a group the other user is in
    assert hub.api("POST", "/groups/physics").status_code in (201, 409)
    r = hub.api("POST", "/groups/physics/users", json={"users": ["other"]})
    assert r.status_code == 200, r.text
    shared = api.ok(
        "PATCH",
        f"/environments/{name}",
        200,
        "reader",
        json={"visibility": {"groups": ["physics"]}},
    )
    assert shared["visibility"] == "groups:physics"
    image_labels = inspect(shared["image"])["Config"]["Labels"]
    assert image_labels[labels.VISIBILITY] == "groups:physics"
    assert image_labels[labels.OWNER] == "reader"
    api.tokens["other"] = hub.user_token("other")  # a fresh token: the service caches models
    assert api.ok("GET", f"/environments/{name}", 200, "other")["name"] == name
    assert "builds on its own" not in api.refused(
        "PATCH", f"/environments/{name}", 403, "other", json={"display_name": "mine now"}
    )
    # the picker reads labels through a cache of half a second
    session = hub.login("other")
    deadline = time.monotonic() + 3
    while f'value="{name}"' not in session.get(hub.url + "/hub/spawn").text:
        assert time.monotonic() < deadline, "the shared environment is not in the picker"
        time.sleep(0.2)
    api.ok("DELETE", f"/environments/{name}", 204, "reader")


def test_quotas_answer_429(api, git_server, user_repo_url, slow_repo):
    fast, slow = f"quota-fast-{SUFFIX}", f"quota-slow-{SUFFIX}"
    env = api.ok(
        "POST",
        "/environments",
        201,
        "reader",
        json={"name": fast, "repo": user_repo_url, "ref": "main"},
    )
    api.wait_build(fast, env["latest_build"]["id"])
    env = api.ok(
        "POST",
        "/environments",
        201,
        "reader",
        json={"name": slow, "repo": http_url(git_server, slow_repo), "ref": "main"},
    )
    slow_build = env["latest_build"]["id"]
    # one build at a time for a user: a new environment and a rebuild both wait
    message = api.refused(
        "POST",
        "/environments",
        429,
        "reader",
        json={"name": f"quota-x-{SUFFIX}", "repo": user_repo_url},
    )
    assert "at once" in message
    api.refused("GET", f"/environments/quota-x-{SUFFIX}", 404, "reader")  # nothing was kept
    assert "at once" in api.refused("POST", f"/environments/{fast}/builds", 429, "reader")
    # admins have no quota
    build = api.ok("POST", f"/environments/{fast}/builds", 202, "admin")
    api.wait_build(fast, build["id"])
    api.ok("POST", f"/environments/{slow}/builds/{slow_build}/cancel", 202, "reader")
    api.ok("DELETE", f"/environments/{slow}", 204, "reader")
    api.ok("DELETE", f"/environments/{fast}", 204, "reader")


def test_the_service_logged_no_tracebacks(hub):
    """Every refusal above was an answer, not a crash (a 500 would log one)."""
    log = hub.log_path.read_text(errors="replace")
    # JupyterHub's own periodic service health check can race with its
    # shutdown (a restart test above stops the hub) and log an AttributeError
    # of its own: that one is the hub's, not an answer of the service.
    blocks = log.split("Traceback (most recent call last):")
    ours = [
        i
        for i, block in enumerate(blocks[1:], 1)
        if "check_services_health" not in blocks[i - 1][-400:]
    ]
    assert not ours, "".join(blocks[i - 1][-2000:] + blocks[i][:4000] for i in ours)
    assert " 500 " not in log


# --- the OpenAPI document against what the service really said --------------------------
# every operation may answer 503 with the shared Unavailable response (an Error body)
UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}


def test_real_responses_match_the_openapi_document():
    assert len(RECORDED) > 100
    problems = []
    covered = set()
    for rec in RECORDED:
        if rec.status == 404 and rec.body and "no such API endpoint" in str(rec.body):
            continue  # unknown endpoints are not operations
        errors = response_errors(rec.method, rec.path, rec.status, rec.content_type, rec.body)
        problems += [f"{rec.method} {rec.path} {rec.status}: {e}" for e in errors]
        op = operation(rec.method, rec.path)
        if op is not None:
            covered.add((op["operationId"], rec.status))
    assert not problems, "\n".join(problems[:20])
    for method, template, op in operations():
        for code in op["responses"]:
            if code == "503":
                # Docker or the database down: this hub has both, so the
                # degraded answers are checked in tests/test_service_degraded.py
                assert op["responses"][code] == UNAVAILABLE, (method, template)
                continue
            assert (op["operationId"], int(code)) in covered, (method, template, code)
