"""Launches in the environments service's ``/metrics``: each /build stream is
counted once by how it ended, and the phases it completed are timed; the
exposition text moves by exactly what happened (real hub, service, Docker)."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tljh_repo2docker import providers
from tljh_repo2docker.service.metrics import LaunchRecord, Metrics

from .dockerfixtures import commit_change, make_git_repo

NAME = "tljh_repo2docker_"
OUTCOMES = ("ready", "failed", "refused", "cancelled")
PHASES = ("resolve", "build", "start", "total")


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from the exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((NAME + name, tuple(sorted(labels.items()))), 0.0)


def launches(found: dict) -> dict:
    """{(outcome, build_only): count}, every series the text has."""
    return {
        (outcome, build_only): value(
            found, "launches_total", outcome=outcome, build_only=build_only
        )
        for outcome in OUTCOMES
        for build_only in ("true", "false")
    }


def phase_counts(found: dict) -> dict:
    return {
        phase: value(found, "launch_phase_duration_seconds_count", phase=phase) for phase in PHASES
    }


def moved(before: dict, after: dict) -> dict:
    """Only the entries that changed, by how much."""
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


# --- the record alone -------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_record_times_completed_phases_and_counts_once():
    m = Metrics()
    clock = Clock()
    ready = LaunchRecord(m, build_only=False, clock=clock)
    ready.phase("resolve")
    clock.now += 1
    ready.phase("build")
    clock.now += 20
    ready.phase("start")
    clock.now += 4
    ready.end("ready")
    ready.end("failed")  # a launch ends once
    failed = LaunchRecord(m, build_only=True, clock=clock)
    failed.phase("resolve")
    clock.now += 2
    failed.phase("build")
    clock.now += 50
    failed.end("failed")  # the build it failed in is not a build's time
    LaunchRecord(m, clock=clock).end("something-a-user-typed")  # never a label
    LaunchRecord(None).end("ready")  # no metrics: nothing, and no error
    found = samples(m.exposition().decode())
    assert {k: v for k, v in launches(found).items() if v} == {
        ("ready", "false"): 1,
        ("failed", "true"): 1,
        ("failed", "false"): 1,
    }
    assert phase_counts(found) == {"resolve": 2, "build": 1, "start": 1, "total": 1}
    sums = {
        phase: value(found, "launch_phase_duration_seconds_sum", phase=phase) for phase in PHASES
    }
    assert sums == {"resolve": 3.0, "build": 20.0, "start": 4.0, "total": 25.0}
    # every series shows from the first scrape on
    fresh = samples(Metrics().exposition().decode())
    assert len(launches(fresh)) == 8
    assert all(
        (NAME + "launches_total", tuple(sorted({"outcome": o, "build_only": b}.items()))) in fresh
        for o, b in launches(fresh)
    )
    assert all(
        (NAME + "launch_phase_duration_seconds_count", (("phase", p),)) in fresh for p in PHASES
    )


def test_a_broken_registry_never_fails_the_launch():
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("broken metrics")

    record = LaunchRecord(Broken())
    record.phase("resolve")
    record.phase("build")
    record.end("ready")
    assert record.outcome == "ready"


# --- a real hub -------------------------------------------------------------------------
USER = "admin"  # file:// repositories launch for admins only


@pytest.fixture(scope="module")
def admin(hub):
    return hub.user_token(USER)


def scrape(hub, token) -> dict:
    r = requests.get(
        hub.service_url + "/metrics", headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return samples(r.text)


def stream(hub, token, path: str, timeout: float = 240) -> list[dict]:
    """The events of one /build stream, up to ready or failed."""
    r = requests.get(
        f"{hub.service_url}/build/{path}",
        headers={"Authorization": f"token {token}"},
        stream=True,
        timeout=timeout,
    )
    assert r.status_code == 200, r.text
    out = []
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            out.append(json.loads(line[len("data: ") :]))
            if out[-1]["phase"] in ("ready", "failed"):
                break
    r.close()
    return out


def file_spec(repo) -> str:
    return "git/" + quote(f"file://{repo}", safe="") + "/main"


@pytest.mark.docker
def test_launches_move_the_metrics_by_exactly_what_happened(hub, admin, hub_name, tmp_path):
    good = make_git_repo(tmp_path / "good", marker=f"{hub_name}-launch-metrics")
    bad = make_git_repo(tmp_path / "bad", marker=f"{hub_name}-launch-metrics-bad")
    commit_change(bad, "RUN false")
    before = scrape(hub, admin)

    # a launch that builds and starts a server: ready, each phase once
    got = stream(hub, admin, file_spec(good))
    assert got[-1]["phase"] == "ready", got[-1]
    assert "building" in [e["phase"] for e in got]
    after_ready = scrape(hub, admin)
    assert moved(launches(before), launches(after_ready)) == {("ready", "false"): 1}
    assert moved(phase_counts(before), phase_counts(after_ready)) == {p: 1 for p in PHASES}
    total = value(after_ready, "launch_phase_duration_seconds_sum", phase="total") - value(
        before, "launch_phase_duration_seconds_sum", phase="total"
    )
    parts = sum(
        value(after_ready, "launch_phase_duration_seconds_sum", phase=p)
        - value(before, "launch_phase_duration_seconds_sum", phase=p)
        for p in ("resolve", "build", "start")
    )
    assert 0 < parts <= total + 1e-6

    # bad specs are refused before anything runs: counted, no phase timed
    for path in ("svn/x/y/main", "svn/x/y/main?build_only=true"):
        got = stream(hub, admin, path, timeout=60)
        assert got == [got[0]] and got[0]["status_code"] == 400, got
    # and, in the stream, a launch by a token that may not build (before any fetch)
    hub.user_token("lm-reader")
    r = hub.api(
        "POST",
        "/users/lm-reader/tokens",
        json={"scopes": ["custom:environments:read", "access:services!service=environments"]},
    )
    assert r.status_code == 201, r.text
    got = stream(hub, r.json()["token"], "gh/org/never-built/main", timeout=60)
    assert [e["phase"] for e in got] == ["waiting", "failed"], got
    after_refused = scrape(hub, admin)
    assert moved(launches(after_ready), launches(after_refused)) == {
        ("refused", "false"): 2,
        ("refused", "true"): 1,
    }
    assert moved(phase_counts(after_ready), phase_counts(after_refused)) == {}

    # a build that fails: failed, and only the resolve phase it completed is timed
    got = stream(hub, admin, file_spec(bad) + "?build_only=true")
    assert got[-1]["phase"] == "failed", got[-1]
    assert "Build failed" in got[-1]["message"], got[-1]
    after_failed = scrape(hub, admin)
    assert moved(launches(after_refused), launches(after_failed)) == {("failed", "true"): 1}
    assert moved(phase_counts(after_refused), phase_counts(after_failed)) == {"resolve": 1}

    spec = providers.parse("git", file_spec(good)[4:], allow_local=True)
    r = hub.api("DELETE", f"/users/{USER}/servers/{spec.server_name}")
    assert r.status_code in (202, 204)
    hub.wait_stopped(USER, spec.server_name)


@pytest.mark.docker
def test_a_client_that_leaves_is_counted_as_cancelled(hub, admin, hub_name, tmp_path):
    slow = make_git_repo(tmp_path / "slow", marker=f"{hub_name}-launch-metrics-slow")
    commit_change(slow, "RUN for i in 1 2 3 4 5 6; do echo step $i; sleep 1; done")
    before = scrape(hub, admin)
    r = requests.get(
        f"{hub.service_url}/build/{file_spec(slow)}",
        headers={"Authorization": f"token {admin}"},
        stream=True,
        timeout=120,
    )
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("data: ") and json.loads(line[6:])["phase"] == "building":
            break  # the build runs: leave
    r.close()
    # the service sees it at its next write (the build's next log line)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        after = scrape(hub, admin)
        if moved(launches(before), launches(after)):
            break
        time.sleep(1)
    assert moved(launches(before), launches(after)) == {("cancelled", "false"): 1}
    assert moved(phase_counts(before), phase_counts(after)) == {"resolve": 1}
