"""Which images a user's build may start from.

A Dockerfile build runs on the hub's own Docker engine, so ``FROM <tag>``
can name any image on it, including another user's private environment,
whose files ``RUN cat`` then prints into the build log. Before repo2docker
runs, the Dockerfiles of the commit are read and every image they name is
checked. Allowed are: stages of the same Dockerfile, ``scratch``, public
registry images (not on this engine), environments the builder may see
(they could start them anyway), ``base_image`` and ``allowed_base_images``.
Refused are: other local images, names under the hub's image prefix that
the builder cannot see (with the same words whether or not they exist),
image IDs, and references whose variables cannot be resolved here.

Parsing and deciding are pure; fetching the Dockerfiles and asking Docker
about an image are thin I/O at the bottom.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from . import access, labels

# The files repo2docker's Dockerfile build pack reads (binder/ wins over
# .binder/, which wins over the top level: all are checked).
DOCKERFILE_PATHS = ("Dockerfile", "binder/Dockerfile", ".binder/Dockerfile")
MAX_DOCKERFILE_BYTES = 1024 * 1024

_ID_RE = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")
_VAR_RE = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


class Unresolvable(ValueError):
    pass


class ImageRefused(Exception):
    """A build that may not run; the message says which image and why."""


@dataclass(frozen=True)
class ImageRef:
    image: str  # after variable substitution
    instruction: str  # FROM, COPY --from, RUN --mount, syntax
    line: int
    stage_names: frozenset[str] = frozenset()  # stages defined before this line


# --- parsing (pure) -----------------------------------------------------------
def substitute(text: str, variables: dict[str, str]) -> str:
    """Docker's ``$X``, ``${X}``, ``${X:-d}``, ``${X:+a}``; Unresolvable if unset."""

    def one(match):
        name = match[1] or match[4]
        op, word = match[2], match[3]
        value = variables.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return substitute(word or "", variables)
            return value
        if op in (":+", "+"):
            return substitute(word or "", variables) if value else ""
        if value is None:
            raise Unresolvable(name)
        return value

    out = _VAR_RE.sub(one, text)
    if "$" in out:
        raise Unresolvable(out)
    return out


def logical_lines(text: str) -> tuple[list[tuple[int, str]], str | None]:
    """Dockerfile text -> ([(line number, instruction)], syntax directive or None)."""
    escape = "\\"
    syntax = None
    lines = text.splitlines()
    body_start = 0
    # parser directives: only at the very top, before any other line
    for n, line in enumerate(lines):
        match = re.match(r"^#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$", line)
        if not match:
            break
        key = match[1].lower()
        if key == "escape" and match[2] in ("\\", "`"):
            escape = match[2]
        elif key == "syntax":
            syntax = match[2]
        body_start = n + 1
    out, current, start = [], "", None
    for n, line in enumerate(lines[body_start:], body_start + 1):
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comments inside a continued instruction
        if start is None:
            start = n
        if line.rstrip().endswith(escape):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((start, current + line))
        current, start = "", None
    if current.strip():
        out.append((start, current))
    return out, syntax


