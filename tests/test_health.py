"""``GET <prefix>health``: one check per part, 503 with the failing ones, fast
when healthy, red while Docker is missing and green again once it is back; and
the pages' notice while a check fails."""

from __future__ import annotations

import time

import pytest
import requests

from tljh_repo2docker.service import health, pages

from .serviceprocess import DockerForwarder, ServiceProcess


def test_low_disk_fails_with_the_path_and_what_is_free(tmp_path):
    ok = health.disk_result({"homes": str(tmp_path)}, min_free=1)
    assert ok.ok and ok.details["homes"]["free_bytes"] > 0
    low = health.disk_result({"homes": str(tmp_path)}, min_free=1 << 62)
    assert not low.ok and str(tmp_path) in low.message and "free" in low.message


def test_the_queue_check_fails_beyond_the_cap_or_a_long_wait():
    assert health.queue_result(2, 5, 30.0, cap=2, max_wait=3600).ok
    assert not health.queue_result(3, 0, None, cap=2, max_wait=3600).ok
    waited = health.queue_result(1, 1, 4000.0, cap=2, max_wait=3600)
    assert not waited.ok and waited.details["oldest_queued_seconds"] == 4000.0


def test_pages_show_a_notice_while_a_check_fails():
    template = pages.page_templates().get_template("service/base.html")
    common = dict(
        prefix="/services/environments/", base_url="/", static_url=lambda *a, **k: "/static"
    )
    problem = {"docker": "the Docker engine does not answer: <b>gone</b>"}
    page = template.render(health_problems=problem, **common)
    assert 'id="health-notice"' in page
    assert "&lt;b&gt;gone&lt;/b&gt;" in page and "<b>gone" not in page
    assert 'id="health-notice"' not in template.render(health_problems={}, **common)


def get_health(service) -> requests.Response:
    try:
        return service.get("health")
    except requests.ConnectionError as e:
        raise AssertionError(service.log_tail()) from e


def wait_status(service, status: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = get_health(service)
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            return r.json()
        time.sleep(0.2)


@pytest.mark.docker
def test_health_turns_red_without_docker_and_green_again(hub, tmp_path):
    forwarder = DockerForwarder(tmp_path / "docker.sock")
    settings = {**hub.settings, "db_url": f"sqlite:///{tmp_path}/db.sqlite"}
    service = ServiceProcess(hub, tmp_path / "svc", settings, forwarder.docker_host)
    service.start()
    try:
        red = wait_status(service, 503)
        assert not red["ok"] and not red["checks"]["docker"]["ok"]
        assert "Docker" in red["checks"]["docker"]["message"]
        # the other checks still say how they are
        assert red["checks"]["store"]["ok"] and red["checks"]["store"]["schema_version"] >= 1
        assert red["checks"]["hub"]["ok"] and red["checks"]["queue"]["ok"]

        forwarder.on()
        green = wait_status(service, 200)
        assert green["ok"] and set(green["checks"]) == {"docker", "store", "queue", "disk", "hub"}
        assert all(c["ok"] for c in green["checks"].values()), green
        assert green["checks"]["docker"]["buildx"]
        assert green["checks"]["docker"]["build_backend"] == "process"  # one host, no registry
        assert green["checks"]["disk"]["images"]["free_bytes"] > 0
        assert green["checks"]["disk"]["homes"]["free_bytes"] > 0
        assert green["checks"]["queue"] == {
            "ok": True,
            "message": "0 running, 0 queued",
            "running": 0,
            "queued": 0,
            "oldest_queued_seconds": None,
            "cap": 1,
        }

        # healthy answers are fast (slow checks are cached)
        times = []
        for _ in range(40):
            t0 = time.perf_counter()
            assert get_health(service).status_code == 200
            times.append(time.perf_counter() - t0)
        p95 = sorted(times)[int(len(times) * 0.95) - 1]
        assert p95 < 0.05, f"health p95 {p95 * 1000:.1f} ms"

        forwarder.off()  # Docker goes away again, then comes back
        assert not wait_status(service, 503)["checks"]["docker"]["ok"]
        forwarder.on()
        wait_status(service, 200)
        assert service.alive()
    finally:
        service.stop()
        forwarder.off()


@pytest.mark.docker
def test_health_needs_no_login_through_the_hubs_proxy(hub):
    r = requests.get(hub.service_url + "/health", timeout=30)
    assert r.status_code in (200, 503), r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert set(r.json()["checks"]) == {"docker", "store", "queue", "disk", "hub"}
