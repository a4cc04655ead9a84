"""Who may see and start an environment: pure rules, shared by the spawner
(picker and REST API spawns), the service and launch links.

An environment's visibility is one string, stored in the database and in
the image label (so the catalogue can enforce it without the service):
``public``, ``private`` (its owner only) or ``groups:a,b`` (members of those
JupyterHub groups, and the owner). Admins see everything.

A launch link builds an environment labelled ``launch``: the user whose link
caused the build owns it (it counts toward their quota), and anyone may start
it *through a launch link* (the environments service asks the hub for that
start), but it is in nobody's picker and nobody else may start it by name
until an admin promotes it (gives it another visibility). Because the label
is on the image, the spawner enforces this when the service is down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .validation import InvalidInput

PUBLIC = "public"
PRIVATE = "private"
LAUNCH = "launch"
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,254}")
MAX_GROUPS = 50


@dataclass(frozen=True)
class Viewer:
    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False
    # the start was asked for by the environments service for a launch link
    # (after that user's consent), not by the user naming an environment
    launching: bool = False


def parse(label: str | None) -> tuple[str, frozenset[str]]:
    """A visibility label -> (kind, groups). Anything unreadable is private."""
    if label in (None, "", PUBLIC):
        return (PUBLIC, frozenset())
    if label == LAUNCH:
        return (LAUNCH, frozenset())
    if label.startswith("groups:"):
        groups = frozenset(g for g in label[len("groups:") :].split(",") if _GROUP_RE.fullmatch(g))
        return ("groups", groups)
    return (PRIVATE, frozenset())


def can_see(owner: str, visibility: str, viewer: Viewer) -> bool:
    """May ``viewer`` see (and start) this environment?"""
    if viewer.admin or (owner and owner == viewer.name):
        return True
    kind, groups = parse(visibility)
    if kind == PUBLIC:
        return True
    if kind == "groups":
        return bool(groups & viewer.groups)
    if kind == LAUNCH:
        return viewer.launching
    return False


def in_picker(owner: str, visibility: str, viewer: Viewer) -> bool:
    """Is this environment offered in ``viewer``'s spawn form? Launch-made
    environments are not, for anyone, until an admin promotes them."""
    if parse(visibility)[0] == LAUNCH:
        return False
    return can_see(owner, visibility, viewer)


def started_by_service(handler, service_name: str) -> bool:
    """Did the environments service itself ask the hub for this spawn?

    JupyterHub hands the requesting handler to the spawner; its current user
    is the service only for a request made with the service's own token,
    which users never hold. (A restart from the hub's home page is the
    user's request.)
    """
    requester = getattr(handler, "current_user", None) if handler is not None else None
    return getattr(requester, "kind", None) == "service" and (
        getattr(requester, "name", None) == service_name
    )


def validate(value) -> str:
    """API/form input -> a visibility label: "public", "private", or a list
    of group names (``{"groups": [...]}`` or ``"groups:a,b"``)."""
    if value in (PUBLIC, PRIVATE):
        return value
    groups = None
    if isinstance(value, dict) and set(value) == {"groups"}:
        groups = value["groups"]
    elif isinstance(value, str) and value.startswith("groups:"):
        groups = [g.strip() for g in value[len("groups:") :].split(",") if g.strip()]
    if not isinstance(groups, list) or not groups:
        raise InvalidInput("visibility", 'use "public", "private" or {"groups": ["group", ...]}')
    if len(groups) > MAX_GROUPS:
        raise InvalidInput("visibility", f"at most {MAX_GROUPS} groups")
    for group in groups:
        if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
            raise InvalidInput("visibility", f"{str(group)[:40]!r} is not a group name")
    return "groups:" + ",".join(sorted(set(groups)))
