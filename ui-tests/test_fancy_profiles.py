"""jupyterhub-fancy-profiles' image builder, in a real browser (issue 9 item 8).

Its released versions run on the hub's spawn page and call BinderHub's client
``new BinderRepository(spec, new URL("/services/binder/build/", origin), null,
true)``: build-only, no token, the browser's cookies. The client hands the
URL to fetch-event-source, which sends ``Accept: text/event-stream`` (and the
client adds the ``_xsrf`` cookie it can read as ``X-XSRFToken``). This test
makes the same request with ``fetch`` from the hub's own page (the raw
request, not the npm bundle: a page cannot import the client's bare module
names without a bundler) and reads the stream to ``ready``'s ``imageName``.

The user never opened /services/binder/ before: the first request follows
the hub's OAuth redirects (no confirmation page) and comes back with the
service's cookie for that path.

A request that another site makes the browser send (a link, a script) must
not build anything in the user's name.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.dockerfixtures import SINGLEUSER_IMAGE, commit_change

pytestmark = [pytest.mark.docker, pytest.mark.browser]

# file:// repositories (the only ones that build offline) are for admins only
ADMIN = "admin"
PASSWORD = "test-password"
EVIL = "http://evil.test"  # served by Playwright's router: no network

# BinderHub's npm client as scripts/setup-host installed it (tests/binder)
MODULES = Path(__file__).resolve().parent.parent / ".cache" / "binder" / "node_modules"
FES = MODULES / "@microsoft" / "fetch-event-source" / "lib" / "esm"
# served on the hub's own origin under this path (by Playwright, not the hub),
# as fancy-profiles' bundle is part of the hub's spawn page
BUNDLE = "/__fancy__/"
BUNDLE_FILES = {
    "client.js": MODULES / "@jupyterhub" / "binderhub-client" / "lib" / "client.js",
    # fetch-event-source's ES build imports './fetch' and './parse' without .js
    "fes/index.js": FES / "index.js",
    "fes/fetch": FES / "fetch.js",
    "fes/parse": FES / "parse.js",
}
IMPORT_MAP = {
    "imports": {
        "@microsoft/fetch-event-source": BUNDLE + "fes/index.js",
        "event-iterator": BUNDLE + "event-iterator.js",
    }
}
# event-iterator ships CommonJS only: its file runs unchanged inside this
# ES module wrapper (what a bundler does)
EVENT_ITERATOR_SHIM = """const module = {{ exports: {{}} }};
(function (exports, module) {{
{source}
}})(module.exports, module);
export const EventIterator = module.exports.EventIterator;
export default module.exports.EventIterator;
"""

# fancy-profiles' buildImage(): the client in build-only mode, no token
# (released versions) or a hub token (its main branch), read to ready
RUN_CLIENT = """
async ([spec, apiToken]) => {
  const { BinderRepository } = await import("/__fancy__/client.js");
  const endpoint = new URL("/services/binder/build/", window.location.origin);
  const image = new BinderRepository(spec, endpoint, { apiToken, buildOnly: true });
  const events = [];
  for await (const data of image.fetch()) {
    events.push(data);
    if (data.phase === "failed" || data.phase === "ready") {
      image.close();
      break;
    }
  }
  return events;
}
"""

# fancy-profiles' main branch: a token made with the hub's API from the page
MAKE_TOKEN = """
async () => {
  const xsrf = (`; ${document.cookie}`).split("; _xsrf=").pop().split(";")[0];
  const user = await (await fetch(`/hub/api/user?_xsrf=${xsrf}`)).json();
  const r = await fetch(`/hub/api/users/${user.name}/tokens?_xsrf=${xsrf}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ expires_in: 600, note: "test: fancy-profiles build token" }),
  });
  return (await r.json()).token;
}
"""

# What fetch-event-source does with BinderHub's client's request, read to the
# first ready/failed event (then closed, as fancy-profiles closes it).
READ_STREAM = """
async (url) => {
  const xsrf = (document.cookie.match("\\\\b_xsrf=([^;]*)\\\\b") || [])[1];
  const headers = {Accept: "text/event-stream"};
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  const response = await fetch(url, {headers});
  const out = {
    status: response.status,
    type: response.headers.get("content-type"),
    redirected: response.redirected,
    events: [],
  };
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\\n")) {
        if (!line.startsWith("data:")) continue;
        const data = JSON.parse(line.slice(5));
        out.events.push(data);
        if (data.phase === "ready" || data.phase === "failed") {
          await reader.cancel();
          return out;
        }
      }
    }
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def project_repo(tmp_path_factory, hub_name):
    from tests.dockerfixtures import make_git_repo

    path = make_git_repo(tmp_path_factory.mktemp("fancy") / "byoi", marker=hub_name)
    (path / "Dockerfile").write_text(f"FROM {SINGLEUSER_IMAGE}\n")
    commit_change(path, f"RUN echo {hub_name} > /tmp/fancy")
    return path


@pytest.fixture(scope="module")
def build_url(hub, project_repo):
    spec = "git/" + quote(f"file://{project_repo}", safe="") + "/main"
    return f"{hub.url}/services/binder/build/{spec}?build_only=true"


def image_exists(tag: str) -> bool:
    got = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    return got.returncode == 0


def log_in(page, hub):
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", ADMIN)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url, timeout=60_000)


def binder_cookies(context, hub) -> list[str]:
    return [
        c["name"]
        for c in context.cookies(f"{hub.url}/services/binder/build/x")
        if c["path"].startswith("/services/binder")
    ]


def serve_bundle(route):
    name = route.request.url.split(BUNDLE, 1)[1].split("?", 1)[0]
    if name == "event-iterator.js":
        source = (MODULES / "event-iterator" / "lib" / "event-iterator.js").read_text()
        body = EVENT_ITERATOR_SHIM.format(source=source)
    elif name in BUNDLE_FILES:
        body = BUNDLE_FILES[name].read_text()
    else:
        route.fulfill(status=404, body="")
        return
    route.fulfill(body=body, content_type="text/javascript")


def spawn_page_with_client(browser, hub):
    """A new browser (no cookies), logged in, on the spawn page, with the
    client loadable as fancy-profiles' bundle loads it."""
    if not BUNDLE_FILES["client.js"].exists():
        pytest.fail(f"{BUNDLE_FILES['client.js']} missing: run scripts/setup-host")
    context = browser.new_context()
    context.set_default_timeout(30_000)
    context.route(f"{hub.url}{BUNDLE}**", serve_bundle)
    page = context.new_page()
    log_in(page, hub)
    page.goto(f"{hub.url}/hub/spawn")
    assert "/hub/spawn" in page.url
    page.add_script_tag(type="importmap", content=json.dumps(IMPORT_MAP))
    return context, page


@pytest.fixture(scope="module")
def built(hub, browser, build_url, project_repo):
    """The spawn page's build: (browser context, its page, what the stream said)."""
    context = browser.new_context()
    context.set_default_timeout(30_000)
    page = context.new_page()
    log_in(page, hub)
    page.goto(f"{hub.url}/hub/spawn")
    assert "/hub/spawn" in page.url
    assert binder_cookies(context, hub) == []  # never been to /services/binder/
    got = page.evaluate(READ_STREAM, build_url)
    yield context, page, got
    context.close()


def test_the_spawn_page_builds_with_cookies_only(hub, built, build_url, project_repo):
    context, page, got = built
    phases = [e["phase"] for e in got["events"]]
    assert got["status"] == 200 and got["type"].startswith("text/event-stream"), got
    assert phases[-1] == "ready", got["events"]
    # what fancy-profiles reads; BinderHub sends no "built" in build-only mode
    ready = got["events"][-1]
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project_repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert ready["imageName"].endswith(":" + commit[:12]), ready
    assert "built" not in phases and "building" in phases, phases
    assert image_exists(ready["imageName"])
    # the login went through the hub's OAuth and left a cookie for this path
    assert got["redirected"] is True
    assert binder_cookies(context, hub), context.cookies()
    # nothing started: no server of the user's runs
    servers = hub.api("GET", f"/users/{ADMIN}").json()["servers"]
    assert servers == {}, servers
    # again, now with the cookie: no detour, the image is found
    again = page.evaluate(READ_STREAM, build_url)
    assert again["redirected"] is False
    assert again["events"][-1]["imageName"] == ready["imageName"]
    assert "building" not in [e["phase"] for e in again["events"]]


def test_another_site_cannot_make_the_browser_build(hub, built, build_url, project_repo):
    context, page, first = built
    old_tag = first["events"][-1]["imageName"]
    commit = commit_change(project_repo, "RUN echo another > /tmp/another")
    new_tag = old_tag.rsplit(":", 1)[0] + ":" + commit[:12]
    assert not image_exists(new_tag)
    cookies_before = binder_cookies(context, hub)
    assert cookies_before  # the victim is logged in there (previous test)

    evil_page = f"""<!doctype html><title>win a prize</title>
<a id="go" href="{build_url}">click</a>
<script>
window.tryFetch = () => fetch({build_url!r}, {{
  credentials: "include", mode: "no-cors", headers: {{Accept: "text/event-stream"}}
}}).then(() => "sent", (e) => String(e));
</script>"""
    context.route(
        f"{EVIL}/**", lambda route: route.fulfill(body=evil_page, content_type="text/html")
    )
    evil = context.new_page()
    seen = []
    evil.on("request", lambda r: seen.append(r) if "/services/binder/build/" in r.url else None)
    evil.goto(f"{EVIL}/prize")
    # 1. another site's script (no-cors: it may send, not read)
    evil.evaluate("window.tryFetch()")
    # 2. a link from another site: a top-level navigation carries the cookie
    evil.click("#go", no_wait_after=True)
    deadline = time.time() + 30
    while len(seen) < 2 and time.time() < deadline:
        evil.wait_for_timeout(200)
    assert len(seen) >= 2, [r.url for r in seen]
    evil.wait_for_timeout(5000)  # time enough to resolve the commit and start
    assert not image_exists(new_tag)
    listed = hub.service_api("GET", "/environments", token=hub.user_token(ADMIN)).json()
    builds = [e.get("latest_build") or {} for e in listed["environments"]]
    assert builds and all(b.get("commit") != commit for b in builds), builds
    evil.close()

    # the same request from the hub's own page builds that commit
    got = page.evaluate(READ_STREAM, build_url)
    assert got["events"][-1].get("imageName") == new_tag, got["events"]
    assert "building" in [e["phase"] for e in got["events"]]


def test_binderhubs_client_builds_from_the_spawn_page(hub, browser, project_repo):
    """The real npm client, as fancy-profiles' released versions call it."""
    commit = commit_change(project_repo, "RUN echo client > /tmp/client")
    spec = "git/" + quote(f"file://{project_repo}", safe="") + "/main"
    context, page = spawn_page_with_client(browser, hub)
    try:
        assert binder_cookies(context, hub) == []
        events = page.evaluate(RUN_CLIENT, [spec, None])
        phases = [e["phase"] for e in events]
        assert phases[-1] == "ready", events
        assert events[-1]["imageName"].endswith(":" + commit[:12]), events[-1]
        assert "building" in phases and "built" not in phases, phases
        assert image_exists(events[-1]["imageName"])
        assert binder_cookies(context, hub)  # through the OAuth detour

        # fancy-profiles' main branch: a hub token made from the page
        token = page.evaluate(MAKE_TOKEN)
        assert token
        again = page.evaluate(RUN_CLIENT, [spec, token])
        assert again[-1]["phase"] == "ready", again
        assert again[-1]["imageName"] == events[-1]["imageName"]
        assert "building" not in [e["phase"] for e in again]
    finally:
        context.close()
