"""A real JupyterHub (with configurable-http-proxy) in a subprocess, for tests.

It runs dev/jupyterhub_config.py, i.e. TLJH's settings plus this plugin's
real hook, with a config.yaml of the test's choosing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHP = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
OFFLINE_R2D_CONFIG = str(ROOT / "examples" / "repo2docker-offline.py")


def missing_tools() -> str | None:
    """What the Docker tests and benchmarks need but this machine lacks, or None
    (scripts/setup-host installs all of it)."""
    from .dockerfixtures import SINGLEUSER_IMAGE

    if shutil.which("docker") is None:
        return "docker CLI not found: run scripts/setup-host (scripts/test does)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"Docker engine not reachable: {info.stderr.strip()[:300]}"
    if not CHP.exists():
        return f"{CHP} missing: run scripts/setup-host"
    images = subprocess.run(
        ["docker", "images", "-q", SINGLEUSER_IMAGE], capture_output=True, text=True, timeout=60
    )
    if not images.stdout.strip():
        return f"{SINGLEUSER_IMAGE} missing: run scripts/setup-host"
    return None


def hub_settings_for(hub_name: str, homes_dir: str, **extra) -> dict:
    """The repo2docker section of a test hub's config.yaml: its own label,
    homes and ports; local repositories; no content provider that needs
    the internet."""
    return {
        "hub_name": hub_name,
        "image_prefix": "tljh-r2d-test/",
        "homes_dir": homes_dir,
        "allow_local_repos": True,
        "repo2docker_config": [OFFLINE_R2D_CONFIG],
        "service_port": free_port(),
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        # every interface: the hub binds the Docker bridge, not loopback
        s.bind(("", 0))
        return s.getsockname()[1]


class HubProcess:
    def __init__(self, prefix: Path, settings: dict, token: str, config_file: Path | None = None):
        self.prefix = prefix
        # benchmarks pass a file that loads dev/jupyterhub_config.py and changes it
        self.config_file = config_file or ROOT / "dev" / "jupyterhub_config.py"
        self.settings = settings
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.log_path = prefix / "hub.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            TLJH_INSTALL_PREFIX=str(self.prefix),
            R2D_DEV_PORT=str(self.port),
            R2D_DEV_HUB_PORT=str(self.hub_port),
            R2D_DEV_PROXY_API_PORT=str(self.proxy_api_port),
            R2D_DEV_API_TOKEN=self.token,
            R2D_DEV_PASSWORD="test-password",
            R2D_DEV_CHP=str(CHP),
        )
        return env

    def write_config(self):
        config_dir = self.prefix / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "config.yaml").write_text(yaml.safe_dump({"repo2docker": self.settings}))

    def start(self, timeout: float = 60):
        self.write_config()
        state = self.prefix / "state"
        state.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.config_file)],
            cwd=state,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/hub/api", timeout=2).status_code == 200:
                    self.wait_service(deadline)
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hub did not answer within {timeout} s:\n{self.log_tail()}")

    @property
    def service_url(self) -> str:
        return f"{self.url}/services/environments"

    def wait_service(self, deadline: float):
        """Until the environments service answers through the proxy (the hub
        starts it, then adds its route)."""
        while time.monotonic() < deadline:
            r = requests.get(self.service_url + "/api/v1/environments", timeout=2)
            if r.status_code == 403 and r.headers.get("Content-Type", "").startswith(
                "application/json"
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"environments service did not answer:\n{self.log_tail()}")

    def service_api(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return requests.request(
            method, f"{self.service_url}/api/v1{path}", headers=headers, timeout=60, **kwargs
        )

    def stop(self, timeout: float = 30):
        """SIGTERM and wait: the hub stops its proxy and managed services."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # --- REST API -------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {token or self.token}"
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=60, **kwargs
        )

    def build_environment(
        self, name: str, repo: str, ref: str, token: str, timeout: float = 300
    ) -> dict:
        """Create ``name`` through the service's API and wait for its first
        build to end; returns that build's model (the caller checks it)."""
        r = self.service_api(
            "POST", "/environments", token, json={"name": name, "repo": repo, "ref": ref}
        )
        assert r.status_code == 201, r.text
        build_id = r.json()["latest_build"]["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            build = self.service_api("GET", f"/environments/{name}/builds/{build_id}", token).json()
            if build["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        return build

    def user_token(self, name: str) -> str:
        self.api("POST", f"/users/{name}")  # 201, or 409 when it exists
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "test"})
        r.raise_for_status()
        return r.json()["token"]

    def wait_ready(
        self, name: str, server: str = "", timeout: float = 90, interval: float = 0.1
    ) -> dict:
        """Until the server is ready. ``interval``: seconds between checks
        (many waiting at once must not load the hub more than the spawns do)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{name}").json()
            spawner = model.get("servers", {}).get(server)
            if spawner and spawner.get("ready"):
                return spawner
            if not spawner:
                # called after a spawn request: a missing server means it failed
                raise RuntimeError(f"{name}'s server failed to start:\n{self.log_tail()}")
            time.sleep(interval)
        raise RuntimeError(f"{name}'s server not ready in {timeout} s:\n{self.log_tail()}")

    def wait_stopped(self, name: str, server: str = "", timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{name}").json()
            if server not in model.get("servers", {}):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name}'s server did not stop in {timeout} s:\n{self.log_tail()}")

    def login(self, name: str, password: str = "test-password") -> requests.Session:
        """A browser-like session logged in through the login form."""
        s = requests.Session()
        s.get(self.url + "/hub/login")
        xsrf = s.cookies.get("_xsrf", "")
        r = s.post(
            self.url + "/hub/login",
            data={"username": name, "password": password, "_xsrf": xsrf},
            allow_redirects=False,
        )
        assert r.status_code == 302, r.text
        return s
