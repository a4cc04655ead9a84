"""The few JupyterHub REST API calls the service makes with its own token."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class HubClient:
    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.token = token

    async def request(self, method: str, path: str, body=None) -> tuple[int, dict | None]:
        req = HTTPRequest(
            self.api_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=30,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if e.response is None:
                raise
            resp = e.response
        data = json.loads(resp.body) if resp.body else None
        return resp.code, data

    async def server(self, user: str, server_name: str) -> dict | None:
        code, model = await self.request("GET", f"/users/{quote(user, safe='')}")
        if code != 200 or not model:
            return None
        return (model.get("servers") or {}).get(server_name)

    async def start_server(
        self, user: str, server_name: str, options: dict, timeout: float = 300
    ) -> dict:
        """Start (or find running) the named server; return its model once ready."""
        path = f"/users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}"
        current = await self.server(user, server_name)
        if current is None or not (current.get("ready") or current.get("pending")):
            code, body = await self.request("POST", path, options)
            if code not in (201, 202, 400):
                raise RuntimeError((body or {}).get("message") or f"the hub answered {code}")
            if code == 400 and "already" not in ((body or {}).get("message") or ""):
                raise RuntimeError((body or {}).get("message") or "the hub refused")
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            current = await self.server(user, server_name)
            if current is None:
                raise RuntimeError("the server failed to start; see the hub's home page")
            if current.get("ready"):
                return current
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the server did not start within {timeout:g} s")

    async def stop_server(self, user: str, server_name: str = "") -> int:
        path = f"/users/{quote(user, safe='')}/server"
        if server_name:
            path = f"/users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}"
        code, _ = await self.request("DELETE", path)
        return code
