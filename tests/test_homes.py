"""Unit tests for tljh_repo2docker.homes: home naming and preparing home directories.

The prepare_home tests chown, so they need root (the test container runs as root).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings

import pytest

from tljh_repo2docker import homes
from tljh_repo2docker.homes import HomeError, HomeOwner

# home_dir_name passes escapism a safe set containing its escape character, which makes
# escapism warn on every call (see test_home_dir_name_does_not_warn).
pytestmark = pytest.mark.filterwarnings("ignore:Escape character:RuntimeWarning")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="prepare_home chowns: needs root")

HOSTILE_NAMES = [
    "../..",
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a/../../b",
    "a\\b",
    "a\x00b",
    "\x00",
    "a\nb",
    "<script>alert(1)</script>",
    "$(id)",
    "~root",
    "-rf",
    "a b",
    "ünïcödé",
    "日本語",
    "a@example.org",
    "x" * 10_000,
    "/" * 40,
    "." * 40,
]


def tljh_home_dir_name(username):
    """TLJH's own naming: tljh.normalize.generate_system_username("jupyter-" + name)."""
    name = "jupyter-" + username
    if len(name) < 26:
        return name
    return f"{name[:26]}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:5]}"


# --- home_dir_name ----------------------------------------------------------


@pytest.mark.parametrize("username", ["alice", "bob2", "a", "a.b", "a_b", "x1.y_z", "a" * 17])
def test_home_dir_name_plain_names(username):
    assert homes.home_dir_name(username) == f"jupyter-{username}"


def test_home_dir_name_keeps_case_apart():
    # JupyterHub normally lowercases names; if an authenticator does not,
    # "Alice" and "alice" are different users and must not share a home.
    assert homes.home_dir_name("Alice") != homes.home_dir_name("alice")
    assert homes.home_dir_name("Alice").startswith("jupyter--")


@pytest.mark.parametrize(
    "username",
    [
        "alice",
        "a.b_c",
        "a" * 17,
        pytest.param("alice-smith"),
        *[pytest.param("a" * n) for n in (18, 25, 26, 40)],
    ],
)
def test_home_dir_name_matches_tljh(username):
    assert homes.home_dir_name(username) == tljh_home_dir_name(username)


def test_home_dir_name_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        homes.home_dir_name("alice")


@pytest.mark.parametrize("username", HOSTILE_NAMES)
def test_home_dir_name_cannot_escape_the_homes_dir(username):
    name = homes.home_dir_name(username)
    assert name.startswith("jupyter-")
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert name not in (".", "..")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    homes_dir = "/home"
    path = os.path.normpath(os.path.join(homes_dir, name))
    assert os.path.dirname(path) == homes_dir
    assert os.path.basename(path) == name


@pytest.mark.parametrize("username", HOSTILE_NAMES + ["alice", "a" * 26, "a" * 100])
def test_home_dir_name_is_bounded(username):
    # "jupyter-" + 26 + "-" + 5 hex at most, whatever the input length.
    assert len(homes.home_dir_name(username)) <= len("jupyter-") + 26 + 6


def test_home_dir_name_is_deterministic():
    for username in ["alice", "a" * 40, "a/b", "ünïcödé"]:
        assert homes.home_dir_name(username) == homes.home_dir_name(username)


def test_home_dir_name_no_collisions():
    usernames = [
        "alice",
        "a@b",
        "a-40b",
        "a/b",
        "a-2fb",
        "a.b",
        "a_b",
        "a-b",
        "a-2db",
        "ab",
        "a b",
        "a-20b",
    ]
    usernames = list(dict.fromkeys(usernames + HOSTILE_NAMES))  # distinct usernames
    names = [homes.home_dir_name(u) for u in usernames]
    assert len(set(names)) == len(names), dict(zip(usernames, names, strict=True))


@pytest.mark.parametrize("length", [26, 27, 40, 200])
def test_home_dir_name_long_names_are_shortened_with_hash(length):
    username = "a" * length
    name = homes.home_dir_name(username)
    assert re.fullmatch(r"jupyter-a+-[0-9a-f]{5}", name), name
    assert len(name) <= len("jupyter-") + 26 + 6


def test_home_dir_name_long_names_sharing_a_prefix_differ():
    base = "averyveryverylongusernameindeed"  # 31 characters
    names = {homes.home_dir_name(base + suffix) for suffix in ["", "1", "2", "x", "xy"]}
    assert len(names) == 5
    for name in names:
        assert name.startswith("jupyter-" + base[:18])


