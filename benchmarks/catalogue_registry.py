"""Catalogue listing from a registry (issue 12) against the local engine, same run.

    .venv/bin/python benchmarks/catalogue_registry.py [--environments 200] [--versions 1]
                                                      [--runs 5] [--page-size 1000]
                                                      [--concurrency 16]

Starts a real registry alone (``tests/swarm/cluster.Cluster.start_registry``:
Debian's docker-registry on 127.0.0.1), makes ``--environments`` labelled
images of ``--versions`` builds each, loads them into the local engine with
one ``docker load`` and writes the same images into the registry through
its HTTP API (one shared tiny layer, one config blob and manifest per
build). Then times, in-process:

- **engine**: ``DockerImageStore.list_images()`` (today's single-host listing);
- **registry cold**: a new ``RegistryImageStore`` per run (no cached digests);
- **registry warm**: the same store listed again (config blobs and manifests
  cached by digest: one manifest HEAD per tag).

Figures only (median, p90 and the ratio to the engine), never asserted.
Everything it makes carries the harness's run labels and is removed on
exit, also on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.swarm.cluster import Cluster, missing_prerequisites  # noqa: E402
from tljh_repo2docker import labels  # noqa: E402
from tljh_repo2docker.imagestore import (  # noqa: E402
    DOCKER_MANIFEST,
    DockerImageStore,
    RegistryImageStore,
)

LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_layer() -> tuple[bytes, bytes]:
    """(uncompressed tar, gzipped tar) holding one small file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        content = b"catalogue benchmark\n"
        info = tarfile.TarInfo("bench.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = raw.getvalue()
    return layer, gzip.compress(layer, mtime=0)


def image_configs(cluster: Cluster, hub: str, environments: int, versions: int, diff_id: str):
    """(environment, commit, config bytes) of every build to make."""
    run_labels = dict(label.split("=", 1) for label in cluster.labels)
    for e in range(environments):
        name = f"env{e:04d}"
        for v in range(versions):
            commit = hashlib.sha1(f"{name}-{v}".encode()).hexdigest()
            image_labels = labels.make_labels(
                hub=hub, environment=name, display_name=f"Environment {e}",
                repo="https://example.org/r", ref="main", commit=commit, mem_limit=None,
                cpu_limit=None, built_by="bench", built_at=f"2026-12-01T10:{v:02d}:00+00:00",
            )  # fmt: skip
            config = {
                "architecture": "amd64",
                "os": "linux",
                # the run's labels too: Cluster.close() removes the local copies
                "config": {"Labels": run_labels | image_labels, "Cmd": ["/bench"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
            yield name, commit, json.dumps(config, sort_keys=True).encode()


def docker_load(builds, layer: bytes, repository_of) -> None:
    """All builds into the local engine with one ``docker load``."""
    archive = io.BytesIO()
    manifest = []
    with tarfile.open(fileobj=archive, mode="w") as tar:

        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("layer/layer.tar", layer)
        for name, commit, config in builds:
            config_file = digest(config).split(":")[1] + ".json"
            add(config_file, config)
            manifest.append(
                {
                    "Config": config_file,
                    "RepoTags": [f"{repository_of(name)}:{commit[:12]}"],
                    "Layers": ["layer/layer.tar"],
                }
            )
        add("manifest.json", json.dumps(manifest).encode())
    subprocess.run(
        ["docker", "load", "-q"], input=archive.getvalue(), check=True, capture_output=True
    )


def registry_call(cluster: Cluster, method: str, url: str, data=b"", headers=None):
    if url.startswith("/"):
        url = f"http://{cluster.registry}{url}"
    request = urllib.request.Request(url, data=data or None, method=method)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers


def upload_blob(cluster: Cluster, repository: str, data: bytes) -> None:
    _, headers = registry_call(cluster, "POST", f"/v2/{repository}/blobs/uploads/")
    location = headers["Location"]
    separator = "&" if "?" in location else "?"
    url = f"{location}{separator}digest={digest(data)}"
    registry_call(cluster, "PUT", url, data, {"Content-Type": "application/octet-stream"})


def registry_push(cluster: Cluster, builds, gzipped: bytes, repository_of) -> None:
    """The same builds into the registry: one shared layer, a config and a
    manifest per build."""

    def push(build):
        name, commit, config = build
        repository = repository_of(name).split("/", 1)[1]
        upload_blob(cluster, repository, gzipped)  # already there: cheap
        upload_blob(cluster, repository, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": digest(config)},
            "layers": [{"mediaType": LAYER_TYPE, "size": len(gzipped), "digest": digest(gzipped)}],
        }
        registry_call(
            cluster,
            "PUT",
            f"/v2/{repository}/manifests/{commit[:12]}",
            json.dumps(manifest).encode(),
            {"Content-Type": DOCKER_MANIFEST},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(push, builds))


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return f"median {statistics.median(ordered) * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms"


async def measure(
    hub: str, prefix: str, runs: int, page_size: int, concurrency: int, expected: int
) -> None:
    rows = []

    cpu: dict[str, float] = {}

    async def timed(listing, row: str) -> tuple[float, int]:
        start, start_cpu = time.perf_counter(), time.process_time()
        images = await listing()
        cpu[row] = cpu.get(row, 0.0) + time.process_time() - start_cpu
        return time.perf_counter() - start, len(images)

    engine = DockerImageStore(hub)
    engine_times = []
    try:
        for _ in range(runs):
            seconds, count = await timed(engine.list_images, "engine")
            assert count == expected, f"the engine listed {count} images, not {expected}"
            engine_times.append(seconds)
    finally:
        await engine.close()
    rows.append(("engine (DockerImageStore)", engine_times, "", "engine"))

    cold_times, cold_requests = [], None
    for _ in range(runs):
        store = RegistryImageStore(
            hub, prefix, scheme="http", page_size=page_size, concurrency=concurrency
        )
        try:
            seconds, count = await timed(store.list_images, "cold")
            assert count == expected, f"the registry listed {count} images, not {expected}"
            cold_times.append(seconds)
            cold_requests = dict(store.requests)
        finally:
            await store.close()
    rows.append(("registry cold (new store)", cold_times, cold_requests, "cold"))

    store = RegistryImageStore(
        hub, prefix, scheme="http", page_size=page_size, concurrency=concurrency
    )
    warm_times = []
    try:
        await store.list_images()
        for _ in range(runs):
            store.requests.clear()
            seconds, count = await timed(store.list_images, "warm")
            assert count == expected
            warm_times.append(seconds)
        warm_requests = dict(store.requests)
    finally:
        await store.close()
    rows.append(("registry warm (cached digests)", warm_times, warm_requests, "warm"))

    base = statistics.median(engine_times)
    print(f"\n{expected} images, {runs} runs each; ratio: median / engine median")
    for name, seconds, requests, row in rows:
        ratio = statistics.median(seconds) / base if base else float("nan")
        # this process's CPU: what the hub would spend per listing
        client = cpu[row] / len(seconds) * 1000
        print(f"  {name:32s} {summary(seconds)}   x{ratio:5.1f}   client CPU {client:6.1f} ms")
        if requests:
            print(f"  {'':32s} requests per listing: {requests}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--environments", type=int, default=200)
    parser.add_argument("--versions", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    args = parser.parse_args()
    problem = missing_prerequisites()
    if problem:
        sys.exit(problem)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster = Cluster(workers=0)
    try:
        started = time.perf_counter()
        cluster.start_registry()
        hub = f"bench-{cluster.run_id}"
        prefix = f"{cluster.registry}/bench{os.urandom(2).hex()}/"
        layer, gzipped = tiny_layer()
        builds = list(image_configs(cluster, hub, args.environments, args.versions, digest(layer)))

        def repository_of(name: str) -> str:
            return f"{prefix}{name}"

        docker_load(builds, layer, repository_of)
        registry_push(cluster, builds, gzipped, repository_of)
        print(
            f"setup: registry, {len(builds)} builds loaded and pushed "
            f"in {time.perf_counter() - started:.1f} s"
        )
        asyncio.run(measure(hub, prefix, args.runs, args.page_size, args.concurrency, len(builds)))
    finally:
        cluster.close()
        left = cluster.leftovers()
        if left:
            print(f"LEFT OVER: {left}", file=sys.stderr)


if __name__ == "__main__":
    main()
