"""Binder-style launch specs (``/v2/<provider>/<spec>``): pure parsing.

A spec names a repository the way mybinder.org links do. Parsing turns it
into what repo2docker is given (a URL and a ref) and into the stable names
this hub uses for it: an environment name and a server name per repository.
Everything here is validated: specs arrive in URLs anyone can craft.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import unquote

from . import validation
from .validation import InvalidInput

MAX_SPEC_LENGTH = 2048
_GH_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_GH_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
_GL_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_DOI = re.compile(r"10\.[0-9]{4,9}/[A-Za-z0-9._;()/:-]{1,300}")
_HYDROSHARE_ID = re.compile(r"[0-9a-f]{32}")
_SLUG_CLEAN = re.compile(r"[^a-z0-9]+")

GIT_PROVIDERS = ("gh", "gl", "git")
DOI_PROVIDERS = ("zenodo", "figshare", "dataverse")
PROVIDERS = GIT_PROVIDERS + DOI_PROVIDERS + ("hydroshare",)


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
        """The user's named server for this repository: stable across launches."""
        return self._slug(40)


def _split_ref(rest: str, what: str) -> tuple[str, str]:
    head, sep, ref = rest.rpartition("/")
    if not sep or not head:
        raise InvalidInput("spec", f"{what} must end with /<ref> (a branch, tag or commit)")
    return head, validation.ref(unquote(ref))


def parse(provider: str, spec: str, *, schemes=validation.DEFAULT_SCHEMES, allow_local=False):
    """``provider`` and the rest of a ``/v2/<provider>/<spec>`` path -> LaunchSpec."""
    if provider not in PROVIDERS:
        raise InvalidInput("provider", f"unknown provider; use one of {', '.join(PROVIDERS)}")
    if not isinstance(spec, str) or not spec or len(spec) > MAX_SPEC_LENGTH:
        raise InvalidInput("spec", f"must be 1-{MAX_SPEC_LENGTH} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in spec):
        raise InvalidInput("spec", "must not contain control characters")

    if provider == "gh":
        # gh/<owner>/<repo>/<ref>; the ref may contain slashes
        parts = spec.split("/", 2)
        if len(parts) != 3:
            raise InvalidInput("spec", "use gh/<owner>/<repo>/<ref>")
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
        doi = unquote(spec).strip("/")
        if not _DOI.fullmatch(doi) or ".." in doi:
            raise InvalidInput("spec", "not a DOI (10.<registrant>/<suffix>)")
        return LaunchSpec(provider, f"https://doi.org/{doi}", "", doi)

    # hydroshare/<resource id>
    resource = unquote(spec).strip("/")
    if not _HYDROSHARE_ID.fullmatch(resource):
        raise InvalidInput("spec", "not a HydroShare resource id (32 hex digits)")
    return LaunchSpec("hydroshare", f"https://www.hydroshare.org/resource/{resource}", "", resource)


def lab_path(urlpath: str | None, labpath: str | None, filepath: str | None) -> str:
    """Where to land in the server, as Binder reads its query parameters.

    ``urlpath`` is a path in the server (``lab/tree/x.ipynb``, ``voila/...``);
    ``labpath`` and ``filepath`` name a file to open in JupyterLab.
    Returns a relative path without a leading slash; "" for the default.
    """
    for value, prefix in ((urlpath, ""), (labpath, "lab/tree/"), (filepath, "lab/tree/")):
        if value:
            path = unquote(value).lstrip("/")
            if len(path) > 1024 or any(ord(c) < 32 for c in path):
                raise InvalidInput("urlpath", "too long or not text")
            segments = path.split("?", 1)[0].split("/")
            if ".." in segments or "\\" in path or "//" in path or ":" in segments[0]:
                raise InvalidInput("urlpath", "must be a path inside the server")
            return prefix + path
    return ""
