"""Per-project folders: a launch-link server opens in ``~/<project>``, seeded
once with the files the image has in its home (where repo2docker puts the
repository), and never overwritten afterwards (the GESIS model).

Pure parts (names, landing paths, which archive members to keep) are apart
from the functions that talk to Docker and the file system.

The user's running servers can change anything in their home at any moment
(a folder swapped for a symlink, between two system calls). So root never
works on a path inside a home: a seed is made and given to the user in a
root-only folder next to the homes (same file system), then moved into the
home with one ``renameat2(RENAME_NOREPLACE)`` that neither follows links nor
replaces anything; and while Docker mounts a project folder, the folder is
parked in that root-only folder, where no user can swap it (``pinned_folder``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import stat
import tarfile
import tempfile

from . import validation

PROJECT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Landing paths whose next part is a path inside the server's root folder.
_PATH_PREFIXES = ("lab/tree/", "tree/", "notebooks/", "voila/render/", "doc/tree/")


# Python's own checks on top of ours, where this Python has them (3.11.4+)
_SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


# Root-only folder in the homes directory (no home name starts with '.').
STAGING_DIR = ".tljh-repo2docker"

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class ProjectError(RuntimeError):
    pass


def staging_root(homes_dir: str) -> str:
    return os.path.join(homes_dir, STAGING_DIR)


def prepare_staging_root(path: str, mode: int = 0o700) -> str:
    """Create ``path`` (root's, ``mode``) or check that it still is; return it."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ProjectError(f"{path} is not a folder of this hub's own: ask an administrator")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode, follow_symlinks=False)
    return path


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


def course_folder(environment: str) -> str:
    """The home folder a picker start copies an environment's files into:
    its name (lowercase letters, digits and single '.', '_' or '-' between
    them, so never hidden, never '..', never a path)."""
    return validation.environment_name(environment)


def course_landing(default_url: str, folder: str) -> str | None:
    """Where a picker start opens so that the course folder shows: the hub's
    default app, in that folder. None for an app with no folder view of its
    own (an admin's ``/rstudio``, ``/voila``): its default URL stays."""
    app = (default_url or "/lab").rstrip("/") or "/lab"
    if app == "/lab":
        return f"/lab/tree/{folder}"
    if app == "/tree":  # Notebook 7 and the classic notebook
        return f"/tree/{folder}"
    return None  # another app, or a page the admin chose to open: kept


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


def seed_project(
    client,
    image: str,
    home_in_image: str,
    target: str,
    uid: int,
    gid: int,
    staging_root: str | None = None,
    skip_empty: bool = False,
):
    """Copy ``home_in_image`` of ``image`` into ``target`` (which must not exist).

    Runs in a thread (docker-py is blocking). The copy is made, chowned and
    chmodded in a fresh folder inside ``staging_root`` (root's, 0700, on the
    homes' file system; default: ``<homes_dir>/.tljh-repo2docker``), where no
    user can reach it, then moved to ``target`` at once. An interrupted seed
    leaves nothing half-made in the home; an existing ``target`` (folder,
    file or link) is never touched, followed or replaced. With ``skip_empty``
    an image with nothing to copy makes no folder. True if seeded.
    """
    if os.path.lexists(target):
        return False
    home = os.path.dirname(target)
    parent = prepare_staging_root(staging_root or os.path.join(os.path.dirname(home), STAGING_DIR))
    container = client.create_container(image=image, command=["true"])
    try:
        stream, _ = client.get_archive(container["Id"], home_in_image)
        with tempfile.TemporaryFile() as buf:
            for chunk in stream:
                buf.write(chunk)
            buf.seek(0)
            staging = tempfile.mkdtemp(prefix="seed-", dir=parent)
            try:
                with tarfile.open(fileobj=buf) as tar:
                    root = os.path.basename(home_in_image.rstrip("/"))
                    members = members_to_seed(tar.getmembers(), root)
                    if skip_empty and not members:
                        return False
                    for member in members:
                        tar.extract(member, staging, set_attrs=False, **_SAFE_EXTRACT)
                        path = os.path.join(staging, member.name)
                        # the owner may read and write; execute bits as in the image
                        os.chmod(path, (member.mode & 0o755) | (0o700 if member.isdir() else 0o600))
                # given to the user last, deepest first: root never works
                # inside a folder that is already the user's
                for dirpath, dirnames, filenames in os.walk(staging, topdown=False):
                    for name in filenames + dirnames:
                        os.lchown(os.path.join(dirpath, name), uid, gid)
                os.lchown(staging, uid, gid)
                if not move_into(staging, home, os.path.basename(target)):
                    return False  # created meanwhile: keep what is there
                staging = None
            finally:
                if staging is not None:
                    _remove_tree(staging)
    finally:
        client.remove_container(container["Id"], force=True)
    return True


def _rename(old_dir: int, old: str, new_dir: int, new: str) -> bool:
    """renameat2(RENAME_NOREPLACE); False if ``new`` exists. Neither name's
    last part is followed if it is a link (rename never follows them)."""
    if _libc.renameat2(old_dir, os.fsencode(old), new_dir, os.fsencode(new), _RENAME_NOREPLACE):
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err == errno.EXDEV:
            raise ProjectError("the home is on another file system than the homes directory")
        raise OSError(err, os.strerror(err), new)
    return True


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def move_into(source: str, directory: str, name: str) -> bool:
    """Rename ``source`` to ``directory/name``; False if that name exists.

    ``directory`` is opened without following a link, and the new name is
    made with RENAME_NOREPLACE: whatever a user put there meanwhile (a link,
    a folder) stays as it is and nothing is written through it.
    """
    fd = _open_dir(directory)
    try:
        return _rename(_AT_FDCWD, source, fd, name)
    finally:
        os.close(fd)


@contextlib.contextmanager
def pinned_folder(path: str, uid: int, mounts_root: str, traversable: bool = False):
    """A root-only path that is the folder ``path`` names now, for Docker.

    Docker resolves a bind mount's source path when the container starts; a
    user's running server could swap ``path`` for a link to another folder
    in between. So for that moment the folder itself is moved (a rename on
    the same file system, links not followed) into ``mounts_root`` (root's,
    0700), checked there (a folder, the user's) where no user can change it,
    and moved back when the block ends; the container keeps its mount. A
    folder left there by an interrupted start is given back first. If the
    user made something of the same name meanwhile, the folder comes back as
    ``<name>.restored-<random>``: never lost, never replacing anything.

    ``traversable`` (a swarm): the Docker engine of a worker resolves the
    path, and with NFS's ``root_squash`` it is nobody there. So ``mounts_root``
    is 0711 (entered by name, never listed) and the folder is parked one
    level deeper, in a fresh folder of 128 random bits (0711): found only by
    whoever was told its name.
    """
    home, name = os.path.split(path)
    root = prepare_staging_root(mounts_root, 0o711 if traversable else 0o700)
    label = f"parked-{os.path.basename(home)}-{name}"
    home_fd = _open_dir(home)
    holder = root
    try:
        for left in _parked_leftovers(root, label):
            _give_back(left, home_fd, name)
            if os.path.dirname(left) != root:
                _remove_holder(os.path.dirname(left))
        if traversable:
            holder = os.path.join(root, f"pin-{secrets.token_hex(16)}")
            os.mkdir(holder, 0o700)
            os.chmod(holder, 0o711)  # noqa: S103 (entered by name only: see above)
        parked = os.path.join(holder, label)
        if not _rename(home_fd, name, _AT_FDCWD, parked):
            raise ProjectError(f"{parked} is in the way: ask an administrator")
        try:
            info = os.lstat(parked)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                raise ProjectError(f"{name} is not a folder of this user's")
            yield parked
        finally:
            _give_back(parked, home_fd, name)
    finally:
        os.close(home_fd)
        if holder != root:
            _remove_holder(holder)


def _parked_leftovers(root: str, label: str) -> list[str]:
    """Folders parked under ``label`` by an interrupted start (either layout)."""
    found = [os.path.join(root, label)]
    found += [
        os.path.join(root, entry, label) for entry in os.listdir(root) if entry.startswith("pin-")
    ]
    return [path for path in found if os.path.lexists(path)]


def _remove_holder(path: str) -> None:
    try:
        os.rmdir(path)  # empty once the folder is given back; else kept, never lost
    except OSError:
        pass


def _give_back(parked: str, home_fd: int, name: str):
    if not _rename(_AT_FDCWD, parked, home_fd, name):
        while not _rename(_AT_FDCWD, parked, home_fd, f"{name}.restored-{secrets.token_hex(4)}"):
            pass


def _remove_tree(path: str):
    """Remove a staging folder this module made (never a user's folder)."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)
