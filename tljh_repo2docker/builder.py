"""Build settings and the repo2docker command line: pure construction.

A build request is validated here and turned into an argument list (never a
shell string). Running it lives in ``runner.py``, orchestration in ``buildjob.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from traitlets import Bool, Integer, List, Unicode, validate
from traitlets.config import Configurable

from . import labels, validation


class BuildSettings(Configurable):
    """How images are built and labelled. tljh-config: ``repo2docker.*``."""

    hub_name = Unicode(
        "default",
        help="Label value that marks images as this hub's; lets several hubs share one engine.",
    ).tag(config=True)
    image_prefix = Unicode(
        "tljh-r2d/",
        help="Prefix of built image names: <prefix><environment>:<commit[:12]>.",
    ).tag(config=True)
    user_id = Integer(
        1000, help="uid of the user inside built images; homes on the host are owned by it."
    ).tag(config=True)
    user_name = Unicode(
        "jovyan", help="Name of the user inside built images; the home is mounted at /home/<name>."
    ).tag(config=True)
    allowed_schemes = List(
        Unicode(),
        list(validation.DEFAULT_SCHEMES),
        help="URL schemes accepted for repositories (https, http, git, ssh).",
    ).tag(config=True)
    allow_local_repos = Bool(
        False, help="Accept local paths and file:// URLs as repositories (admins' own machines)."
    ).tag(config=True)
    repo2docker_config = List(
        Unicode(),
        [],
        help="repo2docker config files (Python traitlets config) passed with --config.",
    ).tag(config=True)
    base_image = Unicode(
        "",
        help="Base image for repo2docker's build packs (Repo2Docker.base_image); empty: default.",
    ).tag(config=True)
    appendix = Unicode(
        "", help="Dockerfile lines appended to every build pack build (--appendix)."
    ).tag(config=True)
    extra_args = List(
        Unicode(), [], help="Extra repo2docker command line arguments, added before the repo."
    ).tag(config=True)
    git_timeout = Integer(60, help="Seconds allowed for resolving a ref to a commit.").tag(
        config=True
    )
    project_folders = Bool(
        True,
        help="Launch-link servers open in ~/<project>, seeded once with the repository's files.",
    ).tag(config=True)

    @validate("image_prefix")
    def _valid_prefix(self, proposal):
        value = proposal["value"]
        if value != value.lower() or any(c.isspace() or c == ":" for c in value):
            raise ValueError("image_prefix must be lowercase, without spaces or ':'")
        return value

    @validate("allowed_schemes")
    def _valid_schemes(self, proposal):
        schemes = [s.lower() for s in proposal["value"]]
        unknown = set(schemes) - set(validation.DEFAULT_SCHEMES)
        if unknown:
            raise ValueError(f"unsupported repository schemes: {sorted(unknown)}")
        return schemes


@dataclass(frozen=True)
class BuildRequest:
    """A validated request to build one environment at one ref."""

    name: str
    repo: str
    ref: str
    display_name: str
    mem_limit: int | None = None
    cpu_limit: float | None = None
    built_by: str = ""
    owner: str = ""
    visibility: str = "public"
    build_args: tuple[tuple[str, str], ...] = ()


def validate_request(
    settings: BuildSettings,
    *,
    name,
    repo,
    ref="HEAD",
    display_name=None,
    mem_limit=None,
    cpu_limit=None,
    built_by="",
    build_args=None,
) -> BuildRequest:
    """Validate raw input (from a form, the API or the CLI) into a BuildRequest."""
    name = validation.environment_name(name)
    return BuildRequest(
        name=name,
        repo=validation.repo_url(
            repo, schemes=settings.allowed_schemes, allow_local=settings.allow_local_repos
        ),
        ref=validation.ref(ref or "HEAD"),
        display_name=validation.display_name(display_name, default=name),
        mem_limit=validation.mem_limit(mem_limit),
        cpu_limit=validation.cpu_limit(cpu_limit),
        built_by=built_by,
        build_args=tuple(sorted(validation.build_args(build_args).items())),
    )


def repo2docker_argv(
    settings: BuildSettings,
    request: BuildRequest,
    *,
    commit: str,
    built_at: str,
    python: str = sys.executable,
) -> list[str]:
    """The repo2docker command that builds ``request`` at ``commit``."""
    argv = [
        python,
        "-m",
        "repo2docker",
        "--no-run",
        "--json-logs",
        "--user-id",
        str(settings.user_id),
        "--user-name",
        settings.user_name,
        "--image-name",
        labels.image_tag(settings.image_prefix, request.name, commit),
    ]
    if request.ref:  # archives (DOIs) have no ref
        argv += ["--ref", commit]
    for path in settings.repo2docker_config:
        argv += ["--config", path]
    if settings.base_image:
        # repo2docker has no --base-image flag; its traitlet is settable
        argv += [f"--Repo2Docker.base_image={settings.base_image}"]
    if settings.appendix:
        argv += ["--appendix", settings.appendix]
    image_labels = labels.make_labels(
        hub=settings.hub_name,
        environment=request.name,
        display_name=request.display_name,
        repo=request.repo,
        ref=request.ref,
        commit=commit,
        mem_limit=request.mem_limit,
        cpu_limit=request.cpu_limit,
        built_by=request.built_by,
        built_at=built_at,
        owner=request.owner,
        visibility=request.visibility,
    )
    for key, value in image_labels.items():
        argv += ["--label", f"{key}={value}"]
    for name, value in request.build_args:
        argv += ["--build-arg", f"{name}={value}"]
    argv += list(settings.extra_args)
    # "--" ends the options: a repository can never be read as one.
    argv += ["--", request.repo]
    return argv
