"""Build settings and the repo2docker command line: pure construction.

A build request is validated here and turned into an argument list (never a
shell string). Running it lives in ``runner.py``, orchestration in ``buildjob.py``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

from traitlets import Bool, Enum, Integer, List, Unicode, default, validate
from traitlets.config import Configurable

from . import labels, netguard, tljhconfig, validation

DEFAULT_PREFIX = "tljh-r2d/"
# Catalogue timers with a registry (seconds): see catalogue_options.
REGISTRY_MAX_AGE = 10.0
REGISTRY_MAX_STALE = 60.0


def registry_host(value: str) -> str:
    """A registry as ``host[:port]`` (what image references start with), or
    '' for none; ValueError with the reason otherwise. No scheme, path or
    credentials: Docker would read those as parts of an image name."""
    value = value.strip() if isinstance(value, str) else value
    if not value:
        return ""
    if not isinstance(value, str) or len(value) > 255:
        raise ValueError(f"registry must be host[:port], not {value!r}")
    from .imagestore import split_prefix

    if "/" in value or "@" in value:
        raise ValueError(
            f"registry must be host[:port] (e.g. registry.example.org:5000), not {value!r}: "
            "no scheme, path or credentials"
        )
    try:
        host, _ = split_prefix(f"{value}/")
    except ValueError:
        raise ValueError(
            f"registry must be host[:port] with a '.' or a port in it, or localhost "
            f"(e.g. registry.example.org:5000), not {value!r}"
        ) from None
    return host


class BuildSettings(Configurable):
    """How images are built and labelled. tljh-config: ``repo2docker.*``."""

    hub_name = Unicode(
        "default",
        help="Label value that marks images as this hub's; lets several hubs share one engine.",
    ).tag(config=True)
    image_prefix = Unicode(
        help="Prefix of built image names: <prefix><environment>:<commit[:12]>. Default: "
        "tljh-r2d/, or <registry>/tljh-r2d/ when a registry is set.",
    ).tag(config=True)
    registry = Unicode(
        "",
        help="host[:port] of the Docker registry that built images are pushed to and the "
        "catalogue is read from (several hosts, issue 12); empty: the local engine only.",
    ).tag(config=True)
    registry_scheme = Enum(
        ["https", "http"],
        "https",
        help="How the catalogue talks to the registry: http only on a trusted private "
        "network (every engine must then list it in insecure-registries).",
    ).tag(config=True)
    prepull = Bool(
        False,
        help="After a push, pull the image on every swarm node the servers may run on "
        "(a global job through prepull_manager), so that no first start waits for a pull.",
    ).tag(config=True)
    prepull_manager = Unicode(
        "", help="URL of the swarm manager's engine that runs the pre-pull job."
    ).tag(config=True)
    swarm_manager = Unicode(
        "",
        help="URL of the swarm manager's engine when users' servers run on a swarm "
        "(there the service finds which servers use which images); empty: on this "
        "host's engine.",
    ).tag(config=True)
    db_url = Unicode(
        help="SQLAlchemy URL of the environments service's database (default: SQLite in "
        "TLJH's state dir). The hub reads what changes about an environment (display "
        "name, limits, sharing, the current version) from it, also while the service is down.",
    ).tag(config=True)
    prepull_constraints = List(
        Unicode(),
        ["node.role==worker"],
        help="Placement constraints of the pre-pull job (the servers' own).",
    ).tag(config=True)
    prepull_timeout = Integer(600, help="Seconds a pre-pull may take.").tag(config=True)
    push_timeout = Integer(
        3600, help="Seconds a push of a built image to the registry may take."
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
        False,
        help="Accept file:// URLs as repositories from administrators (never from other users).",
    ).tag(config=True)
    allowed_networks = List(
        Unicode(),
        [],
        help="Networks (CIDR, e.g. 10.1.0.0/16) repositories may be fetched from although they "
        "are loopback, private, link-local or this host's own; default: none.",
    ).tag(config=True)
    allowed_hosts = List(
        Unicode(),
        [],
        help="Host names (or '.example.org' suffixes) repositories may be fetched from whatever "
        "address they resolve to; default: none.",
    ).tag(config=True)
    fetch_submodules = Bool(
        False,
        help="Let git fetch a repository's submodules (their URLs are not checked against "
        "the network rules).",
    ).tag(config=True)
    allowed_base_images = List(
        Unicode(),
        [],
        help="Local images (exact references, or prefixes ending in '/' or ':') users' Dockerfiles "
        "may start from, besides public registry images, environments they can see and base_image.",
    ).tag(config=True)
    log_max_line_bytes = Integer(
        4096, help="Longest build log line kept (bytes); the rest of a line is cut."
    ).tag(config=True)
    log_max_bytes = Integer(
        2 * 1024 * 1024,
        help="Bytes of a build's log that are kept (the first third and the last two thirds).",
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
    trusted_launch_sources = List(
        Unicode(),
        [],
        help="Launch-link sources that open without asking the user first: provider or URL "
        "prefixes such as 'gh/my-org', 'gl/group/project' or 'https://git.example.org/course/' "
        "(whole path segments). Default: none, every user confirms each new repository once.",
    ).tag(config=True)
    project_folders = Bool(
        True,
        help="Launch-link servers open in ~/<project>, seeded once with the repository's files.",
    ).tag(config=True)
    user_gid = Integer(
        100,
        help="gid that new homes get and servers run with: a group that is no admin group "
        "(TLJH's gid 1000 is jupyterhub-admins). Existing homes keep their group.",
    ).tag(config=True)
    launch_home_access = Enum(
        ["project", "home"],
        "project",
        help="What a launch-link server sees of the user's home: 'project' mounts only "
        "~/<project> (as the home); 'home' mounts the whole home with ~/<project> as the "
        "server's root folder. A launch with user option whole_home=true gets 'home'.",
    ).tag(config=True)

    build_backend = Enum(
        ["auto", "process", "container"],
        "auto",
        help="Where repo2docker runs: 'process' (a child process of the environments "
        "service), 'container' (a labelled container of the builder image, found, "
        "cancelled and cleaned up through the Docker API), or 'auto': container when "
        "a registry is set (several hosts), process otherwise.",
    ).tag(config=True)
    builder_base_image = Unicode(
        help="Debian or Ubuntu image the builder image is made from (apt's python3 and git, "
        "pip's repo2docker, this host's docker CLI and buildx plugin); container backend "
        "only. Default: the host's distribution and release (ubuntu:24.04, "
        "debian:bookworm-slim, ...), whose C library the copied binaries need.",
    ).tag(config=True)
    builder_image = Unicode(
        "",
        help="A builder image to use as it is instead of making one from builder_base_image "
        "(e.g. one made on another machine and loaded with docker load, for a server without "
        "internet access); it must be on the engine. Container backend only.",
    ).tag(config=True)

    @default("builder_base_image")
    def _default_builder_base(self):
        from .builderimage import default_base_image

        return default_base_image()

    @default("image_prefix")
    def _default_image_prefix(self):
        return f"{self.registry}/{DEFAULT_PREFIX}" if self.registry else DEFAULT_PREFIX

    @validate("registry")
    def _valid_registry(self, proposal):
        return registry_host(proposal["value"])

    @validate("image_prefix")
    def _valid_prefix(self, proposal):
        # a registry host with a port is allowed (issue 12): see validation
        try:
            return validation.image_prefix(proposal["value"])
        except validation.InvalidInput as e:
            raise ValueError(str(e)) from None

    @validate("allowed_networks")
    def _valid_networks(self, proposal):
        for value in proposal["value"]:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"allowed_networks: {value!r} is not a network (CIDR)") from None
        return proposal["value"]

    def registry_problem(self) -> str:
        """Why the registry and the image prefix do not fit together ('' if
        they do): with a registry, images must be named under it, or a push
        would go to whichever registry the prefix names (Docker Hub)."""
        if self.registry and not self.image_prefix.startswith(f"{self.registry}/"):
            return (
                f"repo2docker.image_prefix {self.image_prefix!r} is not under the registry "
                f"{self.registry!r}: leave image_prefix unset, or start it with "
                f"{self.registry}/"
            )
        return ""

    def image_store(self):
        """The registry's image store, or None on a single host (the local
        engine's, which the catalogue makes itself)."""
        if not self.registry:
            return None
        from .imagestore import RegistryImageStore

        return RegistryImageStore(self.hub_name, self.image_prefix, scheme=self.registry_scheme)

    def catalogue_options(self, max_age: float = 0.5) -> dict:
        """Extra ``Catalogue`` arguments: none on a single host (today's
        catalogue, unchanged); with a registry, its store and longer timers,
        because a listing costs about 0.7 s at 200 environments, not a local
        engine's few milliseconds."""
        store = self.image_store()
        if store is None:
            return {}
        return {
            "store": store,
            "max_age": max(max_age, REGISTRY_MAX_AGE),
            "max_stale": REGISTRY_MAX_STALE,
        }

    def uses_build_containers(self) -> bool:
        return self.build_backend == "container" or (
            self.build_backend == "auto" and bool(self.registry)
        )

    def build_runner(self, docker):
        """The build backend these settings choose (``buildrunners``)."""
        from . import buildrunners

        if not self.uses_build_containers():
            return buildrunners.ProcessRunner()
        return buildrunners.ContainerRunner(
            docker, self.hub_name, self.builder_base_image, image=self.builder_image
        )

    def net_guard(self) -> netguard.NetGuard:
        """The network rules every fetch of a repository goes through."""
        return netguard.NetGuard(
            allowed_networks=list(self.allowed_networks),
            allowed_hosts=list(self.allowed_hosts),
            fetch_submodules=self.fetch_submodules,
        )

    @default("db_url")
    def _default_db_url(self):
        return "sqlite:///" + os.path.join(tljhconfig.state_dir(), "tljh-repo2docker.sqlite")

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
    copy_files: bool = True
    build_args: tuple[tuple[str, str], ...] = ()
    # an administrator asked for it: local repositories and any base image
    trusted: bool = False
    # archives (DOIs, HydroShare): the version the launch found current, so
    # that a new version of a record gets a new image (issue 9)
    archive_version: str = ""


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
    admin: bool = False,
) -> BuildRequest:
    """Validate raw input (from a form, the API or the CLI) into a BuildRequest.

    ``allow_local_repos`` applies to administrators only: a file:// URL
    reads any repository on the host the service can read.
    """
    name = validation.environment_name(name)
    return BuildRequest(
        name=name,
        repo=validation.repo_url(
            repo,
            schemes=settings.allowed_schemes,
            allow_local=settings.allow_local_repos and admin,
        ),
        ref=validation.ref(ref or "HEAD"),
        display_name=validation.display_name(display_name, default=name),
        mem_limit=validation.mem_limit(mem_limit),
        cpu_limit=validation.cpu_limit(cpu_limit),
        built_by=built_by,
        build_args=tuple(sorted(validation.build_args(build_args).items())),
        trusted=admin,
    )


