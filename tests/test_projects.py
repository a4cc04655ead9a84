"""Per-project folders: names, landing paths and what a seed may contain."""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile

import pytest

from tljh_repo2docker import projects, validation


@pytest.mark.parametrize(
    "path, expected",
    [
        ("", "lab/tree/proj"),
        ("lab/tree/a/b.ipynb", "lab/tree/proj/a/b.ipynb"),
        ("tree/x.ipynb", "tree/proj/x.ipynb"),
        ("voila/render/app.ipynb", "voila/render/proj/app.ipynb"),
        ("lab", "lab"),
    ],
)
def test_landing_paths_are_inside_the_project(path, expected):
    assert projects.landing_path(path, "proj") == expected


@pytest.mark.parametrize("name", ["../x", "a/b", "", "A", "-a", "a-", "x" * 64, 3, None])
def test_project_names_are_plain(name):
    with pytest.raises(projects.ProjectError):
        projects.valid_project(name)


def archive(entries: dict) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in entries.items():
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = "jovyan/a.txt"
            else:
                info.size = len(kind)
            tar.addfile(info, io.BytesIO(kind.encode()) if info.isfile() else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf)


def test_seed_keeps_the_repository_and_drops_dotfiles_links_and_escapes():
    tar = archive(
        {
            "jovyan": "dir",
            "jovyan/a.txt": "hello",
            "jovyan/data": "dir",
            "jovyan/data/b.csv": "1,2",
            "jovyan/.bashrc": "alias",
            "jovyan/.cache": "dir",
            "jovyan/.cache/x": "y",
            "jovyan/data/.keep": "",
            "jovyan/evil": "link",
            "jovyan/hard": "hard",
            "jovyan/../../etc/cron.d/x": "boom",
            "/etc/passwd": "root",
            "other/file": "x",
        }
    )
    kept = [m.name for m in projects.members_to_seed(tar.getmembers(), "jovyan")]
    assert kept == ["a.txt", "data", "data/b.csv", "data/.keep"]


# --- seeding against a user's running server (needs root: it chowns) -------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="seeding chowns: needs root")


class FakeDocker:
    """What seed_project asks of docker-py: an archive of the image's home."""

    def __init__(self, entries: dict, while_streaming=None):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, text in entries.items():
                info = tarfile.TarInfo(name)
                if text is None:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                else:
                    info.size = len(text)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(text.encode()))
        self.data = buf.getvalue()
        self.while_streaming = while_streaming
        self.removed = []

    def create_container(self, image, command):
        return {"Id": "fake"}

    def get_archive(self, cid, path):
        def stream():
            if self.while_streaming:
                self.while_streaming()
            yield self.data

        return stream(), {}

    def remove_container(self, cid, force):
        self.removed.append(cid)


REPO = {"jovyan": None, "jovyan/a.txt": "A", "jovyan/sub": None, "jovyan/sub/b.txt": "B"}


def user_home(tmp_path):
    homes = tmp_path / "homes"
    home = homes / "jupyter-eve"
    home.mkdir(parents=True, mode=0o700)
    os.chmod(homes, 0o755)
    os.chown(home, 1000, 100)
    return homes, home


def writable_by(path: str, uid: int) -> bool:
    info = os.lstat(path)
    return info.st_uid == uid or bool(info.st_mode & stat.S_IWOTH)


@needs_root
def test_root_never_works_where_the_user_can_write(tmp_path, monkeypatch):
    """While root extracts, chowns and chmods the seed, no folder on the way
    to what it touches (below the homes directory) is the user's: a running
    server of the same user cannot swap a path for a link under it."""
    homes, home = user_home(tmp_path)
    touched = []
    real_lchown, real_chmod = os.lchown, os.chmod

    def check(path):
        parent = os.path.dirname(os.path.abspath(path))
        while parent.startswith(str(homes) + os.sep):
            assert not writable_by(parent, 1000), f"{parent} is the user's while root works in it"
            parent = os.path.dirname(parent)
        touched.append(path)

    def lchown(path, uid, gid):
        check(path)
        real_lchown(path, uid, gid)

    def chmod(path, mode, **kwargs):
        check(path)
        real_chmod(path, mode, **kwargs)

    monkeypatch.setattr(projects.os, "lchown", lchown)
    monkeypatch.setattr(projects.os, "chmod", chmod)
    target = str(home / "proj")
    assert projects.seed_project(FakeDocker(REPO), "img", "/home/jovyan", target, 1000, 100)
    assert touched
    assert open(home / "proj" / "sub" / "b.txt").read() == "B"
    for path in (home / "proj", home / "proj" / "a.txt", home / "proj" / "sub"):
        assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (1000, 100)
    staging = projects.staging_root(str(homes))
    assert os.lstat(staging).st_uid == 0 and stat.S_IMODE(os.lstat(staging).st_mode) == 0o700
    assert os.listdir(staging) == []  # nothing left behind


