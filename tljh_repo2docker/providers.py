"""Binder-style launch specs (``/v2/<provider>/<spec>``): pure parsing.

A spec names a repository the way mybinder.org links do. Parsing turns it
into what repo2docker is given (a URL and a ref) and into the stable names
this hub uses for it: an environment name and a server name per repository.
Everything here is validated: specs arrive in URLs anyone can craft.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote, urlencode, urlsplit

from . import validation
from .validation import InvalidInput

MAX_SPEC_LENGTH = 2048
# JupyterHub 6 refuses server names longer than this ("Invalid server_name").
MAX_SERVER_NAME = 30
_GH_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_GH_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
_GL_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_DOI = re.compile(r"10\.[0-9]{4,9}/[A-Za-z0-9._;()/:-]{1,300}")
_GIST_ID = re.compile(r"[0-9a-f]{20,40}")
_SHA = re.compile(r"[0-9a-f]{40}")
_HYDROSHARE_ID = re.compile(r"[0-9a-f]{32}")
# the forms BinderHub accepts: an id, hs.<id>, its DOI, or the resource's page
_HYDROSHARE_FORMS = (
    re.compile(r"(?P<id>[0-9a-f]{32})"),
    re.compile(r"(?:10\.4211/)?hs\.(?P<id>[0-9a-f]{32})"),
    re.compile(r"https?://(?:www\.)?hydroshare\.org/resource/(?P<id>[0-9a-f]{32})(?:/.*)?"),
)
_SLUG_CLEAN = re.compile(r"[^a-z0-9]+")

GIT_PROVIDERS = ("gh", "gl", "git", "gist")
DOI_PROVIDERS = ("zenodo", "figshare", "dataverse")
PROVIDERS = GIT_PROVIDERS + DOI_PROVIDERS + ("hydroshare",)
# Old badges name these branches; BinderHub retries them as HEAD when they are gone.
DEFAULT_BRANCH_ALIASES = ("master", "main")


@dataclass(frozen=True)
class LaunchSpec:
    provider: str
    repo: str  # what repo2docker fetches
    ref: str  # a git ref; "" for archives (DOIs, HydroShare) that have none
    label: str  # short human name, e.g. "org/repo"

    @property
    def is_git(self) -> bool:
        return self.provider in GIT_PROVIDERS

    @property
    def key(self) -> str:
        """Identifies the repository (not the ref): same repo, same key."""
        return f"{self.provider}:{self.repo}"

    def _slug(self, max_length: int) -> str:
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:8]
        words = _SLUG_CLEAN.sub("-", self.label.lower()).strip("-") or self.provider
        room = max_length - len(self.provider) - len(digest) - 2
        return f"{self.provider}-{words[:room].strip('-')}-{digest}".replace("--", "-")

    @property
    def environment_name(self) -> str:
        """The environment a launch link builds: one per repository."""
        return self._slug(validation.MAX_NAME_LENGTH)

    @property
    def server_name(self) -> str:
        """The user's named server for this repository: stable across launches,
        and short enough for JupyterHub (30 characters)."""
        return self._slug(MAX_SERVER_NAME)

    def with_ref(self, ref: str) -> LaunchSpec:
        return LaunchSpec(self.provider, self.repo, validation.ref(ref), self.label)


def _split_ref(rest: str, what: str) -> tuple[str, str]:
    """BinderHub's rule for ``gl`` and ``git``: the first path segment is the
    escaped project or URL, everything after it (slashes too) is the ref."""
    head, sep, ref = rest.partition("/")
    if not sep or not head or not ref:
        raise InvalidInput("spec", f"{what} must end with /<ref> (a branch, tag or commit)")
    return head, validation.ref(unquote(ref))


def _doi(spec: str) -> str:
    doi = unquote(spec).strip("/")
    # BinderHub and repo2docker also take doi:10... and https://doi.org/10...
    for prefix in ("doi:", "https://doi.org/", "http://doi.org/", "https://dx.doi.org/"):
        if doi.lower().startswith(prefix):
            doi = doi[len(prefix) :]
            break
    if not _DOI.fullmatch(doi) or ".." in doi:
        raise InvalidInput("spec", "not a DOI (10.<registrant>/<suffix>)")
    return doi


def hydroshare_id(spec: str) -> str:
    value = unquote(spec).strip("/")
    for form in _HYDROSHARE_FORMS:
        match = form.fullmatch(value)
        if match:
            return match.group("id")
    raise InvalidInput("spec", "not a HydroShare resource (its 32-hex id, DOI or page URL)")


def parse(provider: str, spec: str, *, schemes=validation.DEFAULT_SCHEMES, allow_local=False):
    """``provider`` and the rest of a ``/v2/<provider>/<spec>`` path -> LaunchSpec.

    ``spec`` is the raw (still percent-escaped) path, as BinderHub reads it.
    """
    if provider not in PROVIDERS:
        raise InvalidInput("provider", f"unknown provider; use one of {', '.join(PROVIDERS)}")
    if not isinstance(spec, str) or len(spec) > MAX_SPEC_LENGTH:
        raise InvalidInput("spec", f"must be 1-{MAX_SPEC_LENGTH} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in spec):
        raise InvalidInput("spec", "must not contain control characters")
    spec = spec.rstrip("/")  # BinderHub strips a trailing slash; its link generator adds one
    if not spec:
        raise InvalidInput("spec", f"must be 1-{MAX_SPEC_LENGTH} characters")

    if provider == "gh":
        # gh/<owner>/<repo>/<ref>; the ref may contain slashes
        parts = spec.split("/", 2)
        if len(parts) != 3:
            raise InvalidInput("spec", "use gh/<owner>/<repo>/<ref> (e.g. .../HEAD)")
        owner, repo, ref = parts
        repo = repo.removesuffix(".git")
        if not _GH_OWNER.fullmatch(owner) or not _GH_REPO.fullmatch(repo) or repo in (".", ".."):
            raise InvalidInput("spec", "not a GitHub owner/repository name")
        return LaunchSpec(
            "gh",
            f"https://github.com/{owner}/{repo}",
            validation.ref(unquote(ref)),
            f"{owner}/{repo}",
        )

    if provider == "gist":
        # gist/<owner>/<gist id>[/<ref>]; no ref, HEAD, master and main mean the newest
        parts = spec.split("/")
        if len(parts) not in (2, 3):
            raise InvalidInput("spec", "use gist/<owner>/<gist id>[/<commit>]")
        owner, gist = parts[0], parts[1].lower()
        ref = parts[2] if len(parts) == 3 else ""
        if not _GH_OWNER.fullmatch(owner) or not _GIST_ID.fullmatch(gist):
            raise InvalidInput("spec", "not a GitHub owner/gist id")
        if ref in ("", "HEAD", *DEFAULT_BRANCH_ALIASES):
            ref = "HEAD"
        elif not _SHA.fullmatch(ref):
            raise InvalidInput("spec", "a gist's ref is HEAD or a full commit hash")
        return LaunchSpec("gist", f"https://gist.github.com/{owner}/{gist}.git", ref, gist)

    if provider == "gl":
        # gl/<url-escaped namespace/project>/<ref>
        quoted, ref = _split_ref(spec, "a GitLab spec")
        path = unquote(quoted).strip("/")
        segments = path.split("/")
        if len(segments) < 2 or not all(
            _GL_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments
        ):
            raise InvalidInput("spec", "not a GitLab group/project path")
        project = path.removesuffix(".git")
        return LaunchSpec("gl", f"https://gitlab.com/{project}", ref, project)

    if provider == "git":
        # git/<url-escaped repository URL>/<ref>
        quoted, ref = _split_ref(spec, "a git spec")
        url = validation.repo_url(unquote(quoted), schemes=schemes, allow_local=allow_local)
        label = url.rstrip("/").removesuffix(".git").rsplit("/", 2)
        return LaunchSpec("git", url, ref, "/".join(label[-2:]))

    if provider in DOI_PROVIDERS:
        doi = _doi(spec)
        return LaunchSpec(provider, f"https://doi.org/{doi}", "", doi)

    resource = hydroshare_id(spec)
    return LaunchSpec("hydroshare", f"https://www.hydroshare.org/resource/{resource}", "", resource)


MAX_PATH_LENGTH = 1024
_MAX_DECODINGS = 8


def _decodings(value: str):
    """``value`` and each further percent-decoding of it, until it stops
    changing: a path is checked in every form some later layer might read."""
    seen = value
    yield seen
    for _ in range(_MAX_DECODINGS):
        decoded = unquote(seen)
        if decoded == seen:
            return
        seen = decoded
        yield seen
    raise InvalidInput("urlpath", "encoded too many times")


def _check_inside(path: str):
    """Refuse what could lead a URL joined to the server's root elsewhere:
    parent segments, another host or scheme, backslashes, control characters."""
    for form in _decodings(path):
        if len(form) > MAX_PATH_LENGTH or any(ord(c) < 32 or c == "\x7f" for c in form):
            raise InvalidInput("urlpath", "too long or not text")
        where = form.split("?", 1)[0].split("#", 1)[0]
        segments = where.replace("\\", "/").split("/")
        if (
            "\\" in form
            or where.startswith("/")
            or "//" in where
            or any(s.strip() in ("..", ".") for s in segments)
            or ":" in segments[0]
        ):
            raise InvalidInput("urlpath", "must be a path inside your server")


def launch_path(urlpath: str | None, labpath: str | None, filepath: str | None) -> str:
    """Where to land in the server, relative to its root, as BinderHub's page
    computes it (``LaunchSpec.fromSearchParams``).

    Values arrive decoded once (from the query string) and are not decoded
    again. ``labpath`` wins over ``filepath``, which wins over ``urlpath``;
    ``labpath`` opens ``doc/tree/<path>``, ``filepath`` opens ``tree/<path>``.
    The result never leads out of the server: it is refused (InvalidInput)
    if any percent-decoding of it climbs out or names another host.
    """
    if labpath is not None:
        path = "doc/tree/" + quote(labpath.rstrip("/").lstrip("/"), safe="/;,?:@&=+$!~*'()#")
    elif filepath is not None:
        path = "tree/" + quote(filepath.rstrip("/").lstrip("/"), safe="/;,?:@&=+$!~*'()#")
    else:
        path = (urlpath or "").lstrip("/")
    for value in (urlpath, labpath, filepath, path):
        if value:
            _check_inside(value.lstrip("/"))
    return path


# --- the current version of an archive (DOIs, HydroShare) --------------------------
# BinderHub asks the archive each time, so that a new version of a record is
# built. The requests go through ``fetch(url) -> (final_url, body)``; these
# functions only decide what to ask and read the answers.


class ArchiveError(RuntimeError):
    pass


def _json(body: bytes | str):
    try:
        return json.loads(body)
    except (TypeError, ValueError):
        raise ArchiveError("the archive answered something that is not JSON") from None


async def current_version(spec: LaunchSpec, fetch) -> str:
    """An id of the archive's current version, e.g. ``3242074`` (a Zenodo
    record), ``9782777.v3`` (Figshare), ``3035124.v1.2`` (Dataverse),
    ``<id>.v<modified time>`` (HydroShare)."""
    if spec.provider == "zenodo":
        # the concept DOI redirects to the newest record
        final, _ = await fetch(f"https://doi.org/{spec.label}")
        record = final.rstrip("/").rsplit("/", 1)[-1]
        if not record.isdigit():
            raise ArchiveError(f"the DOI does not lead to a Zenodo record ({final})")
        return record
    if spec.provider == "figshare":
        fields = spec.label.partition("/")[2].split(".")
        if len(fields) >= 2 and fields[-1].startswith("v") and fields[-1][1:].isdigit():
            return f"{fields[-2]}.{fields[-1]}"  # a versioned DOI names its version
        article = fields[-1]
        if not article.isdigit():
            raise ArchiveError("not a Figshare article DOI")
        _, body = await fetch(f"https://api.figshare.com/v2/articles/{article}/versions")
        versions = [v.get("version") for v in _json(body) if isinstance(v, dict)]
        versions = [v for v in versions if isinstance(v, int)]
        if not versions:
            raise ArchiveError(f"article {article} has no versions")
        return f"{article}.v{max(versions)}"
    if spec.provider == "dataverse":
        final, _ = await fetch(f"https://doi.org/{spec.label}")
        parts = urlsplit(final)
        if parts.scheme != "https" or not parts.hostname:
            raise ArchiveError(f"the DOI does not lead to a Dataverse installation ({final})")
        query = urlencode({"persistentId": f"doi:{spec.label}"})
        _, body = await fetch(f"https://{parts.netloc}/api/datasets/:persistentId?{query}")
        try:
            data = _json(body)["data"]
            latest = data["latestVersion"]
            return f"{data['id']}.v{latest['versionNumber']}.{latest['versionMinorNumber']}"
        except (KeyError, TypeError):
            raise ArchiveError("the Dataverse answer has no latest version") from None
    if spec.provider == "hydroshare":
        _, body = await fetch(
            f"https://www.hydroshare.org/hsapi/resource/{spec.label}/scimeta/elements"
        )
        try:
            dates = _json(body)["dates"]
            modified = next(d["start_date"] for d in dates if d.get("type") == "modified")
            when = datetime.strptime(modified.split(".")[0], "%Y-%m-%dT%H:%M:%S")
        except (KeyError, TypeError, StopIteration, ValueError, AttributeError):
            raise ArchiveError("the HydroShare answer has no modification date") from None
        return f"{spec.label}.v{int(when.replace(tzinfo=timezone.utc).timestamp())}"
    raise ArchiveError(f"{spec.provider} is not an archive")
