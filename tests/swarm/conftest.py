"""The ``cluster`` fixture: a real swarm and registry (``cluster.py``), one
per test module, removed afterwards even when a test or the start failed."""

from __future__ import annotations

import pytest

from .cluster import Cluster, missing_prerequisites


def write_notice(request, text: str) -> None:
    """Straight to the terminal (timings, logs), also when tests pass."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


@pytest.fixture(scope="module")
def cluster(request):
    problem = missing_prerequisites()
    if problem:
        pytest.fail(f"the swarm tests cannot run: {problem}")
    swarm = Cluster(workers=2)
    try:
        yield swarm.start()
    except BaseException:
        # a failed start: what the nodes said is the only clue
        write_notice(request, "\n".join(swarm.node_log(node) for node in swarm.nodes))
        raise
    finally:
        if getattr(request.node, "_failed", False):
            write_notice(request, "\n".join(swarm.node_log(node) for node in swarm.nodes))
        swarm.close()
        timings = "\n".join(f"  {step}: {seconds}" for step, seconds in swarm.timings.items())
        built = ", ".join(f"{name}={now}" for name, now in swarm.built.items())
        write_notice(request, f"\n=== swarm timings (s); images built now: {built} ===\n{timings}")
        left = swarm.leftovers()
        assert not left, f"left over after the swarm: {left}"
