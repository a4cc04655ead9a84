"""Binder-style launch specs: parsing, stable names, hostile input."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tljh_repo2docker import providers, validation
from tljh_repo2docker.validation import InvalidInput

GH = "https://github.com/"
EX = "https://example.org/x/y.git"
HS_ID = "b8f6eae9d89241cf8b5904033460af61"


def parse(provider, spec, **kw):
    return providers.parse(provider, spec, **kw)


@pytest.mark.parametrize(
    "provider, spec, repo, ref",
    [
        ("gh", "binder-examples/requirements/main", GH + "binder-examples/requirements", "main"),
        ("gh", "org/repo.git/main", "https://github.com/org/repo", "main"),
        ("gh", "org/repo/feature/x", "https://github.com/org/repo", "feature/x"),
        ("gh", "org/repo/" + "a" * 40, "https://github.com/org/repo", "a" * 40),
        ("gl", quote("group/sub/proj", safe="") + "/v1", "https://gitlab.com/group/sub/proj", "v1"),
        ("git", quote(EX, safe="") + "/main", EX, "main"),
        ("zenodo", "10.5281/zenodo.3242074", "https://doi.org/10.5281/zenodo.3242074", ""),
        ("figshare", "10.6084/m9.figshare.97827", "https://doi.org/10.6084/m9.figshare.97827", ""),
        ("dataverse", "10.7910/DVN/TJCLKP", "https://doi.org/10.7910/DVN/TJCLKP", ""),
        ("hydroshare", HS_ID, "https://www.hydroshare.org/resource/" + HS_ID, ""),
    ],
)  # fmt: skip
def test_specs_of_each_provider(provider, spec, repo, ref):
    parsed = parse(provider, spec)
    assert (parsed.repo, parsed.ref) == (repo, ref)
    assert parsed.is_git == (provider in ("gh", "gl", "git"))
    validation.environment_name(parsed.environment_name)  # a valid name, always
    assert len(parsed.server_name) <= 40


def test_names_are_stable_per_repository_not_per_ref():
    a = parse("gh", "org/repo/main")
    b = parse("gh", "org/repo/v2")
    c = parse("gh", "org/other/main")
    assert a.environment_name == b.environment_name
    assert a.server_name == b.server_name
    assert a.environment_name != c.environment_name
    assert a.server_name != c.server_name


def test_similar_repositories_get_different_names():
    # the slug alone would collide ("a-b"), the hash part keeps them apart
    assert parse("gh", "a-b/c/main").environment_name != parse("gh", "a/b-c/main").environment_name


def test_file_urls_only_when_allowed():
    spec = quote("file:///srv/repo", safe="") + "/main"
    with pytest.raises(InvalidInput):
        parse("git", spec)
    assert parse("git", spec, allow_local=True).repo == "file:///srv/repo"


@pytest.mark.parametrize(
    "provider, spec",
    [
        ("svn", "org/repo/main"),
        ("gh", "org/repo"),
        ("gh", "../../etc/passwd/main"),
        ("gh", "org/../main"),
        ("gh", "org@evil.com/repo/main"),
        ("gh", "org:22/repo/main"),
        ("gh", "org/repo/--upload-pack=touch%20x"),
        ("gh", "org/repo/a..b"),
        ("gh", "org/repo/main\n"),
        ("gh", "org/" + "r" * 101 + "/main"),
        ("gh", "org/repo/" + "x" * 5000),
        ("gl", quote("group/../../x", safe="") + "/main"),
        ("gl", "project/main"),
        ("git", quote("ftp://example.org/x", safe="") + "/main"),
        ("git", quote("https://user:pw@example.org/x", safe="") + "/main"),
        ("git", quote("--upload-pack=x", safe="") + "/main"),
        ("git", quote("ext::sh -c touch% /tmp/pwned", safe="") + "/main"),
        ("git", "main"),
        ("zenodo", "not-a-doi"),
        ("zenodo", "10.5281/../../x"),
        ("zenodo", "10.5281/zenodo.1?x=<script>"),
        ("hydroshare", "../../etc"),
        ("hydroshare", "B8F6EAE9"),
        ("gh", ""),
    ],
)
def test_hostile_specs_are_refused(provider, spec):
    with pytest.raises(InvalidInput):
        parse(provider, spec)


@pytest.mark.parametrize(
    "urlpath, labpath, filepath, expected",
    [
        (None, None, None, ""),
        ("lab/tree/index.ipynb", None, None, "lab/tree/index.ipynb"),
        ("/voila/render/x.ipynb", None, None, "voila/render/x.ipynb"),
        (None, "notebooks/a.ipynb", None, "lab/tree/notebooks/a.ipynb"),
        (None, None, "data/x.csv", "lab/tree/data/x.csv"),
        ("lab", "ignored.ipynb", None, "lab"),
    ],
)
def test_landing_path_as_binder_reads_it(urlpath, labpath, filepath, expected):
    assert providers.lab_path(urlpath, labpath, filepath) == expected


@pytest.mark.parametrize(
    "urlpath",
    ["../../hub/admin", "lab/../../../hub", "https://evil.example/", "a\\b", "x" * 2000, "a\nb"],
)
def test_landing_path_stays_inside_the_server(urlpath):
    with pytest.raises(InvalidInput):
        providers.lab_path(urlpath, None, None)


def test_landing_path_is_always_relative_to_the_server():
    # joined after /user/<name>/<server>/: a leading // must not make it a host
    assert providers.lab_path("//evil.example/x", None, None) == "evil.example/x"
