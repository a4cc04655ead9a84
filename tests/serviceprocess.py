"""The environments service started alone (``python -m tljh_repo2docker.service``)
with the JUPYTERHUB_* environment a hub gives it, talking to a real hub for
authentication; and a Unix socket that forwards to the real Docker engine and
can be switched on and off (Docker "missing", then "back")."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from .hubprocess import free_port

DOCKER_SOCKET = "/var/run/docker.sock"
PREFIX = "/services/environments/"


class ServiceProcess:
    def __init__(self, hub, directory: Path, settings: dict, docker_host: str | None = None):
        self.hub = hub
        self.directory = directory
        self.settings = settings
        self.docker_host = docker_host
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.log_path = directory / "service.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        env.update(
            JUPYTERHUB_API_URL=self.hub.url + "/hub/api",
            JUPYTERHUB_API_TOKEN=self.hub.token,
            JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{self.port}",
            JUPYTERHUB_SERVICE_PREFIX=PREFIX,
            JUPYTERHUB_SERVICE_NAME="environments",
            JUPYTERHUB_CLIENT_ID="service-environments-alone",
            JUPYTERHUB_OAUTH_CALLBACK_URL=PREFIX + "oauth_callback",
            JUPYTERHUB_BASE_URL="/",
            TLJH_INSTALL_PREFIX=str(self.directory),
            TLJH_R2D_SETTINGS=json.dumps(self.settings),
        )
        return env

    def start(self, *args: str, timeout: float = 30):
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tljh_repo2docker.service", *args],
            cwd=self.directory,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                requests.get(self.url + "health", timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"service did not answer:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """``kill -9``: no clean-up at all."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30):
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def get(self, path: str, token: str | None = None, **kwargs) -> requests.Response:
        return self.request("GET", path, token, **kwargs)

    def request(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def wait_build(self, token: str, name: str, build_id: int, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.get(f"api/v1/environments/{name}/builds/{build_id}", token)
            assert r.status_code == 200, r.text
            if r.json()["status"] not in ("queued", "running"):
                return r.json()
            time.sleep(0.2)
        raise AssertionError(f"build {build_id} of {name} did not end:\n{self.log_tail()}")


class DockerForwarder:
    """A Unix socket at ``path`` that forwards every connection to the real
    Docker socket while on: DOCKER_HOST=unix://<path> is a Docker that can
    be missing (no socket file) and come back, without touching dockerd."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.server: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.connections: list[socket.socket] = []

    @property
    def docker_host(self) -> str:
        return "unix://" + self.path

    def on(self):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        server.listen(64)
        self.server = server
        self.thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        self.thread.start()

    def off(self):
        """Like a stopped engine: no socket, and open connections closed."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.connections.clear()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _accept(self, server: socket.socket):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # switched off
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DOCKER_SOCKET)
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
