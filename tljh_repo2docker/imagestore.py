"""Where the catalogue's images live: the local Docker engine or a registry.

A store answers one question, "which images of this hub exist, with which
labels", as a list of Docker image summaries (``GET /images/json`` items:
``RepoTags``, ``Id``, ``Labels``, ``Size``), which ``labels.parse_image``
turns into catalogue entries. The catalogue (``catalogue.py``) caches and
refreshes; a store only fetches.

- ``DockerImageStore``: the local engine, label-filtered (single host).
- ``RegistryImageStore``: a Docker Registry HTTP API v2 (a swarm's images,
  issue 12). A pushed image cannot be relabelled, so its labels hold only what
  never changes. Listing walks ``/v2/_catalog`` under the image prefix, each
  repository's tags, each tag's manifest and its config blob (the labels).
  Manifests and config blobs are addressed by digest and never change, so both
  are cached by digest: a warm listing costs the catalogue pages, one tag list
  per repository and one manifest HEAD per tag (a tag can be moved, so its
  digest is always asked for).

Everything a registry answers is treated as hostile: names, tags and digests
are checked before they go into a URL, bodies are size-capped, blobs are
checked against their digest before they are cached, and a malformed
manifest or config drops that tag, not the listing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urljoin, urlsplit

import aiodocker
import aiohttp

from . import labels

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEXES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
# Sent on every manifest request: without it a registry may answer with the
# old schema 1 (no config blob, so no labels).
ACCEPT = ", ".join((*IMAGE_MANIFESTS, *INDEXES))
# Config media types that are an image's config (others, such as a signature
# or a chart stored next to the images, carry no labels of ours).
IMAGE_CONFIGS = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)

# The distribution spec's grammar for repository names and tags.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A registry host as Docker recognises one in a reference: the first path
# component when it has a '.' or a port, or is localhost.
_HOST_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")

MAX_MANIFEST_BYTES = 4 * 1024**2  # the distribution spec's own limit
MAX_CONFIG_BYTES = 8 * 1024**2
MAX_LIST_BYTES = 16 * 1024**2
MAX_PAGES = 10_000  # a registry whose Link never ends must not hang a listing


class StoreUnavailable(RuntimeError):
    """The image store (the Docker engine or the registry) did not answer."""


class ImageStore(Protocol):
    async def list_images(self) -> list[dict]:
        """This hub's images as Docker image summaries; StoreUnavailable
        when the store does not answer."""

    async def remove(self, ref: str) -> bool:
        """Remove one image tag; False when it was not there."""

    async def close(self) -> None: ...


def is_ours(image_labels: dict | None, hub_name: str) -> bool:
    image_labels = image_labels or {}
    return image_labels.get(labels.MANAGED) == "true" and image_labels.get(labels.HUB) == hub_name


# --- the local engine ----------------------------------------------------------


class DockerImageStore:
    """The local Docker engine's images, filtered by this hub's labels.

    ``client``: a callable returning the aiodocker client to use (the
    catalogue's own, which the service replaces with its shared one); without
    it the store opens and closes its own on ``docker_url``."""

    def __init__(
        self,
        hub_name: str,
        docker_url: str | None = None,
        client: Callable[[], aiodocker.Docker] | None = None,
    ):
        self.hub_name = hub_name
        self._docker_url = docker_url
        self._client = client
        self._own: aiodocker.Docker | None = None

    def _docker(self) -> aiodocker.Docker:
        if self._client is not None:
            return self._client()
        if self._own is None:
            self._own = aiodocker.Docker(url=self._docker_url)
        return self._own

    async def list_images(self) -> list[dict]:
        try:
            return await self._docker().images.list(
                filters={"label": [f"{labels.MANAGED}=true", f"{labels.HUB}={self.hub_name}"]}
            )
        except (aiodocker.DockerError, OSError) as e:
            raise StoreUnavailable(f"the Docker engine did not answer: {e}") from e

    async def remove(self, ref: str) -> bool:
        try:
            await self._docker().images.delete(ref, force=False, noprune=False)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def close(self) -> None:
        if self._own is not None:
            own, self._own = self._own, None
            await own.close()


# --- a registry: pure parts ------------------------------------------------------


def split_prefix(image_prefix: str) -> tuple[str, str]:
    """``host[:port]/path-prefix`` -> (host[:port], path prefix).

    ValueError when the prefix names no registry host (an image prefix such
    as ``tljh-r2d/`` means the local engine, not a registry)."""
    host, slash, path = image_prefix.partition("/")
    name, colon, port = host.partition(":")
    looks_like_host = "." in name or colon or name == "localhost"
    if not slash or not looks_like_host or not _HOST_RE.fullmatch(name):
        raise ValueError(f"image prefix {image_prefix!r} names no registry host")
    if colon and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"image prefix {image_prefix!r} has a bad port")
    return host, path


def next_link(header: str | None, current_url: str) -> str | None:
    """The ``rel="next"`` URL of a Link header, resolved against the request,
    or None. A link to another host or outside /v2/ is ignored: the registry
    must not send this client elsewhere."""
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        target = target.strip()
        if not (target.startswith("<") and target.endswith(">")):
            continue
        if not re.search(r'rel\s*=\s*"?next"?', params):
            continue
        url = urljoin(current_url, target[1:-1])
        here, there = urlsplit(current_url), urlsplit(url)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            return None
        if not there.path.startswith("/v2/"):
            return None
        return url
    return None


@dataclass(frozen=True)
class ImageManifest:
    """What listing needs of an image manifest (immutable: cached by digest)."""

    config_digest: str
    size: int  # the layers' (compressed) sizes summed


def parse_image_manifest(document: dict) -> ImageManifest | None:
    """An image manifest's config digest and size; None when it is not an
    image (another artifact) or is malformed."""
    config = document.get("config")
    if not isinstance(config, dict):
        return None
    digest = config.get("digest")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        return None
    if config.get("mediaType") not in IMAGE_CONFIGS:
        return None
    size = 0
    for layer in document.get("layers") or []:
        layer_size = layer.get("size") if isinstance(layer, dict) else None
        if isinstance(layer_size, int) and layer_size >= 0:
            size += layer_size
    return ImageManifest(digest, size)


def select_platform(index: dict, os: str = "linux", architecture: str = "amd64") -> str | None:
    """The digest of an index's (manifest list's) entry for the platform."""
    for entry in index.get("manifests") or []:
        if not isinstance(entry, dict):
            continue
        platform = entry.get("platform") or {}
        if platform.get("os") == os and platform.get("architecture") == architecture:
            digest = entry.get("digest")
            if isinstance(digest, str) and _DIGEST_RE.fullmatch(digest):
                return digest
    return None


def media_type(document: dict, header: str | None) -> str:
    """A manifest's media type: its own field, else the Content-Type."""
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return (header or "").split(";")[0].strip()


