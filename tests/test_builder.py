"""Unit tests for tljh_repo2docker.builder: settings, requests, the repo2docker argv."""

from __future__ import annotations

import warnings

import pytest
from traitlets import TraitError
from traitlets.config import Config

from tljh_repo2docker import builder, labels
from tljh_repo2docker.builder import BuildRequest, BuildSettings
from tljh_repo2docker.validation import InvalidInput

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BUILT_AT = "2024-05-01T12:00:00Z"
REPO = "https://github.com/binder-examples/requirements"
G = 1024**3
# traitlets' own errors are TraitError; the @validate methods raise ValueError.
INVALID_TRAIT = (TraitError, ValueError)


def make_r2d(argv):
    """repo2docker's own command line parsing, without building anything."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from repo2docker.__main__ import make_r2d as _make_r2d

    return _make_r2d(argv)


def request(settings=None, **overrides):
    args = dict(name="demo", repo=REPO, ref="main", display_name="Demo", built_by="admin")
    args.update(overrides)
    return builder.validate_request(settings or BuildSettings(), **args)


def argv_for(settings=None, req=None, **kwargs):
    settings = settings or BuildSettings()
    req = req or request(settings)
    kwargs.setdefault("commit", COMMIT)
    kwargs.setdefault("built_at", BUILT_AT)
    kwargs.setdefault("python", "/opt/py/bin/python")
    return builder.repo2docker_argv(settings, req, **kwargs)


def options(argv):
    """The part of argv before the '--' that ends the options."""
    return argv[: argv.index("--")]


def option_values(argv, flag):
    opts = options(argv)
    return [opts[i + 1] for i, arg in enumerate(opts) if arg == flag]


# --- BuildSettings ------------------------------------------------------------


def test_settings_defaults():
    s = BuildSettings()
    assert s.hub_name == "default"
    assert s.image_prefix == "tljh-r2d/"
    assert s.user_id == 1000
    assert s.user_name == "jovyan"
    assert s.allowed_schemes == ["https", "http", "git", "ssh"]
    assert s.allow_local_repos is False
    assert s.repo2docker_config == []
    assert s.base_image == ""
    assert s.appendix == ""
    assert s.extra_args == []


@pytest.mark.parametrize("prefix", ["", "tljh-r2d/", "r2d-", "registry.example.org/team/r2d-"])
def test_image_prefix_accepted(prefix):
    assert BuildSettings(image_prefix=prefix).image_prefix == prefix


@pytest.mark.parametrize(
    "prefix", ["Tljh-r2d/", "R2D-", "tljh r2d/", "tljh-r2d/\n", "\ttljh", "a:b/", "tljh:"]
)
def test_image_prefix_refused(prefix):
    with pytest.raises(INVALID_TRAIT, match="image_prefix"):
        BuildSettings(image_prefix=prefix)


def test_image_prefix_refused_from_config():
    config = Config({"BuildSettings": {"image_prefix": "Bad Prefix"}})
    with pytest.raises(INVALID_TRAIT):
        BuildSettings(config=config)


def test_image_prefix_refused_on_assignment_keeps_old_value():
    s = BuildSettings(image_prefix="good/")
    with pytest.raises(INVALID_TRAIT):
        s.image_prefix = "Bad:"
    assert s.image_prefix == "good/"


def test_allowed_schemes_are_lowercased():
    assert BuildSettings(allowed_schemes=["HTTPS", "Ssh"]).allowed_schemes == ["https", "ssh"]


@pytest.mark.parametrize(
    "schemes", [["ftp"], ["https", "file"], ["ext"], ["javascript"], ["https", "HTTPX"]]
)
def test_allowed_schemes_refuse_unknown(schemes):
    with pytest.raises(INVALID_TRAIT, match="unsupported repository schemes"):
        BuildSettings(allowed_schemes=schemes)


def test_settings_from_config():
    config = Config(
        {
            "BuildSettings": {
                "hub_name": "hub2",
                "image_prefix": "r2d-",
                "allowed_schemes": ["https"],
                "allow_local_repos": True,
            }
        }
    )
    s = BuildSettings(config=config)
    assert (s.hub_name, s.image_prefix, s.allowed_schemes, s.allow_local_repos) == (
        "hub2",
        "r2d-",
        ["https"],
        True,
    )


# --- validate_request -------------------------------------------------------


def test_validate_request_normalises():
    req = builder.validate_request(
        BuildSettings(),
        name=" demo ",
        repo=f" {REPO} ",
        ref=" v1.0 ",
        display_name=" Demo ",
        mem_limit="2G",
        cpu_limit="1.5",
        built_by="admin",
    )
    assert req == BuildRequest(
        name="demo",
        repo=REPO,
        ref="v1.0",
        display_name="Demo",
        mem_limit=2 * G,
        cpu_limit=1.5,
        built_by="admin",
    )


@pytest.mark.parametrize("ref", [None, ""])
def test_validate_request_default_ref_is_head(ref):
    assert request(ref=ref).ref == "HEAD"
    assert builder.validate_request(BuildSettings(), name="demo", repo=REPO).ref == "HEAD"


def test_validate_request_display_name_defaults_to_name():
    assert request(display_name=None).display_name == "demo"
    assert request(display_name="  ").display_name == "demo"


def test_validate_request_limits_default_to_none():
    req = builder.validate_request(BuildSettings(), name="demo", repo=REPO)
    assert req.mem_limit is None
    assert req.cpu_limit is None
    assert req.visibility == "public"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "../.."}, "name"),
        ({"name": "<script>"}, "name"),
        ({"name": None}, "name"),
        ({"repo": "--upload-pack=x"}, "repo"),
        ({"repo": "ftp://example.org/repo"}, "repo"),
        ({"repo": "/srv/repo"}, "repo"),
        ({"repo": "file:///srv/repo"}, "repo"),
        ({"repo": "https://user:pw@github.com/a/b"}, "repo"),
        ({"repo": "a" * 10_000}, "repo"),
        ({"ref": "--upload-pack=x"}, "ref"),
        ({"ref": "a..b"}, "ref"),
        ({"ref": "refs/heads/x.lock"}, "ref"),
        ({"ref": "main\x00"}, "ref"),
        ({"display_name": "x" * 101}, "display_name"),
        ({"mem_limit": "lots"}, "mem_limit"),
        ({"mem_limit": "1K"}, "mem_limit"),
        ({"cpu_limit": "-1"}, "cpu_limit"),
        ({"cpu_limit": "many"}, "cpu_limit"),
    ],
)
def test_validate_request_errors(overrides, field):
    with pytest.raises(InvalidInput) as info:
        request(**overrides)
    assert info.value.field == field


def test_validate_request_follows_allowed_schemes():
    settings = BuildSettings(allowed_schemes=["https"])
    assert request(settings).repo == REPO
    for repo in ("http://github.com/a/b", "git@github.com:a/b.git", "ssh://github.com/a/b"):
        with pytest.raises(InvalidInput):
            request(settings, repo=repo)
    # and without a restriction those are fine
    for repo in ("http://github.com/a/b", "git@github.com:a/b.git", "ssh://github.com/a/b"):
        assert request(repo=repo).repo == repo


def test_validate_request_local_repos_only_when_allowed_and_only_for_admins():
    with pytest.raises(InvalidInput):
        request(repo="file:///srv/repo", admin=True)
    settings = BuildSettings(allow_local_repos=True)
    req = request(settings, repo="file:///srv/repo", admin=True)
    assert (req.repo, req.trusted) == ("file:///srv/repo", True)
    # a user: refused even when local repositories are on
    with pytest.raises(InvalidInput, match="local repositories"):
        request(settings, repo="file:///srv/repo")
    assert request(settings).trusted is False


# --- repo2docker_argv -------------------------------------------------------


def test_argv_is_a_list_of_strings_starting_with_python_module():
    argv = argv_for(python="/opt/py/bin/python")
    assert isinstance(argv, list)
    assert all(isinstance(a, str) for a in argv)
    assert argv[:3] == ["/opt/py/bin/python", "-m", "repo2docker"]


def test_argv_default_python_is_current_interpreter():
    import sys

    settings = BuildSettings()
    argv = builder.repo2docker_argv(settings, request(settings), commit=COMMIT, built_at=BUILT_AT)
    assert argv[0] == sys.executable


def test_argv_core_options():
    argv = argv_for()
    opts = options(argv)
    assert "--no-run" in opts
    assert "--json-logs" in opts
    assert option_values(argv, "--ref") == [COMMIT]
    assert option_values(argv, "--image-name") == [f"tljh-r2d/demo:{COMMIT[:12]}"]
    assert option_values(argv, "--user-id") == ["1000"]
    assert option_values(argv, "--user-name") == ["jovyan"]


def test_argv_builds_the_commit_not_the_ref():
    argv = argv_for(req=request(ref="main"))
    assert option_values(argv, "--ref") == [COMMIT]
    assert "main" not in option_values(argv, "--ref")


def test_argv_uses_settings():
    settings = BuildSettings(
        image_prefix="registry.example.org/r2d-", user_id=1234, user_name="scientist"
    )
    argv = argv_for(settings, request(settings, name="analysis"), commit="abcdef1234567890" * 2)
    assert option_values(argv, "--image-name") == ["registry.example.org/r2d-analysis:abcdef123456"]
    assert option_values(argv, "--user-id") == ["1234"]
    assert option_values(argv, "--user-name") == ["scientist"]


def test_argv_labels_one_per_label_with_key_value():
    settings = BuildSettings(hub_name="hub2")
    req = request(settings, mem_limit="2G", cpu_limit="0.5", display_name="A = B <c>")
    argv = argv_for(settings, req)
    values = option_values(argv, "--label")
    expected = labels.make_labels(
        hub="hub2",
        environment="demo",
        display_name="A = B <c>",
        repo=REPO,
        ref="main",
        commit=COMMIT,
        mem_limit=2 * G,
        cpu_limit=0.5,
        built_by="admin",
        built_at=BUILT_AT,
        owner="",
        visibility="public",
    )
    assert len(values) == len(expected)
    parsed = dict(v.partition("=")[::2] for v in values)
    assert parsed == expected
    assert parsed[labels.DISPLAY_NAME] == "A = B <c>"
    assert parsed[labels.MEM_LIMIT] == "2G"
    assert parsed[labels.CPU_LIMIT] == "0.5"
    assert parsed[labels.REF] == "main"
    assert parsed[labels.COMMIT] == COMMIT


def test_argv_labels_parse_back_into_the_catalogue():
    settings = BuildSettings(hub_name="hub2")
    argv = argv_for(settings, request(settings, mem_limit="1G", cpu_limit=2))
    image_labels = dict(v.partition("=")[::2] for v in option_values(argv, "--label"))
    tag = option_values(argv, "--image-name")[0]
    [info] = labels.parse_image({"Id": "x", "RepoTags": [tag], "Labels": image_labels}, "hub2")
    assert (info.environment, info.commit, info.repo, info.ref) == ("demo", COMMIT, REPO, "main")
    assert (info.mem_limit, info.cpu_limit, info.display_name) == (G, 2.0, "Demo")
    assert info.built_at == BUILT_AT


def test_argv_without_optional_settings():
    opts = options(argv_for())
    for flag in ("--config", "--base-image", "--appendix"):
        assert flag not in opts


def test_argv_config_files():
    settings = BuildSettings(repo2docker_config=["/etc/r2d/one.py", "/etc/r2d/two.py"])
    assert option_values(argv_for(settings), "--config") == ["/etc/r2d/one.py", "/etc/r2d/two.py"]


def test_argv_base_image_and_appendix_before_separator():
    appendix = 'RUN echo "hello world" && \\\n    touch /tmp/x\nENV A=b'
    settings = BuildSettings(base_image="ubuntu:22.04", appendix=appendix)
    argv = argv_for(settings)
    opts = options(argv)
    assert any("ubuntu:22.04" in a for a in opts)
    assert option_values(argv, "--appendix") == [appendix]  # one argument, newlines kept


def test_argv_extra_args_before_separator_in_order():
    settings = BuildSettings(extra_args=["--subdir", "binder", "--cache-from", "x/y:z"])
    argv = argv_for(settings)
    opts = options(argv)
    start = opts.index("--subdir")
    assert opts[start : start + 4] == ["--subdir", "binder", "--cache-from", "x/y:z"]


@pytest.mark.parametrize(
    "repo",
    [REPO, "git@github.com:org/repo.git", "ssh://git@github.com/org/repo.git"],
)
def test_argv_repo_comes_last_after_separator(repo):
    argv = argv_for(req=request(repo=repo))
    assert argv[-2:] == ["--", repo]
    assert argv.count("--") == 1
    assert argv.count(repo) == 1  # only as the positional repo (labels carry it as k=v)


def test_argv_separator_even_with_extra_args_and_everything_set():
    settings = BuildSettings(
        repo2docker_config=["/etc/r2d.py"],
        base_image="ubuntu:22.04",
        appendix="RUN true",
        extra_args=["--subdir", "binder"],
    )
    argv = argv_for(settings)
    assert argv[-2:] == ["--", REPO]
    assert argv.count("--") == 1


def test_argv_option_like_repo_is_still_only_the_repo():
    # validate_request refuses this; even if a request bypassed it, "--" keeps it a repo.
    req = BuildRequest(
        name="demo", repo="--upload-pack=touch /tmp/pwned", ref="main", display_name="d"
    )
    argv = argv_for(req=req)
    assert argv[-2:] == ["--", "--upload-pack=touch /tmp/pwned"]
    r2d = make_r2d(argv[3:])
    assert r2d.repo == "--upload-pack=touch /tmp/pwned"


def test_argv_no_shell_strings():
    settings = BuildSettings(extra_args=["--subdir", "a b"])
    req = request(settings, display_name="x; rm -rf / && echo $(id)")
    argv = argv_for(settings, req)
    # Each value is its own argument; nothing is joined into a command string.
    assert "--subdir" in argv and "a b" in argv
    assert f"{labels.DISPLAY_NAME}=x; rm -rf / && echo $(id)" in argv
    assert not any(a.startswith(("sh ", "bash ", "/bin/sh")) for a in argv)
    assert not any(" -m repo2docker" in a for a in argv)


def test_argv_is_understood_by_repo2docker():
    settings = BuildSettings(hub_name="hub2", user_id=1234, user_name="scientist")
    req = request(settings, mem_limit="2G", cpu_limit="1.5")
    argv = argv_for(settings, req)
    r2d = make_r2d(argv[3:])
    assert r2d.repo == REPO
    assert r2d.ref == COMMIT
    assert r2d.output_image_spec == f"tljh-r2d/demo:{COMMIT[:12]}"
    assert r2d.run is False
    assert r2d.json_logs is True
    assert r2d.user_id == 1234
    assert r2d.user_name == "scientist"
    assert r2d.labels == dict(v.partition("=")[::2] for v in option_values(argv, "--label"))
    assert r2d.labels[labels.HUB] == "hub2"


def test_argv_config_appendix_extra_args_understood_by_repo2docker(tmp_path):
    config = tmp_path / "r2d_config.py"
    config.write_text("c.Repo2Docker.target_repo_dir = '/srv/repo'\n")
    settings = BuildSettings(
        repo2docker_config=[str(config)], appendix="RUN true", extra_args=["--subdir", "binder"]
    )
    r2d = make_r2d(argv_for(settings)[3:])
    assert r2d.repo == REPO
    assert r2d.target_repo_dir == "/srv/repo"
    assert r2d.appendix == "RUN true"
    assert r2d.subdir == "binder"


def test_argv_base_image_understood_by_repo2docker():
    settings = BuildSettings(base_image="docker.io/library/ubuntu:22.04")
    try:
        r2d = make_r2d(argv_for(settings)[3:])
    except SystemExit as e:
        pytest.fail(f"repo2docker refused the command line (exit {e.code})")
    assert r2d.repo == REPO
    assert r2d.base_image == "docker.io/library/ubuntu:22.04"


# --- git builds: only git fetches -------------------------------------------------------
def test_git_only_config_loads_the_admins_files_then_leaves_only_git(tmp_path):
    from repo2docker.contentproviders import Git

    admin = tmp_path / "admin.py"
    admin.write_text(
        "from repo2docker.contentproviders import Local, Zenodo\n"
        "c.Repo2Docker.content_providers = [Local, Zenodo]\n"
        "c.Repo2Docker.target_repo_dir = '/srv/repo'\n"
    )
    config = tmp_path / "build.py"
    config.write_text(builder.build_config([str(admin)], git_only=True, dockerfiles=True))
    settings = BuildSettings(repo2docker_config=[str(admin)])
    argv = argv_for(settings, config_files=[str(config)])
    assert option_values(argv, "--config") == [str(config)]
    r2d = make_r2d(argv[3:])
    r2d.load_config_file(str(config))
    assert r2d.content_providers == [Git]
    assert r2d.target_repo_dir == "/srv/repo"  # the admin's other settings still apply


def test_argv_keeps_the_admins_config_files_by_default():
    settings = BuildSettings(repo2docker_config=["/etc/a.py"])
    assert option_values(argv_for(settings), "--config") == ["/etc/a.py"]


def test_a_users_archive_build_has_no_dockerfile_build_packs(tmp_path):
    from repo2docker.buildpacks import DockerBuildPack, LegacyBinderDockerBuildPack, PythonBuildPack
    from repo2docker.contentproviders import Zenodo

    config = tmp_path / "build.py"
    config.write_text(builder.build_config([], git_only=False, dockerfiles=False))
    r2d = make_r2d(argv_for(config_files=[str(config)])[3:])
    r2d.load_config_file(str(config))
    assert PythonBuildPack in r2d.buildpacks
    assert DockerBuildPack not in r2d.buildpacks
    assert LegacyBinderDockerBuildPack not in r2d.buildpacks
    assert Zenodo in r2d.content_providers  # archives keep their providers
