"""Unit tests for tljh_repo2docker.validation: pure input checks."""

from __future__ import annotations

import warnings

import pytest

from tljh_repo2docker import validation
from tljh_repo2docker.validation import InvalidInput

LONG = "a" * 10_000


def is_valid_docker_image_name(name):
    """repo2docker's own check of the names it is given with --image-name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pythonjsonlogger, imported by it
        from repo2docker.utils import is_valid_docker_image_name as check

    return check(name)


def refuses(func, value, *args, field=None, **kwargs):
    with pytest.raises(InvalidInput) as info:
        func(value, *args, **kwargs)
    if field is not None:
        assert info.value.field == field
    assert info.value.message
    return info.value


# --- InvalidInput -----------------------------------------------------------


def test_invalid_input_carries_field_and_message():
    error = InvalidInput("repo", "must not be empty")
    assert isinstance(error, ValueError)
    assert error.field == "repo"
    assert error.message == "must not be empty"
    assert str(error) == "repo: must not be empty"


# --- environment_name -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "7", "demo", "my-env", "my_env", "my.env", "py3.11-data", "a" * 63, "0123456789"],
)
def test_environment_name_accepts(value):
    assert validation.environment_name(value) == value


def test_environment_name_strips_surrounding_whitespace():
    assert validation.environment_name("  demo \n") == "demo"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Demo",  # uppercase is refused, not silently lowered
        "-demo",
        "demo-",
        ".demo",
        "demo.",
        "_demo",
        "my env",
        "my/env",
        "../..",
        "..",
        ".",
        "<script>",
        "<script>alert(1)</script>",
        "--upload-pack=x",
        "a:b",
        "a@b",
        "é",
        "demo\x00",
        "de\x00mo",
        "de\tmo",
        "a" * 64,
        LONG,
    ],
)
def test_environment_name_refuses(value):
    refuses(validation.environment_name, value, field="name")


@pytest.mark.parametrize("value", [None, 5, 1.5, b"demo", ["demo"], {"name": "demo"}])
def test_environment_name_refuses_non_strings(value):
    error = refuses(validation.environment_name, value, field="name")
    assert "string" in error.message


def test_environment_name_reports_length_before_pattern():
    error = refuses(validation.environment_name, LONG)
    assert "63" in error.message


@pytest.mark.parametrize(
    "value", ["a", "demo", "my-env", "my_env", "my.env", "a-b-c", "a1.b2_c3", "a" * 63]
)
def test_accepted_environment_names_make_valid_docker_image_names(value):
    name = validation.environment_name(value)
    assert is_valid_docker_image_name(f"tljh-r2d/{name}:0123456789ab")


@pytest.mark.parametrize("value", ["a..b", "a._b", "a-.b", "a_-b", "a___b"])
def test_environment_name_is_valid_in_docker_image_names(value):
    try:
        name = validation.environment_name(value)
    except InvalidInput:
        return  # refusing it is fine
    assert is_valid_docker_image_name(f"tljh-r2d/{name}:0123456789ab")


# --- display_name -----------------------------------------------------------


def test_display_name_accepts_free_text():
    assert validation.display_name("My Data Science Env (2024)") == "My Data Science Env (2024)"
    assert validation.display_name("  Padded  ") == "Padded"
    assert validation.display_name("Ünïcödé ✓") == "Ünïcödé ✓"


def test_display_name_keeps_markup_verbatim():
    # Escaping is the job of whoever renders it; the value is not mangled here.
    assert validation.display_name("<script>alert(1)</script>") == "<script>alert(1)</script>"


@pytest.mark.parametrize("value", [None, "", "   ", "\n\t"])
def test_display_name_default_when_empty(value):
    assert validation.display_name(value, default="demo") == "demo"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_display_name_empty_without_default_is_refused(value):
    refuses(validation.display_name, value, field="display_name")


@pytest.mark.parametrize(
    "value",
    ["a" * 101, LONG, "bad\x00name", "two\nlines", "bell\x07", "del\x7f", "esc\x1b[31m", 42, b"x"],
)
def test_display_name_refuses(value):
    refuses(validation.display_name, value, default="fallback", field="display_name")


def test_display_name_max_length_is_accepted():
    assert validation.display_name("x" * 100) == "x" * 100


# --- ref --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "HEAD",
        "main",
        "v1.2.3",
        "feature/new-thing",
        "refs/heads/main",
        "refs/tags/v1.0",
        "release_2024+build",
        "0123456",
        "0123456789abcdef0123456789abcdef01234567",
        "a" * 255,
    ],
)
def test_ref_accepts(value):
    assert validation.ref(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "  ",
        "--upload-pack=x",
        "-b",
        "-",
        "a..b",
        "../..",
        "..",
        "refs/heads/x.lock",
        "x.lock",
        "main.",
        "main/",
        "/main",
        "a//b",
        "main@{1}",
        "HEAD@{upstream}",
        "@",
        "main~1",
        "main^",
        "main^{}",
        "a:b",
        "a b",
        "a*",
        "a?",
        "a[b]",
        "a\\b",
        "<script>",
        "$(id)",
        "`id`",
        ";id",
        "main\x00",
        "ma\x00in",
        "ma\x1bin",
        "a" * 256,
        LONG,
        None,
        1,
    ],
)
def test_ref_refuses(value):
    refuses(validation.ref, value, field="ref")


def test_ref_strips_surrounding_whitespace():
    assert validation.ref(" main\n") == "main"


# --- repo_url ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "https://github.com/binder-examples/requirements",
        "https://github.com/binder-examples/requirements.git",
        "http://git.example.org/repo",
        "HTTPS://GitHub.com/org/repo",
        "https://gitlab.example.org:8443/group/sub/repo.git",
        "git://git.example.org/repo.git",
        "ssh://git@github.com/org/repo.git",
        "ssh://github.com:2222/org/repo.git",
        "git@github.com:org/repo.git",
        "deploy_user@git.example.org:group/repo",
    ],
)
def test_repo_url_accepts(value):
    assert validation.repo_url(value) == value


def test_repo_url_strips_surrounding_whitespace():
    assert validation.repo_url("  https://github.com/a/b\n") == "https://github.com/a/b"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "ftp://example.org/repo",
        "javascript:alert(1)",
        "data:text/plain,hello",
        "mailto:a@example.org",
        "file:///srv/repo",
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh",
        "fd::17",
        "github.com/org/repo",
        "org/repo",
        "/srv/repo",
        "./repo",
        "../../etc",
        "<script>alert(1)</script>",
        "https://",
        "https:///path-without-host",
        "--upload-pack=touch /tmp/pwned",
        "--upload-pack=x",
        "-u",
        "-https://github.com/a/b",
        "https://github.com/a/b --upload-pack=x",
        "https://github.com/a b",
        "https://github.com/a\tb",
        "https://github.com/a\u00a0b",
        "https://github.com/a/b\x00",
        "https://github.com/a\x00/b",
        "https://github.com/a\x1b/b",
        "https://github.com/a\x7f/b",
        "https://github.com/" + "a" * 2048,
        LONG,
        None,
        42,
        b"https://github.com/a/b",
    ],
)
def test_repo_url_refuses(value):
    refuses(validation.repo_url, value, field="repo")


@pytest.mark.parametrize(
    "value",
    [
        "https://user:secret@github.com/org/repo",
        "https://token@github.com/org/repo",
        "https://user:@github.com/org/repo",
        "https://:secret@github.com/org/repo",
        "http://user:pw@example.org/repo",
        "git://user:pw@example.org/repo",
        "ssh://git:pw@example.org/repo",
    ],
)
def test_repo_url_refuses_credentials(value):
    error = refuses(validation.repo_url, value, field="repo")
    assert "credentials" in error.message
    assert "secret" not in error.message
    assert "pw" not in error.message


def test_repo_url_error_does_not_echo_secret():
    error = refuses(validation.repo_url, "https://user:hunter2@github.com/org/repo")
    assert "hunter2" not in str(error)


def test_repo_url_max_length_boundary():
    base = "https://github.com/"
    ok = base + "a" * (validation.MAX_REPO_LENGTH - len(base))
    assert validation.repo_url(ok) == ok
    refuses(validation.repo_url, ok + "a")


def test_repo_url_scheme_allow_list():
    only_https = ("https",)
    assert validation.repo_url("https://github.com/a/b", schemes=only_https)
    for value in ("http://github.com/a/b", "git://github.com/a/b", "ssh://github.com/a/b"):
        error = refuses(validation.repo_url, value, schemes=only_https)
        assert "https://" in error.message
    error = refuses(validation.repo_url, "git@github.com:a/b.git", schemes=only_https)
    assert "ssh" in error.message


def test_repo_url_scp_like_needs_ssh_enabled():
    assert validation.repo_url("git@github.com:a/b.git", schemes=("ssh",)) == (
        "git@github.com:a/b.git"
    )
    refuses(validation.repo_url, "git@github.com:a/b.git", schemes=("https", "git"))


@pytest.mark.parametrize(
    "value",
    [
        "-oProxyCommand=x@github.com:a/b",
        "-oProxy@github.com:a/b",
        "-x@github.com:a/b",
        "git@github.com:a b",
        "git@github.com:$(id)",
        "git@github.com:a;b",
    ],
)
def test_repo_url_hostile_scp_like_refused(value):
    refuses(validation.repo_url, value)


def test_repo_url_file_only_when_local_allowed():
    refuses(validation.repo_url, "file:///srv/repo")
    assert validation.repo_url("file:///srv/repo", allow_local=True) == "file:///srv/repo"
    assert validation.repo_url("file://localhost/srv/repo", allow_local=True) == (
        "file://localhost/srv/repo"
    )


@pytest.mark.parametrize(
    "value", ["file://evil.example.org/srv/repo", "file:relative/path", "file:"]
)
def test_repo_url_file_must_be_local_absolute(value):
    refuses(validation.repo_url, value, allow_local=True)


@pytest.mark.parametrize("value", ["/srv/repo", "./repo", "repo"])
def test_repo_url_plain_paths_refused_even_when_local_allowed(value):
    refuses(validation.repo_url, value, allow_local=True)


def test_repo_url_plain_absolute_path_hints_at_file_url():
    error = refuses(validation.repo_url, "/srv/repo", allow_local=True)
    assert "file://" in error.message


# --- mem_limit --------------------------------------------------------------

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512M", 512 * M),
        ("512m", 512 * M),
        ("512MB", 512 * M),
        ("512MiB", 512 * M),
        ("512 M", 512 * M),
        ("2G", 2 * G),
        ("2g", 2 * G),
        ("1.5GiB", int(1.5 * G)),
        ("1T", T),
        ("65536K", 64 * M),
        (str(64 * M), 64 * M),
        ("  1G  ", G),
        (64 * M, 64 * M),
        (2 * G, 2 * G),
        (float(G), G),
    ],
)
def test_mem_limit_parses(value, expected):
    assert validation.mem_limit(value) == expected


@pytest.mark.parametrize("value", [None, ""])
def test_mem_limit_empty_is_none(value):
    assert validation.mem_limit(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "63M",
        str(64 * M - 1),
        64 * M - 1,
        0,
        "0",
        "-1G",
        -(2 * G),
        "1025G",
        "2T",
        T + 1,
        10**30,
        "lots",
        "1.5.5G",
        "1e9",
        "0x100M",
        "1P",
        "1 G B",
        "G",
        "1G; rm -rf /",
        "1G\x00",
        "<script>",
        LONG,
        True,
        False,
        [1],
        {"G": 1},
    ],
)
def test_mem_limit_refuses(value):
    refuses(validation.mem_limit, value, field="mem_limit")


def test_mem_limit_bounds_are_inclusive():
    assert validation.mem_limit(validation.MIN_MEM_BYTES) == validation.MIN_MEM_BYTES
    assert validation.mem_limit(validation.MAX_MEM_BYTES) == validation.MAX_MEM_BYTES


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_mem_limit_refuses_non_finite_floats(value):
    refuses(validation.mem_limit, value, field="mem_limit")


# --- cpu_limit --------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.5", 0.5),
        ("2", 2.0),
        (" 4 ", 4.0),
        (1, 1.0),
        (0.05, 0.05),
        ("256", 256.0),
        (256, 256.0),
    ],
)
def test_cpu_limit_parses(value, expected):
    result = validation.cpu_limit(value)
    assert isinstance(result, float)
    assert result == expected


@pytest.mark.parametrize("value", [None, ""])
def test_cpu_limit_empty_is_none(value):
    assert validation.cpu_limit(value) is None


@pytest.mark.parametrize(
    "value",
    [
        0,
        "0",
        0.04,
        "-1",
        256.5,
        "1000",
        "nan",
        float("nan"),
        "inf",
        float("inf"),
        "-inf",
        "two",
        "1,5",
        "0x10",
        "2 cpus",
        "<script>",
        "1\x00",
        LONG,
        True,
        False,
        [1],
        object(),
    ],
)
def test_cpu_limit_refuses(value):
    refuses(validation.cpu_limit, value, field="cpu_limit")


# --- format_bytes -----------------------------------------------------------


@pytest.mark.parametrize(
    "size, expected",
    [
        (None, ""),
        (T, "1T"),
        (2 * G, "2G"),
        (1536 * M, "1536M"),
        (512 * M, "512M"),
        (64 * M + K, "65537K"),
        (64 * M + 1, str(64 * M + 1)),
        (1000, "1000"),
    ],
)
def test_format_bytes(size, expected):
    assert validation.format_bytes(size) == expected


@pytest.mark.parametrize(
    "size",
    [64 * M, 64 * M + 1, 64 * M + K, 100_000_000, 512 * M, int(1.5 * G), 2 * G, 3 * G + 7, T],
)
def test_format_bytes_round_trips_through_mem_limit(size):
    text = validation.format_bytes(size)
    assert validation.mem_limit(text) == size


@pytest.mark.parametrize("text", ["512M", "2G", "1T", "1.5G", "100000000"])
def test_mem_limit_round_trips_through_format_bytes(text):
    size = validation.mem_limit(text)
    assert validation.mem_limit(validation.format_bytes(size)) == size


# --- hosts and users that a program could read as an option ----------------------------
@pytest.mark.parametrize(
    "value",
    [
        "ssh://-oProxyCommand=touch%20/tmp/pwned/x",
        "ssh://-oProxyCommand=x/repo",
        "ssh://-ohost/repo",
        "ssh://-user@example.org/repo",
        "git@-oProxyCommand:repo",
        "git@-ohost:repo",
        "-u@example.org:repo",
        "-oProxyCommand=x@example.org:repo",
        "https://-example.org/repo",
        "git://-example.org/repo",
        "https://exa_mple.org:99999/repo",
        "https://exa mple.org/repo",
        "https://a..b/repo",
        "https://ex%61mple.org/repo",
    ],
)
def test_repo_hosts_starting_with_dash_or_not_hosts_are_refused(value):
    refuses(validation.repo_url, value, field="repo")


@pytest.mark.parametrize(
    "value",
    [
        "https://github.com/a/b",
        "https://git-host.example.org:8443/a/b",
        "ssh://git@example.org/a/b",
        "git@example.org:a/b.git",
        "https://[2001:db8::1]/a",
        "http://10.0.0.1/a",  # the network rules, not validation, decide about addresses
    ],
)
def test_repo_hosts_that_are_hosts_pass(value):
    assert validation.repo_url(value) == value
