"""Persistent homes: one host directory per hub user, never deleted.

``home_dir_name`` and ``home_path`` are pure (TLJH's naming convention);
``prepare_home`` creates the directory with the right owner before the first
start and tells the spawner which uid may write it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass

from escapism import escape

# Names TLJH itself would use unchanged: they map to exactly TLJH's home.
_PLAIN_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ESCAPE_SAFE = "abcdefghijklmnopqrstuvwxyz0123456789"
# TLJH shortens system user names of 26 characters or more.
_MAX_LENGTH = 26


class HomeError(RuntimeError):
    """The home directory cannot be used; the message is for the user."""


def _tljh_shorten(name: str) -> str:
    if len(name) < _MAX_LENGTH:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f"{name[:_MAX_LENGTH]}-{digest[:5]}"


def home_dir_name(username: str) -> str:
    """The directory name of a hub user's home: TLJH's ``jupyter-<name>``.

    Names TLJH could use as they are (lowercase letters, digits, '.', '_',
    '-', without "--") give exactly TLJH's name, shortened as TLJH does
    (26 characters + '-' + 5 hex digits of sha256). Any other name is
    escaped and starts with "jupyter--", which no plain name can produce:
    two users never share a home, and no name leaves the homes directory.
    """
    if _PLAIN_RE.fullmatch(username) and "--" not in username:
        return _tljh_shorten(f"jupyter-{username}")
    escaped = escape(username, safe=_ESCAPE_SAFE, escape_char="-")
    return _tljh_shorten(f"jupyter--{escaped}")


def home_path(homes_dir: str, username: str) -> str:
    if not os.path.isabs(homes_dir):
        raise ValueError(f"homes_dir must be an absolute path, not {homes_dir!r}")
    return os.path.join(homes_dir, home_dir_name(username))


@dataclass(frozen=True)
class HomeOwner:
    uid: int
    gid: int


def prepare_home(path: str, uid: int, gid: int) -> HomeOwner:
    """Make sure ``path`` exists and is writable by the container's user.

    - missing: created (mode 0700) and given to uid:gid;
    - owned by root and empty (Docker made it for an earlier bind mount):
      given to uid:gid;
    - owned by someone else (e.g. a TLJH system user from before this plugin):
      left exactly as it is; the container runs as that owner instead.
    Returns the uid:gid of the home's owner (the container runs as that uid).
    Never removes anything; never chowns a home that has something in it.
    """
    if uid <= 0 or gid <= 0:
        # a home given to root would make the server run as root
        raise HomeError(
            f"new homes would belong to uid {uid} gid {gid}: servers never run as root; "
            "an administrator must set repo2docker.user_id and user_gid to other values"
        )
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            os.chown(path, uid, gid)
            return HomeOwner(uid, gid)
        except FileExistsError:
            pass
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise HomeError(
                f"{path} exists but is not a directory; ask an administrator to check it"
            )
        if info.st_uid == 0 and not os.listdir(path):
            os.chown(path, uid, gid)
            return HomeOwner(uid, gid)
        if info.st_uid == 0:
            raise HomeError(
                f"{path} belongs to root and is not empty: the server could not write "
                "to it. Ask an administrator to give it to the user's uid."
            )
        return HomeOwner(info.st_uid, info.st_gid)
    except OSError as e:
        raise HomeError(f"could not prepare the home directory {path}: {e.strerror}") from e
