"""Image labels: what a built image carries so the catalogue can be rebuilt
from Docker alone. Pure functions: building the label dict and parsing it back.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

from . import validation

PREFIX = "tljh_repo2docker."
MANAGED = PREFIX + "managed"
HUB = PREFIX + "hub"
ENVIRONMENT = PREFIX + "environment"
DISPLAY_NAME = PREFIX + "display_name"
REPO = PREFIX + "repo"
REF = PREFIX + "ref"
COMMIT = PREFIX + "commit"
MEM_LIMIT = PREFIX + "mem_limit"
CPU_LIMIT = PREFIX + "cpu_limit"
BUILT_BY = PREFIX + "built_by"
BUILT_AT = PREFIX + "built_at"
OWNER = PREFIX + "owner"
VISIBILITY = PREFIX + "visibility"
# "false": picker starts leave the home as it is (no course folder)
COPY_FILES = PREFIX + "copy_files"
# on server containers
SERVER = PREFIX + "server"
USER = PREFIX + "user"
SERVER_NAME = PREFIX + "server_name"

_COMMIT_RE = re.compile(r"[0-9a-f]{7,64}")


@dataclass(frozen=True)
class ImageInfo:
    """One startable image as the catalogue lists it."""

    image: str  # a tag such as r2d-demo:0123456789ab
    image_id: str
    environment: str
    display_name: str
    repo: str
    ref: str
    commit: str
    mem_limit: int | None = None
    cpu_limit: float | None = None
    built_by: str = ""
    built_at: str = ""
    owner: str = ""
    visibility: str = "public"
    # picker starts copy the image's home files once into ~/<environment>
    copy_files: bool = True
    size: int = 0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def short_commit(self) -> str:
        return self.commit[:12]

    @property
    def order_key(self) -> tuple:
        """Newer builds sort higher: by the build time (to the microsecond
        since builds label it so; a cached rebuild takes less than a second),
        then the tag, so that the order is the same in every process."""
        return (built_at_key(self.built_at), self.image)


_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def built_at_key(value: str) -> datetime.datetime:
    """``built_at`` as a time to compare (older labels have whole seconds)."""
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return _EPOCH
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def make_labels(
    *,
    hub: str,
    environment: str,
    display_name: str,
    repo: str,
    ref: str,
    commit: str,
    mem_limit: int | None,
    cpu_limit: float | None,
    built_by: str,
    built_at: str,
    owner: str = "",
    visibility: str = "public",
    copy_files: bool = True,
) -> dict[str, str]:
    labels = {
        MANAGED: "true",
        HUB: hub,
        ENVIRONMENT: environment,
        DISPLAY_NAME: display_name,
        REPO: repo,
        REF: ref,
        COMMIT: commit,
        MEM_LIMIT: validation.format_bytes(mem_limit),
        CPU_LIMIT: "" if cpu_limit is None else f"{cpu_limit:g}",
        BUILT_BY: built_by,
        BUILT_AT: built_at,
        OWNER: owner,
        VISIBILITY: visibility,
        COPY_FILES: format_bool(copy_files),
    }
    return labels


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_image(summary: dict, hub: str) -> list[ImageInfo]:
    """Docker's image summary (GET /images/json item) -> catalogue entries.

    One image may carry several tags; each tag of ours is an entry. Returns []
    for images that are not ours, belong to another hub, or carry labels that
    fail validation (a hand-made image must not smuggle bad values into forms).
    """
    labels = summary.get("Labels") or {}
    if labels.get(MANAGED) != "true" or labels.get(HUB) != hub:
        return []
    try:
        name = validation.environment_name(labels.get(ENVIRONMENT, ""))
        commit = labels.get(COMMIT, "")
        if not _COMMIT_RE.fullmatch(commit):
            return []
        mem = validation.mem_limit(labels.get(MEM_LIMIT) or None)
        cpu = validation.cpu_limit(labels.get(CPU_LIMIT) or None)
        display = validation.display_name(labels.get(DISPLAY_NAME), default=name)
    except validation.InvalidInput:
        return []
    tags = [t for t in summary.get("RepoTags") or [] if t and t != "<none>:<none>"]
    return [
        ImageInfo(
            image=tag,
            image_id=summary.get("Id", ""),
            environment=name,
            display_name=display,
            repo=labels.get(REPO, ""),
            ref=labels.get(REF, ""),
            commit=commit,
            mem_limit=mem,
            cpu_limit=cpu,
            built_by=labels.get(BUILT_BY, ""),
            built_at=labels.get(BUILT_AT, ""),
            owner=labels.get(OWNER, ""),
            visibility=labels.get(VISIBILITY, "public") or "public",
            # images built before the setting existed copy too (the default)
            copy_files=labels.get(COPY_FILES, "true") != "false",
            size=int(summary.get("Size") or 0),
        )
        for tag in tags
    ]


def latest_per_environment(images: list[ImageInfo]) -> list[ImageInfo]:
    """Keep the newest build of each environment, sorted by display name."""
    newest: dict[str, ImageInfo] = {}
    for info in images:
        current = newest.get(info.environment)
        if current is None or info.order_key > current.order_key:
            newest[info.environment] = info
    return sorted(newest.values(), key=lambda i: (i.display_name.lower(), i.environment))


def image_tag(prefix: str, environment: str, commit: str) -> str:
    """The Docker tag of an environment's build at a commit."""
    return f"{prefix}{environment}:{commit[:12]}"