def test_home_dir_name_short_names_are_not_hashed():
    name = homes.home_dir_name("a" * 17)
    assert not re.search(r"-[0-9a-f]{5}$", name)


# --- home_path ----------------------------------------------------------------


def test_home_path():
    assert homes.home_path("/home", "alice") == "/home/jupyter-alice"
    assert homes.home_path("/srv/homes/", "alice") == "/srv/homes/jupyter-alice"


@pytest.mark.parametrize("homes_dir", ["", "home", "./home", "../home", "~/homes"])
def test_home_path_requires_absolute_dir(homes_dir):
    with pytest.raises(ValueError, match="absolute"):
        homes.home_path(homes_dir, "alice")


@pytest.mark.parametrize("username", HOSTILE_NAMES)
def test_home_path_stays_directly_under_homes_dir(username):
    path = homes.home_path("/srv/homes", username)
    assert os.path.dirname(os.path.normpath(path)) == "/srv/homes"
    assert os.path.normpath(path) == path


# --- prepare_home -------------------------------------------------------------


def snapshot(path):
    """Everything prepare_home must not change: type, owner, mode, entries and contents."""
    info = os.lstat(path)
    result = {"": (stat.S_IFMT(info.st_mode), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))}
    if stat.S_ISLNK(info.st_mode):
        result["->"] = os.readlink(path)
    elif stat.S_ISDIR(info.st_mode):
        for root, dirs, files in os.walk(path):
            for entry in dirs + files:
                full = os.path.join(root, entry)
                entry_info = os.lstat(full)
                content = None
                if stat.S_ISREG(entry_info.st_mode):
                    with open(full, "rb") as f:
                        content = f.read()
                result[os.path.relpath(full, path)] = (
                    entry_info.st_uid,
                    entry_info.st_gid,
                    stat.S_IMODE(entry_info.st_mode),
                    content,
                )
    else:
        with open(path, "rb") as f:
            result["content"] = f.read()
    return result


@needs_root
def test_prepare_home_creates_missing_home(tmp_path):
    path = tmp_path / "homes" / "jupyter-alice"  # the homes dir does not exist yet either
    owner = homes.prepare_home(str(path), 1000, 1001)
    assert owner == HomeOwner(1000, 1001)
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert (info.st_uid, info.st_gid) == (1000, 1001)
    assert os.listdir(path) == []
    parent = os.stat(path.parent)
    assert parent.st_uid == 0


@needs_root
def test_prepare_home_is_idempotent(tmp_path):
    path = tmp_path / "jupyter-alice"
    assert homes.prepare_home(str(path), 1000, 1000) == HomeOwner(1000, 1000)
    (path / "work.ipynb").write_text("{}")
    os.chown(path / "work.ipynb", 1000, 1000)
    before = snapshot(path)
    assert homes.prepare_home(str(path), 1000, 1000) == HomeOwner(1000, 1000)
    assert snapshot(path) == before


@needs_root
def test_prepare_home_chowns_empty_root_owned_dir(tmp_path):
    path = tmp_path / "jupyter-alice"
    path.mkdir(mode=0o755)
    os.chown(path, 0, 0)
    assert homes.prepare_home(str(path), 1000, 1001) == HomeOwner(1000, 1001)
    info = os.lstat(path)
    assert (info.st_uid, info.st_gid) == (1000, 1001)
    assert stat.S_ISDIR(info.st_mode)


@needs_root
def test_prepare_home_refuses_non_empty_root_owned_dir(tmp_path):
    path = tmp_path / "jupyter-alice"
    path.mkdir(mode=0o755)
    (path / "notes.txt").write_text("keep me")
    (path / ".hidden").mkdir()
    (path / ".hidden" / "data").write_bytes(b"\x00\x01")
    before = snapshot(path)
    with pytest.raises(HomeError) as info:
        homes.prepare_home(str(path), 1000, 1000)
    assert str(path) in str(info.value)
    assert "root" in str(info.value)
    assert snapshot(path) == before
    assert (path / "notes.txt").read_text() == "keep me"