def _flags(words: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    flags: dict[str, list[str]] = {}
    rest = list(words)
    while rest and rest[0].startswith("--"):
        key, _, value = rest.pop(0)[2:].partition("=")
        flags.setdefault(key.lower(), []).append(value)
    return flags, rest


def image_references(dockerfile: str, build_args: dict[str, str]) -> list[ImageRef]:
    """Every image a Dockerfile names, with ARG defaults and build args substituted.

    Unresolvable variables are kept as a reference holding the raw text and
    a ``$``, which ``decide`` refuses.
    """
    instructions, syntax = logical_lines(dockerfile)
    refs: list[ImageRef] = []
    if syntax:
        refs.append(ImageRef(syntax, "syntax", 1))
    global_args: dict[str, str] = {}
    stage_args: dict[str, str] = {}
    stages: list[str] = []
    seen_from = False

    def resolved(text: str, scope: dict[str, str]) -> str:
        try:
            return substitute(text, scope)
        except Unresolvable:
            return text if "$" in text else "$" + text

    for line_no, line in instructions:
        words = line.split()
        if not words:
            continue
        keyword = words[0].upper()
        if keyword == "ONBUILD" and len(words) > 1:
            # runs in images built FROM this one: check it as if here
            words = words[1:]
            keyword = words[0].upper()
        args = words[1:]
        if keyword == "ARG":
            for arg in args:
                name, sep, default = arg.partition("=")
                scope = stage_args if seen_from else global_args
                if name in build_args:
                    scope[name] = build_args[name]
                elif sep:
                    default = default.strip("\"'")
                    try:
                        scope[name] = substitute(default, {**global_args, **stage_args})
                    except Unresolvable:
                        pass
                elif seen_from and name in global_args:
                    scope[name] = global_args[name]  # re-declared global ARG
        elif keyword == "FROM":
            seen_from = True
            stage_args = {}
            flags, rest = _flags(args)
            if not rest:
                continue
            image = resolved(rest[0], global_args)
            refs.append(ImageRef(image, "FROM", line_no, frozenset(stages)))
            if len(rest) >= 3 and rest[1].upper() == "AS":
                stages.append(rest[2].lower())
            else:
                stages.append(str(len(stages)))
        elif keyword in ("COPY", "ADD"):
            flags, _ = _flags(args)
            for value in flags.get("from", []):
                image = resolved(value, {**global_args, **stage_args})
                refs.append(ImageRef(image, "COPY --from", line_no, frozenset(stages)))
        elif keyword == "RUN":
            flags, _ = _flags(args)
            for mount in flags.get("mount", []):
                for option in mount.split(","):
                    key, _, value = option.partition("=")
                    if key.strip().lower() == "from" and value:
                        image = resolved(value, {**global_args, **stage_args})
                        refs.append(ImageRef(image, "RUN --mount", line_no, frozenset(stages)))
    return refs


# --- deciding (pure) ----------------------------------------------------------
def normalise(image: str) -> str:
    """Docker Hub's long forms -> the short one (what ``docker images`` shows)."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if image.startswith(prefix):
            image = image[len(prefix) :]
            break
    if image.startswith("library/"):
        image = image[len("library/") :]
    return image


def matches(image: str, allowed: Iterable[str]) -> bool:
    """``image`` is an allowed reference, under an allowed prefix ('/' or ':'
    at the end), or a tag or digest of an allowed repository."""
    image = normalise(image)
    for entry in allowed:
        entry = normalise(entry.strip())
        if not entry:
            continue
        if image == entry or (entry.endswith(("/", ":")) and image.startswith(entry)):
            return True
        if image.startswith((entry + ":", entry + "@")) and ":" not in entry.rsplit("/", 1)[-1]:
            return True
    return False


@dataclass(frozen=True)
class Policy:
    hub_name: str
    image_prefix: str
    allowed: tuple[str, ...] = ()
    viewer: access.Viewer | None = None


def _is_stage(ref: ImageRef) -> bool:
    return ref.image.lower() in ref.stage_names


def needs_lookup(ref: ImageRef, policy: Policy) -> bool:
    """Whether ``decide`` needs to know the local image behind ``ref``."""
    return not (
        _is_stage(ref)
        or "$" in ref.image
        or _ID_RE.match(ref.image)
        or ref.image == "scratch"
        or matches(ref.image, policy.allowed)
    )


def decide(ref: ImageRef, policy: Policy, local_labels: dict | None) -> str | None:
    """Why the build may not use ``ref`` (None: it may).

    ``local_labels``: the labels of the image on this engine, or None when
    there is no such local image (it would be pulled from a registry).
    """
    where = f"line {ref.line} ({ref.instruction})"
    if _is_stage(ref) or ref.image == "scratch":
        return None
    if "$" in ref.image:
        return f"{where} names an image through a variable this hub cannot resolve"
    if _ID_RE.match(ref.image):
        return f"{where} names an image by its ID; name a public image instead"
    if matches(ref.image, policy.allowed):
        return None
    ours = local_labels is not None and local_labels.get(labels.HUB) == policy.hub_name
    under_prefix = normalise(ref.image).startswith(normalise(policy.image_prefix))
    if ours or under_prefix:
        visible = (
            ours
            and policy.viewer is not None
            and access.can_see(
                local_labels.get(labels.OWNER, ""),
                local_labels.get(labels.VISIBILITY, ""),
                policy.viewer,
            )
        )
        if visible:
            return None  # the builder could start this environment anyway
        # the same words for a private environment and for no environment at
        # all: a build must not tell which of another user's tags exist
        return f"{where}: {ref.image} is not an environment you can use as a base"
    if local_labels is not None:
        return (
            f"{where}: {ref.image} is a local image of this hub that is not allowed as a base "
            "image; ask an administrator to add it to allowed_base_images"
        )
    return None  # a public image, pulled from its registry


# --- I/O ----------------------------------------------------------------------
async def check(
    dockerfiles: dict[str, str],
    policy: Policy,
    build_args: dict[str, str],
    lookup: Callable[[str], Awaitable[dict | None]],
):
    """Raise ImageRefused naming the first image the build may not use."""
    for path, text in dockerfiles.items():
        for ref in image_references(text, build_args):
            local = await lookup(ref.image) if needs_lookup(ref, policy) else None
            reason = decide(ref, policy, local)
            if reason:
                raise ImageRefused(f"{path}, {reason}")


async def _git(args, cwd, env, timeout) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    return proc.returncode, out, err


class DockerfileUnreadable(Exception):
    """The commit's Dockerfiles could not be read; ``detail`` is for the log."""

    def __init__(self, detail: str):
        super().__init__("could not read the repository's Dockerfile")
        self.detail = detail


async def fetch_dockerfiles(
    repo: str, commit: str, ref: str, env: dict[str, str], timeout: float = 60
) -> dict[str, str]:
    """The Dockerfiles (path -> text) of ``commit``: one shallow fetch without
    file contents, then only these files. ``env`` carries the network pins."""
    tmp = tempfile.mkdtemp(prefix="r2d-dockerfile-")
    try:
        for args in (
            ["init", "-q"],
            ["config", "core.repositoryformatversion", "1"],
            ["config", "extensions.partialClone", "origin"],
            ["remote", "add", "origin", repo],
            ["config", "remote.origin.promisor", "true"],
            ["config", "remote.origin.partialclonefilter", "blob:none"],
        ):
            code, _, err = await _git(args, tmp, env, timeout)
            if code:
                raise DockerfileUnreadable(err.decode(errors="replace")[-300:])
        fetch = ["fetch", "-q", "--depth=1", "--filter=blob:none", "--no-tags", "origin"]
        code, _, err = await _git([*fetch, commit], tmp, env, timeout)
        if code and ref:
            # servers that refuse fetching a commit by hash: the ref, if unmoved
            code, _, err = await _git([*fetch, ref], tmp, env, timeout)
        if code:
            raise DockerfileUnreadable(err.decode(errors="replace")[-300:])
        code, head, err = await _git(["rev-parse", "FETCH_HEAD"], tmp, env, timeout)
        if code or head.decode().strip() != commit:
            raise DockerfileUnreadable(f"fetched {head.decode().strip()!r}, wanted {commit}")
        paths = ["binder", ".binder", *DOCKERFILE_PATHS]
        code, tree, err = await _git(["ls-tree", "-z", commit, "--", *paths], tmp, env, timeout)
        if code:
            raise DockerfileUnreadable(err.decode(errors="replace")[-300:])
        found = {}
        for entry in tree.decode(errors="replace").split("\0"):
            meta, _, path = entry.partition("\t")
            if not path:
                continue
            mode, kind, blob = meta.split()
            if mode == "120000":
                # repo2docker would follow the link on disk, to a file this check never saw
                raise ImageRefused(f"{path} is a symbolic link; make it a plain file or folder")
            if kind == "blob" and path in DOCKERFILE_PATHS:
                found[path] = blob
        out = {}
        for path, blob in found.items():
            code, size, _ = await _git(["cat-file", "-s", blob], tmp, env, timeout)
            if code == 0 and int(size or 0) > MAX_DOCKERFILE_BYTES:
                raise ImageRefused(f"{path} is larger than {MAX_DOCKERFILE_BYTES} bytes")
            code, text, err = await _git(["cat-file", "blob", blob], tmp, env, timeout)
            if code:
                raise DockerfileUnreadable(err.decode(errors="replace")[-300:])
            out[path] = text.decode(errors="replace")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
