"""What a builder container costs against a repo2docker child process.

    .venv/bin/python benchmarks/build_backends.py [--rounds 5]

Both backends build the same small local Dockerfile repository with the real
repo2docker, through ``buildjob.run_build`` as the environments service does.
Each round commits a change, so every build runs repo2docker (none is reused),
and the two backends take turns so that a warm cache favours neither. The
builder image is made first (and timed, once: an admin's first build pays it).
Times are printed (median, p90, ratio container/process, measured in this
run), never asserted. Everything made is removed on exit, also on error or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiodocker

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.dockerfixtures import commit_change, make_git_repo, remove_hub_objects  # noqa: E402
from tests.hubprocess import missing_tools  # noqa: E402
from tests.swarm.cluster import BASE_IMAGE  # noqa: E402
from tljh_repo2docker import builderimage  # noqa: E402
from tljh_repo2docker.builder import BuildRequest, BuildSettings  # noqa: E402
from tljh_repo2docker.buildjob import run_build  # noqa: E402


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_build(settings: BuildSettings, repo: Path, docker: aiodocker.Docker) -> float:
    request = BuildRequest(
        name="bench", repo=f"file://{repo}", ref="main", display_name="bench", trusted=True
    )
    lines = []
    began = time.monotonic()
    result = await run_build(
        settings,
        request,
        lines.append,
        docker=docker,
        build_runner=settings.build_runner(docker),
        job=f"bench-{secrets.token_hex(3)}",
    )
    took = time.monotonic() - began
    if result.cached:
        raise RuntimeError("a build was reused: the benchmark must change the commit")
    return took


async def main(rounds: int):
    hub = f"bench-{secrets.token_hex(4)}"
    times: dict[str, list[float]] = {"process": [], "container": []}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        repo = make_git_repo(Path(tmp) / "env", marker=hub)
        try:
            async with aiodocker.Docker() as docker:
                began = time.monotonic()
                tag = await builderimage.ensure(docker, BASE_IMAGE)
                print(f"builder image {tag}: ready in {time.monotonic() - began:.1f} s")
                for n in range(rounds + 1):  # round 0 warms both up, not counted
                    for kind in ("process", "container") if n % 2 else ("container", "process"):
                        commit_change(repo, f"RUN echo {kind}-{n} > /tmp/round")
                        settings = BuildSettings(
                            hub_name=hub,
                            image_prefix=f"{hub}/",
                            allow_local_repos=True,
                            build_backend=kind,
                            builder_base_image=BASE_IMAGE,
                        )
                        took = await one_build(settings, repo, docker)
                        if n:
                            times[kind].append(took)
                        print(f"  round {n} {kind:9} {took:.2f} s", flush=True)
        finally:
            remove_hub_objects(hub)
    process, container = times["process"], times["container"]
    print(f"\nrepo2docker build of a one-line Dockerfile change, {rounds} rounds each:")
    for kind, values in times.items():
        print(
            f"  {kind:9} median {statistics.median(values):.2f} s, "
            f"p90 {quantile(values, 0.9):.2f} s"
        )
    ratio = statistics.median(container) / statistics.median(process)
    extra = statistics.median(container) - statistics.median(process)
    print(f"  container/process: {ratio:.2f}x (median), {extra:+.2f} s per build")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    problem = missing_tools()
    if problem:
        sys.exit(problem)
    asyncio.run(main(args.rounds))
