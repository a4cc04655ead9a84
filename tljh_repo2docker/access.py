"""Who may see and start an environment: pure rules, shared by the spawner
(picker and REST API spawns), the service and launch links.

An environment's visibility is one string, stored in the database and in
the image label (so the catalogue can enforce it without the service):
``public``, ``private`` (its owner only) or ``groups:a,b`` (members of those
JupyterHub groups, and the owner). Admins see everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .validation import InvalidInput

PUBLIC = "public"
PRIVATE = "private"
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,254}")
MAX_GROUPS = 50


@dataclass(frozen=True)
class Viewer:
    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False


def parse(label: str | None) -> tuple[str, frozenset[str]]:
    """A visibility label -> (kind, groups). Anything unreadable is private."""
    if label in (None, "", PUBLIC):
        return (PUBLIC, frozenset())
    if label.startswith("groups:"):
        groups = frozenset(g for g in label[len("groups:") :].split(",") if _GROUP_RE.fullmatch(g))
        return ("groups", groups)
    return (PRIVATE, frozenset())


def can_see(owner: str, visibility: str, viewer: Viewer) -> bool:
    if viewer.admin or (owner and owner == viewer.name):
        return True
    kind, groups = parse(visibility)
    if kind == PUBLIC:
        return True
    if kind == "groups":
        return bool(groups & viewer.groups)
    return False


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
