# ruff: noqa: E501 (tables of URLs read best one per line)
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
    assert len(parsed.server_name) <= providers.MAX_SERVER_NAME == 30


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


# BinderHub's rules (binderhub/repoproviders.py and its tests), one row per
# rule: how a spec in a /v2/ or /build/ URL is read, for every provider.
Q = "https%3A%2F%2Fexample.org%2Fx%2Fy.git"  # quote(EX, safe="")
BINDERHUB_RULES = [
    # gh: <owner>/<repo>/<ref>; everything after the repository is the ref
    ("gh", "user/repo/master", GH + "user/repo", "master"),
    ("gh", "user/repo/hotfix/squash-bug", GH + "user/repo", "hotfix/squash-bug"),
    ("gh", "user/repo/feature/save_world", GH + "user/repo", "feature/save_world"),
    ("gh", "a/long/specification/with/many/slashes", GH + "a/long", "specification/with/many/slashes"),
    ("gh", "user/repo.git/HEAD", GH + "user/repo", "HEAD"),
    ("gh", "user/repo/main/", GH + "user/repo", "main"),  # trailing slash stripped
    # gl: <escaped namespace>/<ref>; the ref may have unescaped slashes
    ("gl", "group%2Fproject%2Frepo/main", "https://gitlab.com/group/project/repo", "main"),
    ("gl", "group%2Fproject/feature/x", "https://gitlab.com/group/project", "feature/x"),
    ("gl", "group%2Fproject/feature%2Fx", "https://gitlab.com/group/project", "feature/x"),
    ("gl", "group%2Fproject/v1/", "https://gitlab.com/group/project", "v1"),
    # git: <escaped URL>/<ref>; as gl
    ("git", Q + "/main", EX, "main"),
    ("git", Q + "/release/2024", EX, "release/2024"),
    ("git", Q + "/release%2F2024", EX, "release/2024"),
    ("git", Q + "/" + "f" * 40, EX, "f" * 40),
    ("git", Q + "/HEAD/", EX, "HEAD"),
    ("git", quote("git@github.com:jupyterhub/binderhub", safe="") + "/main",
     "git@github.com:jupyterhub/binderhub", "main"),
    # gist: <owner>/<gist id>[/<ref>]; no ref, master and main mean HEAD
    ("gist", "mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092",
     "https://gist.github.com/mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092.git", "HEAD"),
    ("gist", "mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092/master",
     "https://gist.github.com/mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092.git", "HEAD"),
    ("gist", "mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092/" + "e" * 40,
     "https://gist.github.com/mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092.git", "e" * 40),
    # DOIs: the DOI as it is, escaped or not, with doi: or a doi.org URL, trailing slash
    ("zenodo", "10.5281/zenodo.3242074", "https://doi.org/10.5281/zenodo.3242074", ""),
    ("zenodo", "10.5281/zenodo.3242074/", "https://doi.org/10.5281/zenodo.3242074", ""),
    ("zenodo", "10.5281%2Fzenodo.3242073", "https://doi.org/10.5281/zenodo.3242073", ""),
    ("figshare", "10.6084/m9.figshare.9782777.v1", "https://doi.org/10.6084/m9.figshare.9782777.v1", ""),
    ("dataverse", "10.7910/DVN/TJCLKP", "https://doi.org/10.7910/DVN/TJCLKP", ""),
    ("dataverse", "doi:10.7910/DVN/TJCLKP", "https://doi.org/10.7910/DVN/TJCLKP", ""),
    ("dataverse", "doi%3A10.7910%2FDVN%2FTJCLKP", "https://doi.org/10.7910/DVN/TJCLKP", ""),
    ("zenodo", quote("https://doi.org/10.5281/zenodo.3242074", safe=""),
     "https://doi.org/10.5281/zenodo.3242074", ""),
    # HydroShare: the id, its DOI, or the resource's page URL (escaped)
    ("hydroshare", HS_ID, "https://www.hydroshare.org/resource/" + HS_ID, ""),
    ("hydroshare", "10.4211/hs." + HS_ID, "https://www.hydroshare.org/resource/" + HS_ID, ""),
    ("hydroshare", quote("https://www.hydroshare.org/resource/" + HS_ID, safe=""),
     "https://www.hydroshare.org/resource/" + HS_ID, ""),
    ("hydroshare", quote("https://www.hydroshare.org/resource/" + HS_ID + "/", safe=""),
     "https://www.hydroshare.org/resource/" + HS_ID, ""),
]  # fmt: skip


