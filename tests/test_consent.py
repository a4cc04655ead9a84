"""Launch consent rules and launch-made environments (pure; no Docker)."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest

from tljh_repo2docker import access, providers
from tljh_repo2docker.service import consent, launchenvs, operations, store


@pytest.mark.parametrize(
    "repo, entry, trusted",
    [
        ("https://github.com/my-org/course", "gh/my-org", True),
        ("https://github.com/my-org/course", "gh/my-org/", True),
        ("https://github.com/my-org/course", "gh/my-org/course", True),
        ("https://github.com/my-org/course.git", "gh/my-org/course", True),
        ("https://github.com/my-org-evil/course", "gh/my-org", False),
        ("https://github.com/my-org/course", "gh/other", False),
        ("https://github.com/my-org/course", "gl/my-org", False),
        ("https://gitlab.com/group/sub/project", "gl/group/sub", True),
        ("https://git.example.org/course/x", "https://git.example.org/course/", True),
        ("https://git.example.org/course/x", "git/https://git.example.org/course", True),
        ("https://git.example.org/courses/x", "https://git.example.org/course", False),
        ("https://git.example.org.evil.net/course/x", "https://git.example.org", False),
        ("https://git.example.org:8443/course/x", "https://git.example.org/course", False),
        ("http://git.example.org/course/x", "https://git.example.org/course", False),
        ("https://me@git.example.org/course/x", "https://git.example.org/course", False),
        ("https://git.example.org/course/../evil", "https://git.example.org/course", False),
        ("https://git.example.org/course/x", "https://git.example.org", True),
        ("https://doi.org/10.5281/zenodo.123", "zenodo/10.5281", True),
        ("https://github.com/my-org/course", "", False),
        ("https://github.com/my-org/course", "my-org", False),
    ],
)
def test_trusted_sources_match_whole_segments(repo, entry, trusted):
    assert consent.matches_source(repo, entry) is trusted


def test_no_trusted_source_by_default():
    spec = providers.parse("gh", "my-org/course/main")
    assert not consent.is_trusted(spec, [])
    assert consent.is_trusted(spec, ["gl/x", "gh/my-org"])


@pytest.mark.parametrize(
    "token, trusted, remembered, allowed",
    [
        (False, False, False, False),  # a link opened from anywhere: ask first
        (True, False, False, True),  # a Binder client with the user's own token
        (False, True, False, True),
        (False, False, True, True),
    ],
)
def test_decide(token, trusted, remembered, allowed):
    decision = consent.decide(token_authenticated=token, trusted=trusted, remembered=remembered)
    assert decision.allowed is allowed
    assert decision.reason


@pytest.mark.parametrize(
    "given, expected, ok",
    [
        ("abc", b"abc", True),
        ("abd", b"abc", False),
        ("", b"abc", False),
        (None, b"abc", False),
        ("abc", b"", False),
        ("é", b"abc", False),
        ("abc", "abc", True),
    ],
)
def test_xsrf_matches(given, expected, ok):
    assert consent.xsrf_matches(given, expected) is ok


def test_reach_says_what_is_mounted():
    assert "~/proj" in consent.reach(False, "proj")
    assert "whole home" in consent.reach(True, "proj")


def test_key_hash_is_stable_and_short():
    assert consent.key_hash("gh:https://github.com/a/b") == consent.key_hash(
        "gh:https://github.com/a/b"
    )
    assert len(consent.key_hash("x" * 5000)) == 64


# --- who sees launch-made environments -------------------------------------------
student = access.Viewer("student")
launcher = access.Viewer("launcher")
admin = access.Viewer("root", admin=True)
via_launch = access.Viewer("student", launching=True)


@pytest.mark.parametrize(
    "viewer, sees, picker",
    [
        (student, False, False),  # another user naming it: as if it did not exist
        (launcher, True, False),  # its owner: theirs, but not in the picker
        (admin, True, False),  # admins see it, the picker stays clean
        (via_launch, True, False),  # a start the service asks for after a launch
    ],
)
def test_launch_made_environments_are_in_no_picker(viewer, sees, picker):
    assert access.can_see("launcher", access.LAUNCH, viewer) is sees
    assert access.in_picker("launcher", access.LAUNCH, viewer) is picker


def test_launching_opens_no_private_environment():
    assert not access.can_see("alice", "private", via_launch)


def test_promoted_launch_environment_is_in_pickers():
    assert access.in_picker("launcher", "public", student)


def test_users_cannot_set_the_launch_visibility():
    with pytest.raises(operations.InvalidInput):
        access.validate(access.LAUNCH)


@pytest.mark.parametrize(
    "requester, expected",
    [
        (SimpleNamespace(kind="service", name="environments"), True),
        (SimpleNamespace(kind="service", name="other"), False),
        (SimpleNamespace(kind="user", name="environments"), False),
        (None, False),
    ],
)
def test_started_by_service(requester, expected):
    handler = SimpleNamespace(current_user=requester)
    assert access.started_by_service(handler, "environments") is expected
    assert access.started_by_service(None, "environments") is False


# --- promotion (PATCH) -----------------------------------------------------------------
def launch_env(**kw):
    return store.Environment(
        name="gh-x-12345678",
        display_name="x",
        repo="https://github.com/o/x",
        ref="main",
        owner="launcher",
        launched_by="launcher",
        visibility=access.LAUNCH,
        **kw,
    )


@pytest.mark.parametrize(
    "data, visibility",
    [
        ({"promoted": True}, "public"),
        ({"promoted": True, "visibility": {"groups": ["physics"]}}, "groups:physics"),
        ({"promoted": False}, access.LAUNCH),
        ({"visibility": "public"}, "public"),  # an admin choosing who sees it promotes it
        ({"display_name": "y"}, None),
        ({"visibility": access.LAUNCH}, None),  # the edit form sends it back unchanged
    ],
)
def test_admins_promote(data, visibility):
    assert operations.launch_visibility(launch_env(), data, admin=True) == visibility


@pytest.mark.parametrize("data", [{"promoted": True}, {"visibility": "public"}])
def test_owners_do_not_promote(data):
    with pytest.raises(operations.Forbidden):
        operations.launch_visibility(launch_env(), data, admin=False)


def test_promoted_is_for_launch_made_environments_and_booleans():
    plain = store.Environment(name="x", repo="r", ref="main", owner="", visibility="public")
    with pytest.raises(operations.InvalidInput):
        operations.launch_visibility(plain, {"promoted": True}, admin=True)
    with pytest.raises(operations.InvalidInput):
        operations.launch_visibility(launch_env(), {"promoted": "yes"}, admin=True)


# --- launch-made environments: ownership and cleanup ----------------------------------
def test_a_launch_environment_belongs_to_whoever_caused_it():
    spec = providers.parse("gh", "o/x/main")
    env = launchenvs.new_environment(spec, "launcher")
    assert (env.owner, env.launched_by, env.visibility) == ("launcher", "launcher", "launch")
    assert env.name == spec.environment_name


def test_reusable_only_for_the_hubs_or_launch_made():
    spec = providers.parse("gh", "o/x/main")
    hubs = store.Environment(repo=spec.repo, owner="", launched_by="")
    launched = store.Environment(repo=spec.repo, owner="bob", launched_by="bob")
    users = store.Environment(repo=spec.repo, owner="bob", launched_by="")
    other = store.Environment(repo="https://github.com/o/y", owner="", launched_by="")
    assert launchenvs.reusable(hubs, spec)
    assert launchenvs.reusable(launched, spec)
    assert not launchenvs.reusable(users, spec)
    assert not launchenvs.reusable(other, spec)


def test_unbuilt_launch_environments_are_found(tmp_path):
    sessions = store.open_store(f"sqlite:///{tmp_path}/u.sqlite")
    now = store.utcnow()
    old = now - datetime.timedelta(hours=1)
    with sessions() as db:

        def env(name, launched_by="u", created_at=old, statuses=()):
            e = store.Environment(
                name=name,
                display_name=name,
                repo="https://h/" + name,
                ref="main",
                launched_by=launched_by,
                owner=launched_by,
                created_at=created_at,
            )
            db.add(e)
            db.flush()
            for status in statuses:
                db.add(store.Build(environment_id=e.id, ref="main", status=status))
            return e

        env("failed", statuses=[store.FAILED])
        env("cancelled-twice", statuses=[store.CANCELLED, store.INTERRUPTED])
        env("never-started")  # no build, older than the grace period
        env("just-made", created_at=now)  # its launch is still resolving the ref
        env("built", statuses=[store.FAILED, store.SUCCEEDED])
        env("building", statuses=[store.FAILED, store.RUNNING])
        env("admins", launched_by="", statuses=[store.FAILED])  # not launch-made
        db.commit()
        names = {e.name for e in launchenvs.unbuilt(db, now, launchenvs.NO_BUILD_GRACE)}
    assert names == {"failed", "cancelled-twice", "never-started"}
