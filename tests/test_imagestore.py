"""Image stores (issue 12): the local engine, or a registry.

The pure parts and a canned HTTP server check what a registry may send
(indexes, pagination, malformed or lying answers); the ``docker`` tests list
a REAL registry (Debian's docker-registry, started by the swarm harness
without the swarm) holding label-only images pushed from this engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import urllib.request

import pytest
from aiohttp import web
from traitlets import TraitError

from tljh_repo2docker import imagestore, labels, validation
from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.catalogue import Catalogue, DockerUnavailable
from tljh_repo2docker.imagestore import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    DockerImageStore,
    ImageManifest,
    RegistryImageStore,
    StoreUnavailable,
)

from .swarm.cluster import BASE_IMAGE, image_id

HUB = "imgstore-hub"
C1 = "1111111111111111111111111111111111111111"
C2 = "2222222222222222222222222222222222222222"
C3 = "3333333333333333333333333333333333333333"
C4 = "4444444444444444444444444444444444444444"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64"}


def env_labels(environment, commit, hub=HUB, built_at="2026-12-01T10:00:00.000000+00:00"):
    return labels.make_labels(
        hub=hub, environment=environment, display_name=environment.title(), repo="https://x/r",
        ref="main", commit=commit, mem_limit=None, cpu_limit=None, built_by="admin",
        built_at=built_at,
    )  # fmt: skip


# --- image_prefix -------------------------------------------------------------

ACCEPTED = [
    "",
    "tljh-r2d/",
    "r2d-",
    "registry.example.org/team/r2d-",
    "registry.example.org:5000/course/",
    "127.0.0.1:5000/r2d-",
    "localhost:5000/",
    "a__b/c_",
]
REFUSED = [
    "Tljh-r2d/",
    "Registry.example.org:5000/course/",
    "tljh r2d/",
    "tljh-r2d/\n",
    "a:b/",
    "tljh:",
    "host:5000",  # a port with no path after it
    "host:0/",
    "host:65536/",
    "host:05000/",
    "http://registry.example.org:5000/",
    "https://registry.example.org/",
    "user:secret@registry.example.org:5000/",
    "user@registry.example.org/",
    "registry.example.org:5000/a/../b/",
    "../x",
    "a//b",
    "/abs",
    "registry.example.org:5000/a:b/",
    "[::1]:5000/",
    "-x",
    "a/b..c",
]


@pytest.mark.parametrize("prefix", ACCEPTED)
def test_image_prefix_accepted(prefix):
    assert validation.image_prefix(prefix) == prefix
    assert BuildSettings(image_prefix=prefix).image_prefix == prefix


@pytest.mark.parametrize("prefix", REFUSED)
def test_image_prefix_refused(prefix):
    with pytest.raises(validation.InvalidInput, match="image_prefix"):
        validation.image_prefix(prefix)
    with pytest.raises((TraitError, ValueError), match="image_prefix"):
        BuildSettings(image_prefix=prefix)


def test_every_accepted_prefix_makes_names_docker_accepts():
    # <prefix><environment>:<commit> must read back as [host/]repository:tag
    for prefix in ACCEPTED:
        repository, _, version = labels.image_tag(prefix, "demo", C1).rpartition(":")
        assert version == C1[:12]
        try:
            host, path = imagestore.split_prefix(prefix)
        except ValueError:
            host, path = "", prefix
        assert repository == (f"{host}/" if host else "") + path + "demo"
        assert imagestore._REPOSITORY_RE.fullmatch(path + "demo"), prefix


# --- pure parts of the registry store -----------------------------------------


def test_split_prefix():
    assert imagestore.split_prefix("127.0.0.1:5000/r2d-") == ("127.0.0.1:5000", "r2d-")
    assert imagestore.split_prefix("registry.example.org:5000/course/") == (
        "registry.example.org:5000",
        "course/",
    )
    assert imagestore.split_prefix("localhost/x/") == ("localhost", "x/")
    for local in ("tljh-r2d/", "r2d-", "", "host:port/", "host:5000"):
        with pytest.raises(ValueError):
            imagestore.split_prefix(local)


def test_next_link_stays_on_the_registry():
    here = "http://127.0.0.1:5000/v2/_catalog?n=2"
    link = '</v2/_catalog?last=b&n=2>; rel="next"'
    assert imagestore.next_link(link, here) == "http://127.0.0.1:5000/v2/_catalog?last=b&n=2"
    same = '<http://127.0.0.1:5000/v2/_catalog?last=c&n=2>; rel="next"'
    assert imagestore.next_link(same, here).endswith("last=c&n=2")
    for hostile in (
        '<http://evil.example/v2/_catalog?last=b>; rel="next"',
        '<//evil.example/v2/_catalog>; rel="next"',
        '<https://127.0.0.1:5000/v2/_catalog>; rel="next"',  # another scheme
        '</admin>; rel="next"',
        '</v2/_catalog?last=b>; rel="prev"',
        "garbage",
        "",
        None,
    ):
        assert imagestore.next_link(hostile, here) is None, hostile


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_parse_image_manifest():
    config = "sha256:" + "a" * 64
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config, "size": 10},
        "layers": [{"digest": "sha256:" + "b" * 64, "size": 100}, {"size": 23}, {"size": -5}],
    }
    assert imagestore.parse_image_manifest(manifest) == ImageManifest(config, 123)
    artifact = dict(manifest, config={"mediaType": "application/x-chart", "digest": config})
    assert imagestore.parse_image_manifest(artifact) is None
    bad_digest = dict(manifest, config={"mediaType": OCI_CONFIG, "digest": "sha256:../../x"})
    assert imagestore.parse_image_manifest(bad_digest) is None
    assert imagestore.parse_image_manifest({"config": "x"}) is None


def test_select_platform():
    amd64, arm64 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    index = {
        "manifests": [
            {"digest": arm64, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:" + "3" * 64, "platform": {"os": "unknown", "architecture": "x"}},
            {"digest": amd64, "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }
    assert imagestore.select_platform(index) == amd64
    assert imagestore.select_platform(index, "linux", "arm64") == arm64
    assert imagestore.select_platform({"manifests": [{"digest": "x", "platform": {}}]}) is None


# --- the registry store against a canned server -------------------------------


class Canned:
    """A registry that serves fixed answers on 127.0.0.1; records each request."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.log: list[tuple[str, str]] = []

    def json(self, path, document, *, status=200, headers=None, media_type=""):
        body = json.dumps(document).encode()
        heads = dict(headers or {})
        if media_type:
            heads["Content-Type"] = media_type
        self.routes[("GET", path)] = (status, heads, body)
        return body

    def image(self, repository, tag, image_labels, *, layers=(10, 20), index=False):
        """A config blob, its manifest under its digest and (maybe through an
        OCI index) under ``tag``; the manifest's digest."""
        config = json.dumps({"config": {"Labels": image_labels}}).encode()
        config_digest = digest_of(config)
        self.routes[("GET", f"/v2/{repository}/blobs/{config_digest}")] = (200, {}, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"digest": "sha256:" + "0" * 64, "size": size} for size in layers],
        }
        body = self.json(f"/v2/{repository}/manifests/PLACEHOLDER", manifest)
        del self.routes[("GET", f"/v2/{repository}/manifests/PLACEHOLDER")]
        digest = digest_of(body)
        self.manifest(repository, digest, body)
        top = body
        if index:
            entry = {"digest": digest, "mediaType": OCI_MANIFEST, "size": len(body)}
            top = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        dict(
                            entry,
                            digest="sha256:" + "9" * 64,
                            platform={"os": "linux", "architecture": "arm64"},
                        ),
                        dict(entry, platform=AMD64),
                    ],
                }
            ).encode()
            self.manifest(repository, digest_of(top), top)
        self.manifest(repository, tag, top)
        return digest

    def manifest(self, repository, reference, body):
        headers = {"Docker-Content-Digest": digest_of(body)}
        self.routes[("GET", f"/v2/{repository}/manifests/{reference}")] = (200, headers, body)
        self.routes[("HEAD", f"/v2/{repository}/manifests/{reference}")] = (200, headers, b"")

    async def handle(self, request):
        self.log.append((request.method, request.raw_path))
        for key in ((request.method, request.raw_path), (request.method, request.path)):
            if key in self.routes:
                status, headers, body = self.routes[key]
                return web.Response(status=status, headers=headers, body=body)
        return web.Response(status=404)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def parsed(summaries, hub=HUB):
    return sorted(
        (info.image, info.environment, info.commit, info.size)
        for summary in summaries
        for info in labels.parse_image(summary, hub)
    )


