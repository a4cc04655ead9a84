"""Who sees which environment: pure rules."""

from __future__ import annotations

import pytest

from tljh_repo2docker import access
from tljh_repo2docker.validation import InvalidInput

alice = access.Viewer("alice", frozenset({"physics"}))
bob = access.Viewer("bob", frozenset({"chemistry"}))
admin = access.Viewer("root", admin=True)


@pytest.mark.parametrize(
    "owner, visibility, viewer, seen",
    [
        ("", "public", bob, True),
        ("", "", bob, True),  # images labelled before visibility existed
        ("alice", "private", alice, True),
        ("alice", "private", bob, False),
        ("alice", "private", admin, True),
        ("alice", "groups:physics", bob, False),
        ("alice", "groups:chemistry,physics", bob, True),
        ("carol", "groups:physics", alice, True),
        ("alice", "something-else", bob, False),  # unreadable: private
        ("alice", "groups:", bob, False),
        ("", "private", bob, False),
    ],
)
def test_can_see(owner, visibility, viewer, seen):
    assert access.can_see(owner, visibility, viewer) is seen


@pytest.mark.parametrize(
    "value, label",
    [
        ("public", "public"),
        ("private", "private"),
        ({"groups": ["b", "a", "a"]}, "groups:a,b"),
        ("groups: physics , chem", "groups:chem,physics"),
    ],
)
def test_validate(value, label):
    assert access.validate(value) == label


@pytest.mark.parametrize(
    "value",
    [None, "", "everyone", {"groups": []}, {"groups": ["a,b"]}, {"groups": ["<x>"]},
     {"groups": "a"}, {"groups": ["a"], "x": 1}, {"groups": ["g"] * 51}, ["public"]],
)  # fmt: skip
def test_validate_refuses(value):
    with pytest.raises(InvalidInput):
        access.validate(value)
