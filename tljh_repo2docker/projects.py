"""Per-project folders: a launch-link server opens in ``~/<project>``, seeded
once with the files the image has in its home (where repo2docker puts the
repository), and never overwritten afterwards (the GESIS model).

Pure parts (names, landing paths, which archive members to keep) are apart
from the one function that talks to Docker and the file system.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile

PROJECT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Landing paths whose next part is a path inside the server's root folder.
_PATH_PREFIXES = ("lab/tree/", "tree/", "notebooks/", "voila/render/", "doc/tree/")


# Python's own checks on top of ours, where this Python has them (3.11.4+)
_SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class ProjectError(RuntimeError):
    pass


def valid_project(name) -> str:
    if not isinstance(name, str) or not PROJECT_RE.fullmatch(name):
        raise ProjectError("'project' must be lowercase letters, digits and '-'")
    return name


def landing_path(path: str, project: str) -> str:
    """A Binder landing path (relative to the repository) inside the project folder."""
    if not path:
        return f"lab/tree/{project}"
    for prefix in _PATH_PREFIXES:
        if path.startswith(prefix):
            return f"{prefix}{project}/{path[len(prefix) :]}"
    return path  # e.g. "lab" or a server extension's own URL


def members_to_seed(members: list[tarfile.TarInfo], root: str) -> list[tarfile.TarInfo]:
    """The archive of the image's home, re-rooted: ``root/x`` -> ``x``.

    Hidden top-level entries (the image user's dot files and caches) stay
    behind; links and special files are left out, so nothing in the seed
    can point outside the project folder.
    """
    keep = []
    for member in members:
        name = member.name.lstrip("./")
        if name == root or not name.startswith(root + "/"):
            continue
        rel = name[len(root) + 1 :]
        if not rel or rel.split("/")[0].startswith(".") or ".." in rel.split("/"):
            continue
        if not (member.isfile() or member.isdir()):
            continue
        member.name = rel
        keep.append(member)
    return keep


def seed_project(client, image: str, home_in_image: str, target: str, uid: int, gid: int):
    """Copy ``home_in_image`` of ``image`` into ``target`` (which must not exist).

    Runs in a thread (docker-py is blocking). The copy lands in a temporary
    folder next to ``target`` and is renamed at the end, so an interrupted
    seed leaves nothing half-made and an existing folder is never touched.
    """
    if os.path.lexists(target):
        return False
    container = client.create_container(image=image, command=["true"])
    try:
        stream, _ = client.get_archive(container["Id"], home_in_image)
        with tempfile.TemporaryFile() as buf:
            for chunk in stream:
                buf.write(chunk)
            buf.seek(0)
            parent = os.path.dirname(target)
            staging = tempfile.mkdtemp(prefix=".seeding-", dir=parent)
            try:
                os.chown(staging, uid, gid)
                with tarfile.open(fileobj=buf) as tar:
                    root = os.path.basename(home_in_image.rstrip("/"))
                    for member in members_to_seed(tar.getmembers(), root):
                        tar.extract(member, staging, set_attrs=False, **_SAFE_EXTRACT)
                        path = os.path.join(staging, member.name)
                        os.lchown(path, uid, gid)
                        # the owner may read and write; execute bits as in the image
                        os.chmod(path, (member.mode & 0o755) | (0o700 if member.isdir() else 0o600))
                for dirpath, _dirs, _files in os.walk(staging):  # parents tar made
                    os.lchown(dirpath, uid, gid)
                if os.path.lexists(target):  # created meanwhile: keep what is there
                    return False
                os.rename(staging, target)
                staging = None
            finally:
                if staging is not None:
                    _remove_tree(staging)
    finally:
        client.remove_container(container["Id"], force=True)
    return True


def _remove_tree(path: str):
    """Remove a staging folder this module made (never a user's folder)."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)