@needs_root
@pytest.mark.parametrize("what", ["link", "folder", "file"])
def test_a_name_taken_while_seeding_is_never_replaced_or_followed(tmp_path, what):
    """The user's server creates ``~/proj`` (a link to elsewhere, a folder or
    a file) while the seed is being made: it stays exactly as it is, nothing
    is written through the link, and the seed is dropped."""
    homes, home = user_home(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = home / "proj"

    def race():
        if what == "link":
            os.symlink(elsewhere, target)
        elif what == "folder":
            target.mkdir()
        else:
            target.write_text("mine")

    client = FakeDocker(REPO, while_streaming=race)
    assert not projects.seed_project(client, "img", "/home/jovyan", str(target), 1000, 100)
    assert os.listdir(elsewhere) == []
    if what == "link":
        assert os.readlink(target) == str(elsewhere)
    elif what == "folder":
        assert os.listdir(target) == []
    else:
        assert target.read_text() == "mine"
    assert os.listdir(projects.staging_root(str(homes))) == []
    assert client.removed == ["fake"]


@needs_root
def test_move_into_refuses_an_existing_name_and_a_linked_folder(tmp_path):
    homes, home = user_home(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (home / "taken").mkdir()
    assert not projects.move_into(str(source), str(home), "taken")
    os.symlink(home, tmp_path / "link-to-home")
    with pytest.raises(OSError):
        projects.move_into(str(source), str(tmp_path / "link-to-home"), "new")
    assert projects.move_into(str(source), str(home), "new")
    assert (home / "new").is_dir() and not source.exists()


@needs_root
@pytest.mark.parametrize("what", ["link", "user-owned"])
def test_a_staging_folder_that_is_not_roots_is_refused(tmp_path, what):
    homes, home = user_home(tmp_path)
    staging = projects.staging_root(str(homes))
    if what == "link":
        os.symlink(home, staging)
    else:
        os.mkdir(staging)
        os.chown(staging, 1000, 100)
    with pytest.raises(projects.ProjectError):
        projects.seed_project(FakeDocker(REPO), "img", "/home/jovyan", str(home / "p"), 1000, 100)
    assert not (home / "p").exists()


@needs_root
@pytest.mark.parametrize("what", ["link", "roots"])
def test_pinned_folder_refuses_links_and_other_owners_and_puts_them_back(tmp_path, what):
    homes, home = user_home(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    if what == "link":
        os.symlink(tmp_path / "elsewhere", home / "proj")
    else:
        (home / "proj").mkdir()
    staging = projects.staging_root(str(homes))
    with (
        pytest.raises(projects.ProjectError),
        projects.pinned_folder(str(home / "proj"), 1000, staging),
    ):
        pass
    assert os.path.islink(home / "proj") == (what == "link")
    assert os.path.lexists(home / "proj")
    assert os.listdir(staging) == []


@needs_root
def test_pinned_folder_survives_the_user_taking_its_name(tmp_path):
    """While the folder is parked, the user's server puts a link at its name:
    the link stays, the folder comes back next to it, nothing is lost."""
    homes, home = user_home(tmp_path)
    (home / "proj").mkdir()
    (home / "proj" / "work.txt").write_text("kept")
    os.chown(home / "proj", 1000, 100)
    staging = projects.staging_root(str(homes))
    with projects.pinned_folder(str(home / "proj"), 1000, staging) as source:
        assert os.path.dirname(source) == staging
        assert not os.path.lexists(home / "proj")
        os.symlink("/etc", home / "proj")
    assert os.readlink(home / "proj") == "/etc"
    (restored,) = [n for n in os.listdir(home) if n.startswith("proj.restored-")]
    assert (home / restored / "work.txt").read_text() == "kept"
    assert os.listdir(staging) == []


@needs_root
def test_pinned_folder_gives_back_what_an_interrupted_start_left(tmp_path):
    homes, home = user_home(tmp_path)
    staging = projects.prepare_staging_root(projects.staging_root(str(homes)))
    parked = os.path.join(staging, "parked-jupyter-eve-proj")
    os.mkdir(parked)
    os.chown(parked, 1000, 100)
    with projects.pinned_folder(str(home / "proj"), 1000, staging) as source:
        assert source == parked
    assert (home / "proj").is_dir()


@needs_root
def test_skip_empty_makes_no_folder_for_an_image_with_nothing_to_copy(tmp_path):
    homes, home = user_home(tmp_path)
    client = FakeDocker({"jovyan": None, "jovyan/.bashrc": "x", "jovyan/.cache": None})
    target = str(home / "course")
    assert (
        projects.seed_project(client, "img", "/home/jovyan", target, 1000, 100, skip_empty=True)
        is False
    )
    assert not os.path.lexists(target)
    assert client.removed == ["fake"]
    # nothing half-made left in the staging folder either
    assert os.listdir(homes / projects.STAGING_DIR) == []
    # without skip_empty (a launch's project folder): an empty folder
    assert projects.seed_project(client, "img", "/home/jovyan", target, 1000, 100) is True
    assert os.listdir(target) == []


@pytest.mark.parametrize(
    "default_url, expected",
    [
        ("", "/lab/tree/course"),
        ("/lab", "/lab/tree/course"),
        ("/lab/", "/lab/tree/course"),
        ("/tree", "/tree/course"),
        ("/tree/", "/tree/course"),
        # an admin's own app or page stays as it is
        ("/rstudio", None),
        ("/voila", None),
        ("/lab/tree/welcome.ipynb", None),
    ],
)
def test_course_landing_opens_the_folder_in_the_hubs_app(default_url, expected):
    assert projects.course_landing(default_url, "course") == expected


@pytest.mark.parametrize("name", ["course", "data-101", "py.2026_a"])
def test_course_folders_are_the_environment_name(name):
    assert projects.course_folder(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "..", "a/b", "A", "a..b", "x" * 64])
def test_course_folders_are_never_paths_or_hidden(name):
    with pytest.raises(validation.InvalidInput):
        projects.course_folder(name)


@needs_root
def test_a_traversable_pin_is_reached_by_name_only_and_leaves_nothing(tmp_path):
    """On a swarm a worker's engine (nobody, with NFS root_squash) resolves
    the parked path: every folder on the way is 0711, the last one has 128
    random bits in its name, and both are gone afterwards."""
    homes, home = user_home(tmp_path)
    (home / "proj").mkdir()
    (home / "proj" / "work.txt").write_text("kept")
    os.chown(home / "proj", 1000, 100)
    staging = projects.staging_root(str(homes))
    with projects.pinned_folder(str(home / "proj"), 1000, staging, traversable=True) as source:
        holder = os.path.dirname(source)
        assert os.path.dirname(holder) == staging
        assert re.fullmatch(r"pin-[0-9a-f]{32}", os.path.basename(holder))
        assert stat.S_IMODE(os.stat(staging).st_mode) == 0o711
        assert stat.S_IMODE(os.stat(holder).st_mode) == 0o711
        assert os.stat(holder).st_uid == 0
        with open(os.path.join(source, "work.txt")) as f:
            assert f.read() == "kept"
    assert (home / "proj" / "work.txt").read_text() == "kept"
    assert os.listdir(staging) == []


@needs_root
def test_a_traversable_pin_gives_back_what_an_interrupted_start_left(tmp_path):
    homes, home = user_home(tmp_path)
    staging = projects.prepare_staging_root(projects.staging_root(str(homes)), 0o711)
    holder = os.path.join(staging, "pin-" + "0" * 32)
    os.mkdir(holder)
    parked = os.path.join(holder, "parked-jupyter-eve-proj")
    os.mkdir(parked)
    os.chown(parked, 1000, 100)
    with projects.pinned_folder(str(home / "proj"), 1000, staging, traversable=True) as source:
        assert source != parked and os.path.basename(source) == "parked-jupyter-eve-proj"
    assert (home / "proj").is_dir()
    assert os.listdir(staging) == []