def test_canned_index_pagination_and_hostile_answers():
    async def scenario():
        async with Canned() as reg:
            host = f"127.0.0.1:{reg.port}"
            reg.json(
                "/v2/_catalog?n=2&last=course/",
                {"repositories": ["course/a", "course/b"]},
                headers={"Link": '</v2/_catalog?last=course%2Fb&n=2>; rel="next"'},
            )
            reg.json(
                "/v2/_catalog?last=course/b&n=2",
                # a bad name is skipped; "dash" sorts past the prefix: the end
                {"repositories": ["course/Bad..Name", "course/c", "dash/x", "zzz/never-read"]},
                headers={"Link": '<http://127.0.0.2:9/v2/_catalog?last=z>; rel="next"'},
            )
            reg.json(
                "/v2/course/a/tags/list?n=2",
                {"tags": ["v1", "../x"]},
                headers={"Link": '</v2/course/a/tags/list?last=x&n=2>; rel="next"'},
            )
            reg.json("/v2/course/a/tags/list?last=x&n=2", {"tags": ["idx"]})
            reg.json("/v2/course/b/tags/list?n=2", {"tags": ["bad", "lies", "other"]})
            reg.json("/v2/course/c/tags/list?n=2", {"tags": None})  # every tag deleted
            reg.image("course/a", "v1", env_labels("a", C1), layers=(5, 6))
            reg.image("course/a", "idx", env_labels("a", C2), layers=(7,), index=True)
            reg.image("course/b", "other", env_labels("b", C3, hub="another-hub"))
            reg.manifest("course/b", "bad", b"{not json")
            # a config blob that does not match its digest
            lying = reg.image("course/b", "lies", env_labels("b", C4))
            config = json.loads(reg.routes[("GET", f"/v2/course/b/manifests/{lying}")][2])
            blob = f"/v2/course/b/blobs/{config['config']['digest']}"
            reg.routes[("GET", blob)] = (200, {}, b'{"config": {"Labels": {"tampered": "1"}}}')

            store = RegistryImageStore(HUB, f"{host}/course/", scheme="http", page_size=2)
            try:
                first = await store.list_images()
                assert parsed(first) == [
                    (f"{host}/course/a:idx", "a", C2, 7),
                    (f"{host}/course/a:v1", "a", C1, 11),
                ]
                assert not any("zzz" in path for _, path in reg.log)
                assert store.requests["catalog"] == 2
                assert store.requests["tags"] == 4  # a: two pages
                # v1, idx and its amd64 entry, other, bad, lies
                assert store.requests["manifest GET"] == 6, store.requests
                # warm: one HEAD per tag seen before, nothing else per image
                store.requests.clear()
                assert parsed(await store.list_images()) == parsed(first)
                assert store.requests["manifest HEAD"] == 4, store.requests  # all but "bad"
                assert store.requests["manifest GET"] == 1  # "bad" is never cached
                assert store.requests["blob"] == 1  # nor the tampered blob
            finally:
                await store.close()

    asyncio.run(scenario())


