"""Launch consent: when a launch link may build and start without asking.

A launch link is a URL anyone can put on any site. Opening it while logged
in to the hub must not run the link author's code next to the user's files
unless the user said yes. The rules (pure, see ``tests/test_consent.py``):

- a request with a hub token (``Authorization: token``, a Binder client) is
  deliberate: the token is the user's own and no other site can send it;
- a cookie-authenticated request must carry the XSRF value that the service
  gave that user's browser (a page of another site cannot read it), *and*
- the repository is one the user confirmed once (remembered per user and
  repository key in the database), or a source an admin trusts
  (``trusted_launch_sources``).

One exception, for jupyterhub-fancy-profiles: a *build-only* request
(``build_only=true``) authenticated by the login cookie alone needs neither
the XSRF value nor consent when it is a script's event-stream request from
a page of the hub's own origin (``fetchsite.same_origin_fetch``). It starts
nothing: it builds an image only that user sees, which they then start with
the spawn form's own XSRF-checked POST. Links, forms and scripts of other
sites are refused, so they cannot spend the user's build quota either.

What launched code can reach by default is the project folder ``~/<project>``
only; ``whole_home`` (a choice on the confirmation page) opens the whole home.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import providers

# Provider shorthands an admin may write in trusted_launch_sources, and the
# repository URL prefix each stands for (what providers.parse produces).
_SHORTHANDS = {
    "gh/": "https://github.com/",
    "gl/": "https://gitlab.com/",
    "gist/": "https://gist.github.com/",
    "zenodo/": "https://doi.org/",
    "figshare/": "https://doi.org/",
    "dataverse/": "https://doi.org/",
    "hydroshare/": "https://www.hydroshare.org/resource/",
}

# Why a launch may go ahead without the confirmation page.
DELIBERATE = "hub-token"
TRUSTED = "trusted"
REMEMBERED = "remembered"


@dataclass(frozen=True)
class Decision:
    """Whether a launch may build and start now, and why (or why not)."""

    allowed: bool
    reason: str


def source_prefix(entry: str) -> str:
    """A trusted_launch_sources entry -> the repository URL prefix it means.

    ``gh/org`` means every repository of that GitHub owner; a URL
    (``https://git.example.org/course/``) means repositories under it;
    ``git/<URL>`` is the same as the URL.
    """
    entry = entry.strip()
    if entry.startswith("git/"):
        return entry[len("git/") :]
    for short, url in _SHORTHANDS.items():
        if entry.startswith(short):
            return url + entry[len(short) :]
    return entry


def _path_segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def matches_source(repo: str, entry: str) -> bool:
    """Is repository URL ``repo`` under the trusted source ``entry``?

    Compared as URLs, not as strings: the same scheme and exactly the same
    host (no user part), and whole path segments (``org`` does not cover
    ``org-evil``). Dot segments never match.
    """
    prefix = source_prefix(entry)
    if not prefix or "://" not in prefix or "://" not in repo:
        return False
    want, got = urlsplit(prefix), urlsplit(repo)
    if got.username or got.password or want.username or want.password:
        return False
    if (want.scheme.lower(), want.netloc.lower()) != (got.scheme.lower(), got.netloc.lower()):
        return False
    want_path, got_path = _path_segments(want.path), _path_segments(got.path)
    if any(s in (".", "..") for s in got_path) or got.query or got.fragment:
        return False
    if not want_path:
        return True  # a whole host
    # a repository URL may end in .git where the admin wrote none
    got_cmp = got_path[: len(want_path)]
    if len(got_cmp) == len(want_path) and got_cmp[-1] != want_path[-1]:
        got_cmp = got_cmp[:-1] + [got_cmp[-1].removesuffix(".git")]
    return got_cmp == want_path


def is_trusted(spec: providers.LaunchSpec, trusted_sources) -> bool:
    return any(matches_source(spec.repo, entry) for entry in trusted_sources or ())


def decide(*, token_authenticated: bool, trusted: bool, remembered: bool) -> Decision:
    """May a launch build and start without showing the confirmation page?

    The XSRF check of cookie requests comes before this (``xsrf_matches``).
    """
    if token_authenticated:
        # A Binder client with the user's own hub token: no other site can
        # send this header, so the request is what the user asked for.
        return Decision(True, DELIBERATE)
    if trusted:
        return Decision(True, TRUSTED)
    if remembered:
        return Decision(True, REMEMBERED)
    return Decision(False, "confirm this repository on its launch page first")


def xsrf_matches(given: str | None, expected: bytes | str) -> bool:
    """Constant-time comparison of the ``_xsrf`` value a request carries with
    the one tied to the user's cookie. Missing or empty never matches."""
    if not given:
        return False
    if isinstance(expected, str):
        expected = expected.encode()
    try:
        given_bytes = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    return bool(expected) and hmac.compare_digest(given_bytes, expected)


def key_hash(repo_key: str) -> str:
    """Index value for a repository key (keys can be 2 kB; indexes are not)."""
    return hashlib.sha256(repo_key.encode()).hexdigest()


def reach(whole_home: bool, project: str, user_name: str = "jovyan") -> str:
    """What launched code can reach, said for the confirmation page."""
    if whole_home:
        return f"your whole home folder (mounted at /home/{user_name})"
    return f"only the project folder ~/{project} of your home (mounted at /home/{user_name})"
