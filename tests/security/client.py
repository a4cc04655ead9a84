"""The environments service as a hostile user calls it: a token per person."""

from __future__ import annotations

import json
import time

import requests

FINAL = ("succeeded", "failed", "cancelled", "interrupted")


class Service:
    def __init__(self, hub):
        self.hub = hub
        self.tokens: dict[str, str] = {"admin": hub.user_token("admin")}

    def token(self, who: str) -> str:
        if who not in self.tokens:
            self.tokens[who] = self.hub.user_token(who)
        return self.tokens[who]

    def __call__(self, method: str, path: str, who: str, **kwargs) -> requests.Response:
        return self.hub.service_api(method, path, token=self.token(who), **kwargs)

    def create(self, who: str, **body) -> dict:
        r = self("POST", "/environments", who, json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def wait_build(self, who: str, name: str, build_id: int, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self("GET", f"/environments/{name}/builds/{build_id}", who)
            assert r.status_code == 200, r.text
            if r.json()["status"] in FINAL:
                return r.json()
            time.sleep(0.2)
        raise AssertionError(f"build {build_id} of {name} did not end in {timeout} s")

    def build(self, who: str, **body) -> dict:
        """Create an environment and wait for its first build."""
        env = self.create(who, **body)
        return self.wait_build(who, env["name"], env["latest_build"]["id"])

    def log(self, who: str, name: str, build_id: int) -> str:
        r = self("GET", f"/environments/{name}/builds/{build_id}/log", who)
        assert r.status_code == 200, r.text
        out = []
        for line in r.text.splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: ") :]).get("message", ""))
        return "".join(out)

    def launch_events(self, who: str, path: str, timeout: float = 120) -> list[dict]:
        r = requests.get(
            f"{self.hub.service_url}/build/{path}",
            headers={"Authorization": f"token {self.token(who)}"},
            stream=True,
            timeout=timeout,
        )
        assert r.status_code == 200, r.text
        out = []
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data: "):
                out.append(json.loads(line[len("data: ") :]))
                if out[-1]["phase"] in ("ready", "failed"):
                    break
        r.close()
        return out