def test_canned_refusals_are_store_unavailable():
    async def scenario():
        async with Canned() as reg:
            reg.routes[("GET", "/v2/_catalog?n=1000&last=r2d-")] = (401, {}, b"")
            store = RegistryImageStore(HUB, f"127.0.0.1:{reg.port}/r2d-", scheme="http")
            try:
                with pytest.raises(DockerUnavailable, match="credentials"):
                    await store.list_images()
            finally:
                await store.close()
        with socket.socket() as probe:  # a port where nothing listens
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        store = RegistryImageStore(HUB, f"127.0.0.1:{port}/r2d-", scheme="http", timeout=5)
        try:
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await store.list_images()
        finally:
            await store.close()

    asyncio.run(scenario())


# --- the catalogue over a store -----------------------------------------------


class ListedStore:
    def __init__(self, summaries):
        self.summaries = summaries
        self.calls = 0
        self.closed = False

    async def list_images(self):
        self.calls += 1
        return self.summaries

    async def close(self):
        self.closed = True


def test_catalogue_reads_any_store_and_watches_docker_only():
    summary = {
        "RepoTags": ["reg:5000/r/demo:1"],
        "Id": "sha256:1",
        "Labels": env_labels("demo", C1),
    }

    async def scenario():
        store = ListedStore([summary])
        catalogue = Catalogue(HUB, max_age=600, max_stale=600, store=store)
        [info] = await catalogue.environments()
        assert (info.image, info.commit) == ("reg:5000/r/demo:1", C1)
        assert await catalogue.find_version("demo", C1[:7]) == info
        assert store.calls == 1 and not catalogue.is_local and catalogue._watcher is None
        await catalogue.close()
        assert store.closed

    asyncio.run(scenario())
    default = Catalogue(HUB, watch_events=False)
    assert isinstance(default.store, DockerImageStore) and default.is_local


