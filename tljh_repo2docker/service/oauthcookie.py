"""The service's login cookie, also under the Binder prefix (``/services/binder/``).

The hub routes ``/services/binder/`` to this same process (hubconfig), where
jupyterhub-fancy-profiles looks for BinderHub. A browser sends a cookie only
under its path, so the OAuth cookie set under ``/services/environments/``
never reaches ``/services/binder/``. After a login this module sets the same
signed cookie under the extra paths too. Both paths lead to this process only:
no other service sees it (a cookie under ``/services/`` would reach them all).
"""

from __future__ import annotations

import time
from http.cookies import Morsel

from jupyterhub.services.auth import HubOAuth
from jupyterhub.utils import get_browser_protocol
from tornado import httputil
from traitlets import List, Unicode

COOKIE_DAYS = 30  # what tornado's set_secure_cookie gives the main cookie


def _cookie_header(name: str, value: str, path: str, secure: bool, options: dict, expires) -> str:
    morsel = Morsel()
    morsel.set(name, value, value)
    morsel["path"] = path
    morsel["httponly"] = True
    if secure:
        morsel["secure"] = True
    morsel["expires"] = httputil.format_timestamp(expires)
    for key, val in options.items():
        key = key.lower().replace("_", "-")
        if key in ("samesite", "domain") and val:
            morsel[key] = val
    return morsel.OutputString()


class MultiPathHubOAuth(HubOAuth):
    """HubOAuth whose login cookie is set (and cleared) under more paths."""

    extra_cookie_paths = List(Unicode(), help="More URL paths that get the login cookie.")

    def _paths(self) -> list[str]:
        if self.cookie_host_prefix_enabled:
            return []  # a __Host- cookie is under / already
        return [p for p in self.extra_cookie_paths if p and p != self.cookie_path]

    def _secure(self, handler) -> bool:
        return get_browser_protocol(handler.request) == "https" or bool(
            self.cookie_options.get("secure")
        )

    def set_cookie(self, handler, access_token):
        super().set_cookie(handler, access_token)
        value = handler.create_signed_value(self.cookie_name, access_token).decode()
        expires = time.time() + COOKIE_DAYS * 86400
        for path in self._paths():
            # add_header, not set_cookie: tornado keeps one Set-Cookie per name
            secure = self._secure(handler)
            handler.add_header(
                "Set-Cookie",
                _cookie_header(self.cookie_name, value, path, secure, self.cookie_options, expires),
            )

    def clear_cookie(self, handler):
        super().clear_cookie(handler)
        for path in self._paths():
            handler.add_header(
                "Set-Cookie",
                _cookie_header(
                    self.cookie_name, "", path, self._secure(handler), self.cookie_options, 0
                ),
            )
