"""Per-project folders: names, landing paths and what a seed may contain."""

from __future__ import annotations

import io
import tarfile

import pytest

from tljh_repo2docker import projects


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
