"""Security specification: a build sees only images its owner may start.

A user's Dockerfile build runs on the hub's own Docker engine. Before
repo2docker runs, the hub reads the commit's Dockerfiles (``Dockerfile``,
``binder/Dockerfile``, ``.binder/Dockerfile``) through the same network rules
and checks every image they name (``FROM``, with ARG defaults and the
environment's build arguments substituted; ``COPY --from``;
``RUN --mount=from=``; a ``# syntax`` frontend). A user's build may use:

- stages of the same Dockerfile and ``scratch``;
- public images, pulled from their registry;
- environments the user may see (they could start them anyway);
- ``base_image`` and the admin's ``allowed_base_images``.

Anything else fails the build before it starts, with the reason: another
user's private environment (in the same words as a tag that does not exist),
any other local image, an image ID, a variable the hub cannot resolve.
Admins' builds are not checked. ``allow_local_repos`` (file:// on the host)
is for admins only: a user gets a 400 even when it is on.
"""

from __future__ import annotations

import secrets

import pytest

from ..dockerfixtures import SINGLEUSER_IMAGE, docker
from .gitserver import make_repo

pytestmark = pytest.mark.docker

SECRET = "alice-secret-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def alice_image(open_service, git_root, git_server):
    """Alice's private environment, whose image holds her secret file."""
    make_repo(
        git_root,
        "alice-notes",
        {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo {SECRET} > /tmp/alice-secret\n"},
    )
    build = open_service.build(
        "alice", name="alice-notes", repo=git_server.url("alice-notes"), visibility="private"
    )
    assert build["status"] == "succeeded", build  # an allowed base works for a user
    return build["image"]


def bob_builds(service, git_root, git_server, name, files, **body):
    make_repo(git_root, name, files)
    build = service.build("bob", name=name, repo=git_server.url(name), **body)
    log = service.log("bob", name, build["id"])
    build["images_on_engine"] = docker(
        "images", "-q", "--filter", f"label=tljh_repo2docker.environment={name}"
    ).split()
    # within Bob's quota of environments
    r = service("DELETE", f"/environments/{name}", "bob")
    assert r.status_code == 204, r.text
    return build, log


@pytest.mark.parametrize(
    "files, build_args",
    [
        ({"Dockerfile": "FROM {tag}\nRUN cat /tmp/alice-secret\n"}, None),
        ({"binder/Dockerfile": "FROM {tag}\nRUN cat /tmp/alice-secret\n"}, None),
        ({".binder/Dockerfile": "FROM {tag}\nRUN cat /tmp/alice-secret\n"}, None),
        (
            {
                "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"
                "COPY --from={tag} /tmp/alice-secret /tmp/stolen\nRUN cat /tmp/stolen\n"
            },
            None,
        ),
        (
            {
                "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"
                "RUN --mount=type=bind,from={tag},source=/tmp,target=/m cat /m/alice-secret\n"
            },
            None,
        ),
        (
            {"Dockerfile": f"ARG BASE={SINGLEUSER_IMAGE}\nFROM $BASE\nRUN cat /tmp/alice-secret\n"},
            {"BASE": "{tag}"},
        ),
        ({"Dockerfile": "FROM {tag} AS a\nFROM a\nRUN cat /tmp/alice-secret\n"}, None),
    ],
    ids=["from", "binder", "dot-binder", "copy-from", "run-mount", "build-arg", "via-stage"],
)
def test_another_users_private_environment_cannot_be_a_base(
    open_service, open_hub, git_root, git_server, alice_image, files, build_args
):
    name = "bob-" + secrets.token_hex(4)
    files = {path: text.replace("{tag}", alice_image) for path, text in files.items()}
    body = (
        {"build_args": {k: v.replace("{tag}", alice_image) for k, v in build_args.items()}}
        if build_args
        else {}
    )
    build, log = bob_builds(open_service, git_root, git_server, name, files, **body)
    assert build["status"] == "failed"
    assert build["error"].startswith("Refused: ")
    assert "not an environment you can use as a base" in build["error"]
    assert SECRET not in log and SECRET not in build["error"]
    assert "Checking the images" in log and "content provider" not in log  # r2d never ran
    assert build["image"] is None and build["images_on_engine"] == []


def test_a_missing_tag_and_a_private_one_read_the_same(
    open_service, git_root, git_server, alice_image
):
    missing = alice_image.rsplit(":", 1)[0] + ":000000000000"
    private, _ = bob_builds(
        open_service, git_root, git_server, "bob-private", {"Dockerfile": f"FROM {alice_image}\n"}
    )
    absent, _ = bob_builds(
        open_service, git_root, git_server, "bob-absent", {"Dockerfile": f"FROM {missing}\n"}
    )
    assert private["error"].replace(alice_image, "X") == absent["error"].replace(missing, "X")


def test_without_the_check_the_secret_leaks(open_service, git_root, git_server, alice_image):
    """What the refusal prevents: an admin's build (not checked) of the same
    Dockerfile prints Alice's file into the build log."""
    make_repo(
        git_root,
        "admin-from-alice",
        {"Dockerfile": f"FROM {alice_image}\nRUN cat /tmp/alice-secret\n"},
    )
    build = open_service.build(
        "admin", name="admin-from-alice", repo=git_server.url("admin-from-alice")
    )
    assert build["status"] == "succeeded", build
    log = open_service.log("admin", "admin-from-alice", build["id"])
    assert SECRET in log
    assert "content provider" in log  # what the refused builds' logs never show


def test_an_environment_shared_with_everyone_may_be_extended(
    open_service, git_root, git_server, alice_image
):
    r = open_service("PATCH", "/environments/alice-notes", "alice", json={"visibility": "public"})
    assert r.status_code == 200, r.text
    try:
        build, log = bob_builds(
            open_service,
            git_root,
            git_server,
            "bob-extends",
            {"Dockerfile": f"FROM {alice_image}\nRUN test -f /tmp/alice-secret\n"},
        )
        assert build["status"] == "succeeded", (build, log)
    finally:
        r = open_service(
            "PATCH", "/environments/alice-notes", "alice", json={"visibility": "private"}
        )
        assert r.status_code == 200, r.text


def test_other_local_images_ids_and_unresolvable_names_are_refused(
    open_service, git_root, git_server
):
    local = f"tljh-sec-local-{secrets.token_hex(4)}:1"
    docker("tag", SINGLEUSER_IMAGE, local)
    image_id = docker("images", "-q", "--no-trunc", SINGLEUSER_IMAGE).split()[0]
    try:
        cases = {
            "bob-local": (f"FROM {local}\n", "allowed_base_images"),
            "bob-id": (f"FROM {image_id}\n", "by its ID"),
            "bob-var": ("FROM $NOT_SET\n", "cannot resolve"),
            "bob-syntax": (f"# syntax={local}\nFROM {SINGLEUSER_IMAGE}\n", "allowed_base_images"),
        }
        for name, (dockerfile, words) in cases.items():
            build, _ = bob_builds(
                open_service, git_root, git_server, name, {"Dockerfile": dockerfile}
            )
            assert build["status"] == "failed", build
            assert words in build["error"], build["error"]
    finally:
        docker("rmi", local, check=False)


def test_a_symlinked_dockerfile_is_refused(open_service, git_root, git_server, alice_image):
    import os
    import subprocess

    work = git_root / "bob-link-work"
    work.mkdir()
    (work / "real").mkdir()
    (work / "real" / "Dockerfile").write_text(f"FROM {alice_image}\n")
    os.symlink("real", work / "binder")
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "PATH": os.environ["PATH"],
    }
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=work, check=True, env=env, capture_output=True)
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(work), str(git_root / "bob-link.git")],
        check=True,
        capture_output=True,
    )
    build = open_service.build("bob", name="bob-link", repo=git_server.url("bob-link"))
    assert open_service("DELETE", "/environments/bob-link", "bob").status_code == 204
    assert build["status"] == "failed"
    assert "symbolic link" in build["error"]


def test_users_cannot_build_local_repositories_even_when_enabled(open_service, git_root):
    # the hub has allow_local_repos on (the tests' admins use it)
    r = open_service(
        "POST",
        "/environments",
        "bob",
        json={"name": "bob-file", "repo": f"file://{git_root}/alice-notes.git"},
    )
    assert r.status_code == 400, r.text
    assert "local repositories" in r.json()["message"]
    r = open_service(
        "POST",
        "/environments",
        "admin",
        json={"name": "admin-file", "repo": f"file://{git_root}/alice-notes.git"},
    )
    assert r.status_code == 201, r.text
