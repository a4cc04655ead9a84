"""Which images a user's build may start from: Dockerfile parsing and the
decision (pure), without Docker."""

from __future__ import annotations

import asyncio

import pytest

from tljh_repo2docker import access, baseimages, labels
from tljh_repo2docker.baseimages import ImageRef, Policy, image_references

HUB = "hub1"
POLICY = Policy(
    hub_name=HUB,
    image_prefix="tljh-r2d/",
    allowed=("python:3.11", "registry.lan/base/", "corp/tools"),
    viewer=access.Viewer(name="bob"),
)


def images(text: str, build_args=None) -> list[str]:
    return [r.image for r in image_references(text, build_args or {})]


def env_labels(owner: str, visibility: str) -> dict:
    return {labels.HUB: HUB, labels.OWNER: owner, labels.VISIBILITY: visibility}


# --- parsing -------------------------------------------------------------------------
def test_from_with_flags_stage_names_and_case():
    text = "from --platform=linux/amd64 python:3.11 AS build\nFROM build\nFrom scratch\n"
    refs = image_references(text, {})
    assert [r.image for r in refs] == ["python:3.11", "build", "scratch"]
    assert refs[1].stage_names == frozenset({"build"})
    assert [r.line for r in refs] == [1, 2, 3]


def test_arg_defaults_and_build_args_substitute():
    text = 'ARG BASE=python\nARG TAG="3.11"\nFROM ${BASE}:$TAG\n'
    assert images(text) == ["python:3.11"]
    assert images(text, {"BASE": "tljh-r2d/alice-secret"}) == ["tljh-r2d/alice-secret:3.11"]


def test_defaults_forms():
    assert images("FROM ${X:-fallback}\n") == ["fallback"]
    assert images("ARG X=a\nFROM ${X:+other}\n") == ["other"]
    assert images("ARG X\nFROM x${X:+y}\n") == ["x"]


def test_unresolvable_variables_are_kept_as_unresolved():
    for text in ("FROM $NOPE\n", "ARG X\nFROM ${X}\n", "FROM a:${TAG}\n"):
        (image,) = images(text)
        assert "$" in image


def test_arg_after_from_does_not_reach_the_next_from():
    text = "FROM a\nARG X=tljh-r2d/x\nFROM $X\n"
    assert "$" in images(text)[1]


def test_copy_from_and_run_mount_from():
    text = (
        "FROM python:3.11 AS one\n"
        "COPY --from=tljh-r2d/alice:abc /home /stolen\n"
        "COPY --chown=1000 --from=one /a /b\n"
        "RUN --mount=type=bind,from=tljh-r2d/carol:1,source=/,target=/m cat /m/x\n"
        "RUN --mount=type=cache,target=/c true\n"
    )
    refs = image_references(text, {})
    assert [(r.instruction, r.image) for r in refs] == [
        ("FROM", "python:3.11"),
        ("COPY --from", "tljh-r2d/alice:abc"),
        ("COPY --from", "one"),
        ("RUN --mount", "tljh-r2d/carol:1"),
    ]


def test_continuation_lines_comments_and_escape_directive():
    text = "# escape=`\n# a comment\nFROM `\n  # inside\n  tljh-r2d/x:1\n"
    assert images(text) == ["tljh-r2d/x:1"]
    assert images("FROM \\\n tljh-r2d/y\n") == ["tljh-r2d/y"]


def test_syntax_directive_is_an_image_too():
    refs = image_references("# syntax=tljh-r2d/alice:1\nFROM scratch\n", {})
    assert refs[0].instruction == "syntax" and refs[0].image == "tljh-r2d/alice:1"


def test_onbuild_instructions_are_checked():
    assert images("FROM a\nONBUILD COPY --from=tljh-r2d/x /a /b\n")[1] == "tljh-r2d/x"