# --- a real registry ------------------------------------------------------------


def registry_request(cluster, method, path, accept=""):
    request = urllib.request.Request(f"http://{cluster.registry}{path}", method=method)
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers)


def layer_sizes(cluster, repository, tag):
    manifest = cluster.registry_json(f"/v2/{repository}/manifests/{tag}", accept=DOCKER_MANIFEST)
    return sum(layer["size"] for layer in manifest["layers"])


@pytest.mark.docker
def test_real_registry_lists_this_hubs_images(registry):
    course = f"course{os.urandom(2).hex()}/"  # a path of its own in the registry
    prefix = f"{registry.registry}/{course}"
    later = "2026-12-01T11:00:00.000000+00:00"
    wanted = {  # name in the registry, labels
        "demo1": (f"demo:{C1[:12]}", env_labels("demo", C1)),
        "demo2": (f"demo:{C2[:12]}", env_labels("demo", C2, built_at=later)),
        "stats": (f"stats:{C3[:12]}", env_labels("stats", C3)),
        "theirs": (f"theirs:{C4[:12]}", env_labels("demo", C4, hub="another-hub")),
        "plain": ("plain:latest", {}),
    }
    built = {
        key: (registry.image_with_labels(BASE_IMAGE, image_labels), name)
        for key, (name, image_labels) in wanted.items()
    }
    refs = {key: registry.push(image, course + name) for key, (image, name) in built.items()}
    # this hub's labels, but outside the prefix's path
    outside = registry.push(built["stats"][0], f"elsewhere{os.urandom(2).hex()}/stats:{C3[:12]}")
    ours = ("demo1", "demo2", "stats")

    async def scenario():
        store = RegistryImageStore(HUB, prefix, scheme="http")
        try:
            cold = await store.list_images()
            by_tag = {tag: s for s in cold for tag in s["RepoTags"]}
            assert sorted(by_tag) == sorted(refs[key] for key in ours), by_tag
            assert outside not in by_tag
            for key in ours:
                summary = by_tag[refs[key]]
                image, name = built[key]
                # the registry's config is the image's: the same Id as in the engine
                assert summary["Id"] == image_id(image)
                assert summary["Labels"].items() >= wanted[key][1].items()
                repository, tag = (course + name).split(":")
                assert summary["Size"] == layer_sizes(registry, repository, tag) > 0
            tags = {s["RepoTags"][0] for s in cold}
            assert store.requests["manifest GET"] == 5 and store.requests["blob"] == 5, (
                store.requests
            )

            # warm: one HEAD per tag, no manifest body, no blob
            store.requests.clear()
            assert await store.list_images() == cold
            assert store.requests["manifest HEAD"] == 5, store.requests
            assert store.requests["manifest GET"] == 0 and store.requests["blob"] == 0

            # the catalogue over it: the newest demo, and stats
            catalogue = Catalogue(HUB, max_age=600, max_stale=600, store=store)
            envs = await catalogue.environments()
            assert [(i.environment, i.commit) for i in envs] == [("demo", C2), ("stats", C3)]

            # small pages: the same listing, page by page
            paged = RegistryImageStore(HUB, prefix, scheme="http", page_size=1)
            try:
                assert sorted(map(str, await paged.list_images())) == sorted(map(str, cold))
                # four repositories under the path, one per page, then the
                # page that goes past the prefix ends the walk. (This registry
                # ignores n on tag lists; the canned test pages those.)
                assert paged.requests["catalog"] == 5, paged.requests
            finally:
                await paged.close()

            # a version deleted from the registry disappears
            repository, tag = refs["demo1"].split("/", 1)[1].split(":")
            _, headers = registry_request(
                registry, "HEAD", f"/v2/{repository}/manifests/{tag}", accept=DOCKER_MANIFEST
            )
            digest = headers["Docker-Content-Digest"]
            status, _ = registry_request(registry, "DELETE", f"/v2/{repository}/manifests/{digest}")
            assert status == 202
            after = {t for s in await store.list_images() for t in s["RepoTags"]}
            assert after == tags - {refs["demo1"]}
            catalogue.invalidate()
            assert await catalogue.find_version("demo", C1) is None
            assert (await catalogue.find_version("demo", C2)).commit == C2

            # a tag moved to another image (a rebuild at the same commit) is
            # seen at once: the digest is asked for on every listing
            moved = registry.image_with_labels(
                BASE_IMAGE, env_labels("stats", C3, built_at="2026-12-01T12:00:00.000000+00:00")
            )
            registry.push(moved, course + built["stats"][1])
            store.requests.clear()
            now = {t: s for s in await store.list_images() for t in s["RepoTags"]}
            assert now[refs["stats"]]["Id"] == image_id(moved) != image_id(built["stats"][0])
            assert now[refs["stats"]]["Labels"][labels.BUILT_AT].startswith("2026-12-01T12")
            assert store.requests["manifest GET"] == 1 and store.requests["blob"] == 1
            await catalogue.close()
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.docker
def test_real_registry_remove(registry):
    path = f"rm{os.urandom(2).hex()}/"
    one = registry.image_with_labels(BASE_IMAGE, env_labels("demo", C1))
    two = registry.image_with_labels(BASE_IMAGE, env_labels("demo", C2))
    ref1 = registry.push(one, f"{path}demo:{C1[:12]}")
    ref2 = registry.push(two, f"{path}demo:{C2[:12]}")
    alias = registry.push(two, f"{path}demo:latest")  # the same manifest as ref2
    outside = registry.push(one, f"keep{os.urandom(2).hex()}/demo:{C1[:12]}")

    async def scenario():
        store = RegistryImageStore(HUB, f"{registry.registry}/{path}", scheme="http")
        try:
            for foreign in (outside, f"127.0.0.2:1/{path}demo:{C1[:12]}", f"{ref1}/../x"):
                with pytest.raises(ValueError):
                    await store.remove(foreign)
            with pytest.raises(ValueError, match="same image"):
                await store.remove(ref2)
            assert await store.remove(ref1) is True
            assert await store.remove(ref1) is False
            listed = {tag for s in await store.list_images() for tag in s["RepoTags"]}
            assert listed == {ref2, alias}
        finally:
            await store.close()
        # the local engine's store removes a tag, not the image behind it
        engine = DockerImageStore(HUB)
        try:
            assert await engine.remove(ref1) is True  # the tag push() left on the host
            assert await engine.remove(ref1) is False
            assert image_id(one)
        finally:
            await engine.close()

    asyncio.run(scenario())
    repository, tag = outside.split("/", 1)[1].split(":")
    assert registry.registry_get(f"/v2/{repository}/manifests/{tag}", DOCKER_MANIFEST)[0] == 200