@needs_root
def test_prepare_home_refuses_root_owned_dir_with_only_hidden_file(tmp_path):
    path = tmp_path / "jupyter-alice"
    path.mkdir()
    (path / ".bashrc").write_text("export A=1\n")
    before = snapshot(path)
    with pytest.raises(HomeError):
        homes.prepare_home(str(path), 1000, 1000)
    assert snapshot(path) == before


@needs_root
@pytest.mark.parametrize("with_contents", [True, False])
def test_prepare_home_leaves_other_owner_alone(tmp_path, with_contents):
    path = tmp_path / "jupyter-alice"
    path.mkdir()
    if with_contents:
        (path / "thesis.tex").write_text("\\begin{document}")
        os.chown(path / "thesis.tex", 2000, 2001)
        (path / "root-file").write_text("root's")
    os.chown(path, 2000, 2001)
    os.chmod(path, 0o750)
    before = snapshot(path)
    owner = homes.prepare_home(str(path), 1000, 1000)
    assert owner == HomeOwner(2000, 2001)
    assert snapshot(path) == before


@needs_root
def test_prepare_home_existing_dir_of_requested_uid(tmp_path):
    path = tmp_path / "jupyter-alice"
    path.mkdir()
    os.chown(path, 1000, 50)
    os.chmod(path, 0o755)
    before = snapshot(path)
    assert homes.prepare_home(str(path), 1000, 1000) == HomeOwner(1000, 50)
    assert snapshot(path) == before


@needs_root
def test_prepare_home_refuses_symlink_to_empty_root_dir(tmp_path):
    target = tmp_path / "etc-like"
    target.mkdir(mode=0o755)
    path = tmp_path / "jupyter-alice"
    path.symlink_to(target)
    link_before, target_before = snapshot(path), snapshot(target)
    with pytest.raises(HomeError, match="not a directory"):
        homes.prepare_home(str(path), 1000, 1000)
    assert snapshot(path) == link_before
    assert snapshot(target) == target_before  # not chowned through the link
    assert os.stat(target).st_uid == 0


@needs_root
def test_prepare_home_refuses_symlink_to_other_users_dir(tmp_path):
    target = tmp_path / "bob-home"
    target.mkdir()
    os.chown(target, 2000, 2000)
    path = tmp_path / "jupyter-alice"
    path.symlink_to(target)
    before = snapshot(target)
    with pytest.raises(HomeError):
        homes.prepare_home(str(path), 1000, 1000)
    assert snapshot(target) == before
    assert os.path.islink(path)


@needs_root
def test_prepare_home_refuses_dangling_symlink(tmp_path):
    target = tmp_path / "nowhere"
    path = tmp_path / "jupyter-alice"
    path.symlink_to(target)
    with pytest.raises(HomeError):
        homes.prepare_home(str(path), 1000, 1000)
    assert os.path.islink(path)
    assert os.readlink(path) == str(target)
    assert not os.path.lexists(target)


@needs_root
def test_prepare_home_refuses_file(tmp_path):
    path = tmp_path / "jupyter-alice"
    path.write_text("not a home")
    before = snapshot(path)
    with pytest.raises(HomeError, match="not a directory"):
        homes.prepare_home(str(path), 1000, 1000)
    assert snapshot(path) == before
    assert path.read_text() == "not a home"


@needs_root
def test_prepare_home_parent_is_a_file(tmp_path):
    parent = tmp_path / "homes"
    parent.write_text("oops")
    with pytest.raises(HomeError) as info:
        homes.prepare_home(str(parent / "jupyter-alice"), 1000, 1000)
    assert "jupyter-alice" in str(info.value)
    assert parent.read_text() == "oops"


@needs_root
def test_prepare_home_with_home_path_and_hostile_name(tmp_path):
    homes_dir = tmp_path / "homes"
    path = homes.home_path(str(homes_dir), "../../../etc")
    owner = homes.prepare_home(path, 1000, 1000)
    assert owner == HomeOwner(1000, 1000)
    assert os.listdir(homes_dir) == [os.path.basename(path)]
    assert sorted(os.listdir(tmp_path)) == ["homes"]


@pytest.mark.parametrize("uid, gid", [(0, 100), (1000, 0), (0, 0)])
def test_prepare_home_never_makes_a_home_for_root(tmp_path, uid, gid):
    # a home given to root would make its server run as root
    path = tmp_path / "jupyter-alice"
    with pytest.raises(HomeError, match="never run as root"):
        homes.prepare_home(str(path), uid, gid)
    assert not path.exists()