# --- normalising and allow lists -------------------------------------------------------
def test_normalise():
    assert baseimages.normalise("docker.io/library/python:3") == "python:3"
    assert baseimages.normalise("docker.io/tljh-r2d/x:1") == "tljh-r2d/x:1"
    assert baseimages.normalise("registry.lan/x") == "registry.lan/x"


@pytest.mark.parametrize(
    "image, allowed",
    [
        ("python:3.11", True),
        ("docker.io/library/python:3.11", True),
        ("python:3.12", False),
        ("registry.lan/base/py:1", True),
        ("registry.lan/basement/py:1", False),
        ("corp/tools", True),
        ("corp/tools:2", True),
        ("corp/tools@sha256:" + "a" * 64, True),
        ("corp/toolsx:2", False),
    ],
)
def test_matches(image, allowed):
    assert baseimages.matches(image, POLICY.allowed) is allowed


# --- deciding ------------------------------------------------------------------------
def ref(image, stages=()):
    return ImageRef(image, "FROM", 1, frozenset(stages))


def test_stages_scratch_allowed_and_public_images_pass():
    assert baseimages.decide(ref("build", ["build"]), POLICY, None) is None
    assert baseimages.decide(ref("scratch"), POLICY, None) is None
    assert baseimages.decide(ref("python:3.11"), POLICY, {}) is None  # allowed although local
    assert baseimages.decide(ref("ubuntu:24.04"), POLICY, None) is None  # pulled: public


def test_private_environment_of_another_user_is_refused():
    other = env_labels("alice", "private")
    reason = baseimages.decide(ref("tljh-r2d/alice-env:abc"), POLICY, other)
    assert "not an environment you can use" in reason
    # the same words as for a tag that does not exist: no existence oracle
    missing = baseimages.decide(ref("tljh-r2d/alice-env:abc"), POLICY, None)
    assert missing == reason


def test_a_private_environment_under_another_tag_is_still_refused():
    # the hub label decides, not the name
    reason = baseimages.decide(ref("innocent:1"), POLICY, env_labels("alice", "private"))
    assert reason and "alice" not in reason


def test_visible_environments_may_be_extended():
    for lab in (env_labels("bob", "private"), env_labels("", "public")):
        assert baseimages.decide(ref("tljh-r2d/x:1"), POLICY, lab) is None
    admin_policy = Policy(HUB, "tljh-r2d/", (), access.Viewer("root", admin=True))
    assert baseimages.decide(ref("tljh-r2d/x:1"), admin_policy, env_labels("a", "private")) is None


def test_other_local_images_are_refused_unless_allowed():
    reason = baseimages.decide(ref("admin-secret-build:1"), POLICY, {"some": "label"})
    assert "allowed_base_images" in reason
    # another hub's environment on the same engine is just a local image
    assert baseimages.decide(ref("x:1"), POLICY, {labels.HUB: "other-hub"})


@pytest.mark.parametrize("image", ["sha256:" + "0" * 64, "0123456789ab", "$UNRESOLVED", "a:$TAG"])
def test_ids_and_variables_are_refused(image):
    assert baseimages.decide(ref(image), POLICY, None)
    assert not baseimages.needs_lookup(ref(image), POLICY)


def test_check_asks_docker_only_when_needed_and_names_the_file():
    asked = []

    async def lookup(image):
        asked.append(image)
        return env_labels("alice", "private") if image.startswith("tljh-r2d/") else None

    files = {"binder/Dockerfile": "FROM python:3.11 AS a\nFROM a\nFROM ubuntu\nFROM tljh-r2d/s:1\n"}
    with pytest.raises(baseimages.ImageRefused) as info:
        asyncio.run(baseimages.check(files, POLICY, {}, lookup))
    assert str(info.value).startswith("binder/Dockerfile, line 4 (FROM)")
    assert asked == ["ubuntu", "tljh-r2d/s:1"]
    asyncio.run(baseimages.check({"Dockerfile": "FROM ubuntu\n"}, POLICY, {}, lookup))
