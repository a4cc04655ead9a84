"""When a build-only request by the login cookie alone comes from this hub's
own page (fetchsite.same_origin_fetch). The headers are those browsers send."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders

from tljh_repo2docker.service.fetchsite import same_origin_fetch

HOST = "hub.example.org"
STREAM = "text/event-stream"
PAGE = f"https://{HOST}/hub/spawn"


def verdict(**headers):
    h = HTTPHeaders()
    for key, value in headers.items():
        h[key.replace("_", "-")] = value
    return same_origin_fetch(h, HOST)


# what fetch-event-source sends from /hub/spawn (Chromium, Firefox, Safari)
FETCH = {
    "Accept": STREAM,
    "Sec_Fetch_Site": "same-origin",
    "Sec_Fetch_Mode": "cors",
    "Sec_Fetch_Dest": "empty",
    "Referer": PAGE,
}


def test_the_hubs_own_fetch_is_allowed():
    assert verdict(**FETCH).allowed
    # EventSource and XHR say the same
    assert verdict(**{**FETCH, "Sec_Fetch_Mode": "same-origin"}).allowed
    assert verdict(**{**FETCH, "Accept": "text/event-stream, */*"}).allowed


@pytest.mark.parametrize(
    "change",
    [
        # a link or a redirect from another site, the address bar
        {"Sec_Fetch_Site": "cross-site", "Sec_Fetch_Mode": "navigate"},
        {"Sec_Fetch_Site": "same-site"},
        {"Sec_Fetch_Site": "none", "Sec_Fetch_Mode": "navigate"},
        # another site's script, even asking for an event stream
        {"Sec_Fetch_Site": "cross-site", "Referer": "https://evil.example/"},
        # a same-origin navigation (a link in a notebook) or an <img>
        {"Sec_Fetch_Mode": "navigate"},
        {"Sec_Fetch_Mode": "no-cors"},
        {"Sec_Fetch_Mode": ""},
        # not asking for an event stream (navigations, images, forms)
        {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
        {"Accept": "image/avif,image/webp,*/*"},
        {"Accept": ""},
    ],
)
def test_anything_else_is_refused(change):
    got = verdict(**{**FETCH, **change})
    assert not got.allowed
    assert got.reason


def test_without_accept_header_it_is_refused():
    headers = {k: v for k, v in FETCH.items() if k != "Accept"}
    assert not verdict(**headers).allowed


# --- browsers that send no Fetch Metadata (plain http to a public name) ----------
PLAIN = {"Accept": STREAM}


def test_without_fetch_metadata_the_origin_or_referer_decides():
    assert verdict(**PLAIN, Referer=f"http://{HOST}/hub/spawn").allowed
    assert verdict(**PLAIN, Origin=f"https://{HOST}").allowed
    # the Origin wins over the Referer
    assert not verdict(**PLAIN, Origin="https://evil.example", Referer=PAGE).allowed


@pytest.mark.parametrize(
    "headers",
    [
        {},  # neither: a no-referrer page of another site
        {"Referer": "https://evil.example/page"},
        {"Referer": f"https://{HOST}.evil.example/"},
        {"Referer": f"https://evil.example/?{HOST}"},
        {"Referer": f"https://user@{HOST}/"},
        {"Referer": f"javascript://{HOST}/"},
        {"Referer": "not a url"},
        {"Origin": "null"},  # a sandboxed frame, a data: URL
        {"Origin": "https://evil.example"},
        {"Origin": f"https://{HOST}:8443"},  # another port, another origin
    ],
)
def test_without_fetch_metadata_another_origin_is_refused(headers):
    assert not verdict(**PLAIN, **headers).allowed


def test_no_host_is_refused():
    h = HTTPHeaders({"Accept": STREAM, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
    assert not same_origin_fetch(h, "").allowed
    assert same_origin_fetch(h, HOST.upper()).allowed