@pytest.mark.parametrize("provider, spec, repo, ref", BINDERHUB_RULES)
def test_binderhub_spec_rules(provider, spec, repo, ref):
    parsed = parse(provider, spec)
    assert (parsed.repo, parsed.ref) == (repo, ref)
    assert len(parsed.server_name) <= 30
    validation.environment_name(parsed.environment_name)


def test_a_trailing_slash_names_the_same_launch():
    a, b = parse("gh", "org/repo/main"), parse("gh", "org/repo/main/")
    assert (a.repo, a.ref, a.server_name) == (b.repo, b.ref, b.server_name)


@pytest.mark.parametrize(
    "name",
    [
        parse("git", quote("https://example.org/" + "very-long-group/" * 8 + "x.git", safe="")
              + "/main").server_name,
        parse("gl", quote("a" * 200 + "/" + "b" * 200, safe="") + "/main").server_name,
        parse("gh", "o" * 39 + "/" + "r" * 100 + "/main").server_name,
    ],
)  # fmt: skip
def test_server_names_fit_jupyterhub(name):
    # JupyterHub 6 refuses longer names ("Invalid server_name")
    assert len(name) <= 30
    assert name == name.lower() and name[0].isalnum() and name[-1].isalnum()


@pytest.mark.parametrize(
    "provider, spec",
    [
        ("gist", "user"),
        ("gist", "user/not-hex"),
        ("gist", "user/8a658f7f63b13768d1e75fa2464f5092/v1"),  # a gist ref is HEAD or a sha
        ("gist", "../8a658f7f63b13768d1e75fa2464f5092"),
        ("gl", "group%2Fproject/"),
        ("git", Q + "/"),
        ("git", Q + "/a..b"),
        ("git", Q + "/--upload-pack=x"),
        ("dataverse", "doi:not-a-doi"),
        ("hydroshare", quote("https://evil.example/resource/" + HS_ID, safe="")),
        ("hydroshare", "x" + HS_ID),
        ("gh", "///"),
    ],
)
def test_more_hostile_specs_are_refused(provider, spec):
    with pytest.raises(InvalidInput):
        parse(provider, spec)


# --- where a launch lands: BinderHub's LaunchSpec.fromSearchParams ------------------
@pytest.mark.parametrize(
    "urlpath, labpath, filepath, expected",
    [
        (None, None, None, ""),
        ("lab/tree/index.ipynb", None, None, "lab/tree/index.ipynb"),
        ("/voila/render/x.ipynb", None, None, "voila/render/x.ipynb"),
        ("lab", None, None, "lab"),
        (None, "notebooks/a.ipynb", None, "doc/tree/notebooks/a.ipynb"),
        (None, None, "data/x.csv", "tree/data/x.csv"),
        (None, None, "data/", "tree/data"),  # a trailing slash is trimmed
        (None, "my notebook.ipynb", None, "doc/tree/my%20notebook.ipynb"),  # encodeURI
        ("lab", "wins.ipynb", None, "doc/tree/wins.ipynb"),  # labpath wins over urlpath
        (None, "a.ipynb", "b.csv", "doc/tree/a.ipynb"),  # and over filepath
        ("rstudio", None, "b.csv", "tree/b.csv"),
        # decoded once (by the query string), never twice
        ("lab/tree/100%25.ipynb", None, None, "lab/tree/100%25.ipynb"),
    ],
)
def test_landing_path_as_binderhub_reads_it(urlpath, labpath, filepath, expected):
    assert providers.launch_path(urlpath, labpath, filepath) == expected


OUTSIDE = [
    "../../hub/admin",
    "lab/../../../hub",
    "https://evil.example/",
    "a\\b",
    "x" * 2000,
    "a\nb",
    "%2e%2e/%2e%2e/hub/admin",  # the browser's URL parser reads %2e%2e as ..
    "%252e%252e/%252e%252e/hub",  # and a server may decode once more
    "%25252e%25252e/x",
    "lab/%2F%2Fevil.example",
    "%2F%2Fevil.example/x",
    "..%5c..%5chub",
    "%5c%5cevil.example",
    "javascript%3Aalert(1)",
    "lab/tree/%2e%2e%2f%2e%2e%2fhub",
    "%" + "25" * 20 + "2e%2e/x",  # encoded too many times to tell
]


@pytest.mark.parametrize("value", OUTSIDE)
@pytest.mark.parametrize("which", ["urlpath", "labpath", "filepath"])
def test_landing_path_never_leads_out_of_the_server(value, which):
    args = {"urlpath": None, "labpath": None, "filepath": None, which: value}
    with pytest.raises(InvalidInput):
        providers.launch_path(**args)