def image_summary(
    host: str,
    repository: str,
    tag: str,
    manifest_digest: str,
    manifest: ImageManifest,
    image_labels: dict,
) -> dict:
    """A Docker-image-summary-like dict, as ``labels.parse_image`` reads it.
    ``Id`` is the config digest: the same Id the image has in an engine."""
    return {
        "RepoTags": [f"{host}/{repository}:{tag}"],
        "RepoDigests": [f"{host}/{repository}@{manifest_digest}"],
        "Id": manifest.config_digest,
        "Labels": {str(k): str(v) for k, v in image_labels.items()},
        "Size": manifest.size,
    }


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- a registry: the client -------------------------------------------------------


class _Gone(Exception):
    """The registry answered 404: a repository or tag deleted meanwhile."""


class RegistryImageStore:
    """This hub's images in a Docker Registry (HTTP API v2).

    ``image_prefix``: ``host[:port]/path-prefix`` (``BuildSettings.image_prefix``);
    only repositories whose name starts with the path prefix are listed.
    ``scheme``: ``https`` (default) or ``http`` for a registry on a trusted
    network. ``page_size``: ``n`` on catalogue and tag-list pages.
    ``requests`` counts the HTTP requests made, by kind (for tests and the
    benchmark)."""

    def __init__(
        self,
        hub_name: str,
        image_prefix: str,
        *,
        scheme: str = "https",
        page_size: int = 1000,
        concurrency: int = 16,
        timeout: float = 10.0,
        platform: tuple[str, str] = ("linux", "amd64"),
    ):
        if scheme not in ("http", "https"):
            raise ValueError(f"registry scheme must be http or https, not {scheme!r}")
        self.hub_name = hub_name
        self.host, self.path_prefix = split_prefix(image_prefix)
        self.base_url = f"{scheme}://{self.host}"
        self.page_size = max(1, int(page_size))
        self.platform = platform
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._concurrency = max(1, int(concurrency))
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None
        # digest -> ImageManifest, or (for an index) the platform entry's
        # digest; digest -> config labels. Both immutable by construction.
        self._manifests: dict[str, ImageManifest | str] = {}
        self._configs: dict[str, dict] = {}
        # (repository, tag) -> the digest it pointed at last time: a tag never
        # seen is fetched with one GET, a known one checked with a HEAD
        self._tags: dict[tuple[str, str], str] = {}
        self.requests: Counter = Counter()

    # -- HTTP ------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._session

    async def _request(
        self, kind: str, method: str, url: str, *, accept: str = "", limit: int = MAX_LIST_BYTES
    ) -> tuple[int, Mapping[str, str], bytes]:
        session = self._http()
        headers = {"Accept": accept} if accept else {}
        self.requests[kind] += 1
        try:
            async with self._limit:
                async with session.request(
                    method, url, headers=headers, allow_redirects=False
                ) as response:
                    body = b"" if method == "HEAD" else await _read_limited(response, limit)
                    # a copy that keeps header names case-insensitive
                    return response.status, response.headers.copy(), body
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"the image registry {self.host} did not answer: {e}") from e

    def _unavailable(self, what: str, status: int) -> StoreUnavailable:
        if status in (401, 403):
            return StoreUnavailable(
                f"the image registry {self.host} refused {what} ({status}): "
                "registries that need credentials are not supported yet"
            )
        return StoreUnavailable(f"the image registry {self.host} answered {status} for {what}")

    async def _pages(self, kind: str, url: str, key: str):
        """Each page's list under ``key`` of a paginated listing."""
        seen = set()
        for _ in range(MAX_PAGES):
            if url in seen:
                return
            seen.add(url)
            try:
                status, headers, body = await self._request(kind, "GET", url)
            except _Malformed as e:
                raise StoreUnavailable(f"the image registry sent a bad {kind}: {e}") from e
            if status == 404:
                raise _Gone(url)
            if status != 200:
                raise self._unavailable(kind, status)
            try:
                items = json.loads(body).get(key) or []
            except (ValueError, AttributeError) as e:
                raise StoreUnavailable(f"the image registry sent a malformed {kind}") from e
            yield [item for item in items if isinstance(item, str)]
            url = next_link(headers.get("Link"), url)
            if url is None:
                return

    # -- listing -----------------------------------------------------------
    async def repositories(self) -> list[str]:
        """Repository names under the path prefix, in the registry's order."""
        # The catalogue is in lexical order: start just before the prefix and
        # stop at the first name past it, so that a registry shared with other
        # projects costs pages of ours only.
        url = f"{self.base_url}/v2/_catalog?n={self.page_size}"
        if self.path_prefix:
            url += f"&last={quote(self.path_prefix, safe='/')}"
        found = []
        try:
            async for page in self._pages("catalog", url, "repositories"):
                for name in page:
                    if name.startswith(self.path_prefix):
                        if _REPOSITORY_RE.fullmatch(name) and len(name) <= 255:
                            found.append(name)
                    elif name > self.path_prefix:
                        return found
        except _Gone as e:
            raise StoreUnavailable(f"{self.host} has no catalogue API (404)") from e
        return found

    async def tags(self, repository: str) -> list[str]:
        url = f"{self.base_url}/v2/{repository}/tags/list?n={self.page_size}"
        found = []
        try:
            async for page in self._pages("tags", url, "tags"):
                found.extend(tag for tag in page if _TAG_RE.fullmatch(tag))
        except _Gone:
            return []  # deleted since the catalogue page was read
        return found

    async def list_images(self) -> list[dict]:
        repositories = await self.repositories()
        touched: set[str] = set()
        per_repository = await asyncio.gather(
            *(self._repository_images(repository, touched) for repository in repositories)
        )
        # Forget what no tag uses any more (deleted versions), so the caches
        # stay as big as the registry's current contents.
        self._manifests = {d: m for d, m in self._manifests.items() if d in touched}
        self._configs = {d: c for d, c in self._configs.items() if d in touched}
        current = set(repositories)
        self._tags = {key: d for key, d in self._tags.items() if key[0] in current}
        return [summary for summaries in per_repository for summary in summaries]

    async def _repository_images(self, repository: str, touched: set[str]) -> list[dict]:
        tags = await self.tags(repository)
        seen = await asyncio.gather(*(self._tag_image(repository, tag, touched) for tag in tags))
        current = set(tags)
        for key in [key for key in self._tags if key[0] == repository and key[1] not in current]:
            del self._tags[key]
        return [summary for summary in seen if summary is not None]

    async def _tag_image(self, repository: str, tag: str, touched: set[str]) -> dict | None:
        try:
            digest = await self._tag_digest(repository, tag)
            manifest = await self._image_manifest(repository, digest, touched)
            if manifest is None:
                return None
            config = await self._config(repository, manifest.config_digest)
        except _Gone:
            self._tags.pop((repository, tag), None)
            return None
        except _Malformed as e:
            log.warning("skipping %s/%s:%s: %s", self.host, repository, tag, e)
            return None
        touched.add(manifest.config_digest)
        if not is_ours(config, self.hub_name):
            return None
        return image_summary(self.host, repository, tag, digest, manifest, config)

    async def _tag_digest(self, repository: str, tag: str) -> str:
        """The digest the tag points at now. A HEAD when the tag was seen
        before (its manifest is then most likely cached), else a GET that
        also brings the manifest."""
        url = f"{self.base_url}/v2/{repository}/manifests/{tag}"
        known = self._tags.get((repository, tag))
        if known is not None:
            status, headers, _ = await self._request("manifest HEAD", "HEAD", url, accept=ACCEPT)
            if status == 404:
                raise _Gone(url)
            digest = headers.get("Docker-Content-Digest", "")
            if status == 200 and digest in self._manifests:
                self._tags[(repository, tag)] = digest
                return digest
            if status not in (200, 404):
                raise self._unavailable("a manifest", status)
        digest = await self._fetch_manifest(repository, tag)
        self._tags[(repository, tag)] = digest
        return digest

    async def _fetch_manifest(self, repository: str, reference: str) -> str:
        """GET a manifest (by tag or digest) into the cache; its digest."""
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        status, headers, body = await self._request(
            "manifest GET", "GET", url, accept=ACCEPT, limit=MAX_MANIFEST_BYTES
        )
        if status == 404:
            raise _Gone(url)
        if status != 200:
            raise self._unavailable("a manifest", status)
        digest = sha256_digest(body)
        if reference.startswith("sha256:") and reference != digest:
            raise _Malformed(f"manifest {reference} does not match its digest")
        if digest in self._manifests:
            return digest
        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise _Malformed(f"manifest is not JSON ({e})") from None
        kind = media_type(document, headers.get("Content-Type"))
        if kind in INDEXES:
            child = select_platform(document, *self.platform)
            if child is None:
                raise _Malformed(f"no {'/'.join(self.platform)} image in the index")
            self._manifests[digest] = child
        elif kind in IMAGE_MANIFESTS:
            manifest = parse_image_manifest(document)
            if manifest is None:
                raise _Malformed("not an image manifest")
            self._manifests[digest] = manifest
        else:
            raise _Malformed(f"unsupported manifest type {kind!r}")
        return digest

    async def _image_manifest(
        self, repository: str, digest: str, touched: set[str]
    ) -> ImageManifest | None:
        """The image manifest behind a digest, through at most one index."""
        for _ in range(2):
            touched.add(digest)
            entry = self._manifests.get(digest)
            if entry is None:
                digest = await self._fetch_manifest(repository, digest)
                entry = self._manifests[digest]
            if isinstance(entry, ImageManifest):
                return entry
            digest = entry  # an index: its entry for our platform
        raise _Malformed("an index points at another index")

    async def _config(self, repository: str, digest: str) -> dict:
        """The config blob's ``config.Labels`` (cached by digest)."""
        cached = self._configs.get(digest)
        if cached is not None:
            return cached
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        status, _, body = await self._request("blob", "GET", url, limit=MAX_CONFIG_BYTES)
        if status == 404:
            raise _Gone(url)
        if status != 200:
            # Registries may redirect blob GETs to storage elsewhere; this
            # client does not follow a registry off its host.
            raise self._unavailable("a config blob", status)
        if sha256_digest(body) != digest:
            raise _Malformed(f"config blob {digest} does not match its digest")
        try:
            document = json.loads(body)
            found = (document.get("config") or {}).get("Labels") or {}
            if not isinstance(found, dict):
                raise ValueError("labels are not an object")
        except (ValueError, AttributeError) as e:
            raise _Malformed(f"config blob is not an image config ({e})") from None
        image_labels = {str(k): str(v) for k, v in found.items()}
        self._configs[digest] = image_labels
        return image_labels

    # -- one image ------------------------------------------------------------
    async def image_labels(self, ref: str) -> dict | None:
        """The labels of ``ref`` (a tag of this store's host and prefix) when
        it is this hub's image, else None ("is this commit built?" for the
        builder; issue 12). StoreUnavailable when the registry does not answer."""
        repository, tag = self._split_ref(ref)
        summary = await self._tag_image(repository, tag, set())
        return None if summary is None else dict(summary.get("Labels") or {})

    # -- removing ------------------------------------------------------------
    def _split_ref(self, ref: str) -> tuple[str, str]:
        """``host/repository:tag`` of this store -> (repository, tag)."""
        host, _, rest = ref.partition("/")
        repository, colon, tag = rest.rpartition(":")
        if host != self.host or not colon or not repository.startswith(self.path_prefix):
            raise ValueError(f"{ref!r} is not an image under {self.host}/{self.path_prefix}")
        if not _REPOSITORY_RE.fullmatch(repository) or not _TAG_RE.fullmatch(tag):
            raise ValueError(f"{ref!r} is not an image reference")
        return repository, tag

    async def _head_digest(self, repository: str, tag: str) -> str | None:
        url = f"{self.base_url}/v2/{repository}/manifests/{tag}"
        status, headers, _ = await self._request("manifest HEAD", "HEAD", url, accept=ACCEPT)
        if status == 404:
            return None
        digest = headers.get("Docker-Content-Digest", "")
        if status != 200 or not _DIGEST_RE.fullmatch(digest):
            raise self._unavailable("a manifest", status)
        return digest

    async def remove(self, ref: str) -> bool:
        """Delete the manifest behind ``ref`` (a tag of this store's host and
        prefix); False when the tag is not there.

        A registry deletes manifests, not tags: every tag on the same digest
        would go too. So the repository's other tags are checked first, and
        the delete is refused (ValueError) when one shares the digest. The
        layers stay until the registry's garbage collection runs."""
        repository, tag = self._split_ref(ref)
        digest = await self._head_digest(repository, tag)
        if digest is None:
            return False
        for other in await self.tags(repository):
            if other != tag and await self._head_digest(repository, other) == digest:
                raise ValueError(
                    f"{self.host}/{repository}:{other} is the same image as {ref}: not removed"
                )
        url = f"{self.base_url}/v2/{repository}/manifests/{digest}"
        status, _, body = await self._request("manifest DELETE", "DELETE", url, limit=64 * 1024)
        if status == 404:
            return False
        if status == 405:
            raise StoreUnavailable(
                f"the image registry {self.host} does not allow deletes "
                "(storage: delete: enabled: true in its config)"
            )
        if status != 202:
            raise self._unavailable("a delete", status)
        self._tags.pop((repository, tag), None)
        return True

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _Malformed(Exception):
    """A manifest or config this client will not read: the tag is skipped."""


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise _TooBig(f"{response.url} is {length} bytes, more than {limit}")
    chunks, total = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise _TooBig(f"{response.url} is more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _TooBig(_Malformed):
    pass