def build_config(admin_configs: list[str], *, git_only: bool, dockerfiles: bool) -> str:
    """A repo2docker config file (its text) for one build.

    The admin's config files are loaded first (repo2docker itself would read
    only the last one given), then:

    - ``git_only``: repo2docker tries every content provider on the URL before
      git, and some (CKAN, Dataverse, Zenodo) make their own HTTP requests to
      the URL's host, following redirects: requests the network rules cannot
      pin. A commit this hub resolved with git is fetched by git alone.
    - not ``dockerfiles``: a user's archive (a DOI) cannot be read before
      repo2docker downloads it, so its Dockerfile cannot be checked for the
      images it names; such builds use the other build packs only.
    """
    lines = ["c = get_config()  # noqa: F821"]
    lines += [f"load_subconfig({path!r})  # noqa: F821" for path in admin_configs]
    if git_only:
        lines += [
            "from repo2docker.contentproviders import Git",
            "c.Repo2Docker.content_providers = [Git]",
        ]
    if not dockerfiles:
        lines += [
            "from repo2docker.app import Repo2Docker",
            "from repo2docker.buildpacks import DockerBuildPack, LegacyBinderDockerBuildPack",
            "c.Repo2Docker.buildpacks = [",
            "    b",
            "    for b in c.Repo2Docker.get('buildpacks') or Repo2Docker.buildpacks.default()",
            "    if not issubclass(b, (DockerBuildPack, LegacyBinderDockerBuildPack))",
            "]",
        ]
    return "\n".join(lines) + "\n"


def repo2docker_argv(
    settings: BuildSettings,
    request: BuildRequest,
    *,
    commit: str,
    built_at: str,
    python: str = sys.executable,
    config_files: list[str] | None = None,
) -> list[str]:
    """The repo2docker command that builds ``request`` at ``commit``.

    ``config_files`` replaces ``settings.repo2docker_config`` (the build job
    passes one file that loads those, then restricts the content providers).
    """
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
    for path in settings.repo2docker_config if config_files is None else config_files:
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
        copy_files=request.copy_files,
    )
    for key, value in image_labels.items():
        argv += ["--label", f"{key}={value}"]
    for name, value in request.build_args:
        argv += ["--build-arg", f"{name}={value}"]
    argv += list(settings.extra_args)
    # "--" ends the options: a repository can never be read as one.
    argv += ["--", request.repo]
    return argv