def test_landing_path_is_always_relative_to_the_server():
    # joined to /user/<name>/<server>/: a leading / or // must not make it a host
    assert providers.launch_path("//evil.example/x", None, None) == "evil.example/x"
    assert providers.launch_path("/lab", None, None) == "lab"


# --- the current version of an archive, with a fake network -------------------------
class FakeWeb:
    def __init__(self, pages: dict):
        self.pages = pages
        self.asked = []

    async def __call__(self, url):
        self.asked.append(url)
        final, body = self.pages[url]
        return final, body.encode() if isinstance(body, str) else body


@pytest.mark.asyncio
async def test_zenodo_follows_the_concept_doi_to_the_newest_record():
    web = FakeWeb(
        {"https://doi.org/10.5281/zenodo.3242073": ("https://zenodo.org/records/3242074", "")}
    )
    spec = parse("zenodo", "10.5281/zenodo.3242073")
    assert await providers.current_version(spec, web) == "3242074"
    # a new version: a new answer, a new id (so a new build)
    web.pages["https://doi.org/10.5281/zenodo.3242073"] = ("https://zenodo.org/records/4000001", "")
    assert await providers.current_version(spec, web) == "4000001"


@pytest.mark.asyncio
async def test_figshare_versions():
    web = FakeWeb(
        {
            "https://api.figshare.com/v2/articles/9782777/versions": (
                "https://api.figshare.com/v2/articles/9782777/versions",
                '[{"version": 1}, {"version": 3}, {"version": 2}]',
            )
        }
    )
    latest = parse("figshare", "10.6084/m9.figshare.9782777")
    assert await providers.current_version(latest, web) == "9782777.v3"
    pinned = parse("figshare", "10.6084/m9.figshare.9782777.v1")
    assert await providers.current_version(pinned, web) == "9782777.v1"
    assert len(web.asked) == 1  # a versioned DOI needs no question


@pytest.mark.asyncio
async def test_dataverse_asks_the_installation_the_doi_leads_to():
    landing = "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP"
    api = (
        "https://dataverse.harvard.edu/api/datasets/:persistentId"
        "?persistentId=doi%3A10.7910%2FDVN%2FTJCLKP"
    )
    answer = '{"status": "OK", "data": {"id": 3035124, "latestVersion": {"versionNumber": 3, "versionMinorNumber": 0}}}'
    web = FakeWeb({"https://doi.org/10.7910/DVN/TJCLKP": (landing, ""), api: (api, answer)})
    spec = parse("dataverse", "doi:10.7910/DVN/TJCLKP")
    assert await providers.current_version(spec, web) == "3035124.v3.0"


@pytest.mark.asyncio
async def test_hydroshare_version_is_its_modification_time():
    url = f"https://www.hydroshare.org/hsapi/resource/{HS_ID}/scimeta/elements"
    body = '{"dates": [{"type": "created", "start_date": "2019-01-01T00:00:00"}, {"type": "modified", "start_date": "2020-02-03T04:05:06.789Z"}]}'
    web = FakeWeb({url: (url, body)})
    spec = parse("hydroshare", HS_ID)
    assert await providers.current_version(spec, web) == f"{HS_ID}.v1580702706"


@pytest.mark.parametrize(
    "provider, spec, pages",
    [
        ("zenodo", "10.5281/zenodo.1", {"https://doi.org/10.5281/zenodo.1": ("https://evil/x", "")}),
        ("figshare", "10.6084/m9.figshare.7", {"https://api.figshare.com/v2/articles/7/versions": ("u", "[]")}),
        ("figshare", "10.6084/m9.figshare.7", {"https://api.figshare.com/v2/articles/7/versions": ("u", "<html>")}),
        ("hydroshare", HS_ID, {f"https://www.hydroshare.org/hsapi/resource/{HS_ID}/scimeta/elements": ("u", '{"dates": []}')}),
    ],
)  # fmt: skip
@pytest.mark.asyncio
async def test_archive_answers_that_make_no_sense_are_errors(provider, spec, pages):
    with pytest.raises(providers.ArchiveError):
        await providers.current_version(parse(provider, spec), FakeWeb(pages))


def test_archive_versions_get_their_own_image_id():
    from tljh_repo2docker.buildjob import archive_id

    repo = "https://doi.org/10.5281/zenodo.3242073"
    assert archive_id(repo) == archive_id(repo, "")  # images built before keep their id
    assert archive_id(repo, "3242074") != archive_id(repo, "4000001") != archive_id(repo)
