"""Is a cookie-authenticated request a script's own fetch from this hub's pages?

jupyterhub-fancy-profiles (released versions) builds images from the hub's
spawn page with BinderHub's client in build-only mode and no token: the
browser's cookies authenticate it. The login cookie is also sent when another
site sends the browser here (a link, a redirect, an ``<img>``): such a request
must not start a build in the victim's name and quota. The rules (pure; see
``tests/test_fetch_site.py``):

- the request asks for an event stream (``Accept: text/event-stream``, what
  fetch-event-source and EventSource send). Links, images and forms never
  ask for that. (Another site's script can: the next rule is what stops it);
- with Fetch Metadata (every current browser, on https and localhost):
  ``Sec-Fetch-Site: same-origin`` and a script's request (``Sec-Fetch-Mode``
  ``cors`` or ``same-origin``), never a navigation or a no-cors load. Pages
  cannot set these headers;
- without it (plain http to a public name, older browsers): the ``Origin``,
  else the ``Referer``, is this host. A request with neither is refused.

Pages of the hub's origin are trusted as much as the hub trusts them: without
subdomains a same-origin script can read the hub's own XSRF cookie anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

EVENT_STREAM = "text/event-stream"
SCRIPT_MODES = frozenset({"cors", "same-origin"})


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def _host_of(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or parts.username or parts.password:
        return ""
    return parts.netloc.lower()


def _header(headers, name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else str(value).strip()


def same_origin_fetch(headers, host: str) -> Verdict:
    """``headers``: the request's (case-insensitive mapping); ``host``: its Host."""
    accept = (_header(headers, "Accept") or "").lower()
    if EVENT_STREAM not in accept:
        return Verdict(False, "not an event-stream request (a link, an image or a form)")
    host = (host or "").strip().lower()
    if not host:
        return Verdict(False, "no Host header")
    site = _header(headers, "Sec-Fetch-Site")
    if site is not None:
        if site.lower() != "same-origin":
            return Verdict(False, f"sent from another site (Sec-Fetch-Site: {site[:40]})")
        mode = (_header(headers, "Sec-Fetch-Mode") or "").lower()
        if mode not in SCRIPT_MODES:
            return Verdict(False, f"not a script's request (Sec-Fetch-Mode: {mode[:40]})")
        return Verdict(True, "same-origin fetch")
    # no Fetch Metadata: the page's origin, as the browser tells it
    origin = _header(headers, "Origin")
    if origin is not None:
        if _host_of(origin) != host:
            return Verdict(False, "sent from another origin")
        return Verdict(True, "same Origin")
    referer = _header(headers, "Referer")
    if not referer:
        return Verdict(False, "no Sec-Fetch-Site, Origin or Referer to tell where it comes from")
    if _host_of(referer) != host:
        return Verdict(False, "sent from another origin (Referer)")
    return Verdict(True, "same-origin Referer")
