"""The few JupyterHub REST API calls the service makes with its own token."""

from __future__ import annotations

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

    async def stop_server(self, user: str, server_name: str = "") -> int:
        path = f"/users/{quote(user, safe='')}/server"
        if server_name:
            path = f"/users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}"
        code, _ = await self.request("DELETE", path)
        return code

    # --- a user's own servers (the "My servers" page) -------------------------
    @staticmethod
    def server_path(user: str, server_name: str) -> str:
        """The hub API path of one server ('' is the default server)."""
        user_path = f"/users/{quote(user, safe='')}"
        if not server_name:
            return user_path + "/server"
        return f"{user_path}/servers/{quote(server_name, safe='')}"

    async def user_servers(self, user: str) -> dict[str, dict]:
        """All servers of ``user`` by name, stopped ones included (they keep
        their last ``user_options``). RuntimeError when the hub says no."""
        code, model = await self.request(
            "GET", f"/users/{quote(user, safe='')}?include_stopped_servers=1"
        )
        if code != 200 or not isinstance(model, dict):
            message = (model or {}).get("message") if isinstance(model, dict) else None
            raise RuntimeError(message or f"the hub answered {code}")
        return model.get("servers") or {}

    async def request_start(self, user: str, server_name: str) -> tuple[int, dict | None]:
        """Ask the hub to start a server again with its last ``user_options``
        (no body: JupyterHub reuses the stored ones). Does not wait."""
        return await self.request("POST", self.server_path(user, server_name))

    async def request_stop(
        self, user: str, server_name: str, remove: bool = False
    ) -> tuple[int, dict | None]:
        """Ask the hub to stop a server; ``remove`` also deletes a named
        server from the hub (after it stopped). Does not wait."""
        body = {"remove": True} if remove else None
        return await self.request("DELETE", self.server_path(user, server_name), body)
