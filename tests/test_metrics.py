"""``GET <prefix>metrics``: Prometheus text that moves by exactly what
happened, behind the hub's ``read:metrics`` scope."""

from __future__ import annotations

import secrets

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tljh_repo2docker.service import metrics

from .dockerfixtures import make_git_repo
from .serviceprocess import ServiceProcess

SUFFIX = secrets.token_hex(3)


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from the exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_image_disk_labels_are_bounded():
    class Info:
        def __init__(self, environment, size):
            self.environment, self.size = environment, size

    images = [Info(f"env{i}", 1000 + i) for i in range(5)] + [Info("env4", 10)]
    kept = metrics.image_disk_by_environment(images, limit=2)
    assert kept == {"env4": 1014, "env3": 1003, metrics.OTHER: 1000 + 1001 + 1002}


def test_events_move_the_counters_by_exactly_one():
    m = metrics.Metrics()
    before = samples(m.exposition().decode())
    m.build_finished("succeeded", cached=False, duration=42.0)
    m.build_finished("failed", cached=True, duration=0.2)
    m.quota_refused("builds_per_day")
    m.quota_refused("something-a-user-typed")  # never a label value of its own
    m.queue_wait(3.0)
    after = samples(m.exposition().decode())
    name = "tljh_repo2docker_"
    assert value(after, name + "builds_total", outcome="succeeded", cached="false") == 1
    assert value(after, name + "builds_total", outcome="failed", cached="true") == 1
    assert value(before, name + "builds_total", outcome="failed", cached="true") == 0
    assert (
        value(after, name + "build_duration_seconds_sum", outcome="succeeded", cached="false")
        == 42.0
    )
    assert value(after, name + "quota_refusals_total", quota="builds_per_day") == 1
    assert value(after, name + "quota_refusals_total", quota="other") == 1
    assert value(after, name + "build_queue_wait_seconds_count") == 1
    assert not any("something" in str(key) for key in after)


# --- a real service ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens(hub):
    for name in ("admin", "mreader"):
        hub.api("POST", f"/users/{name}")
    r = hub.api("POST", "/users/admin/tokens", json={"scopes": ["read:metrics"]})
    assert r.status_code == 201, r.text
    return {
        "admin": hub.user_token("admin"),
        "scraper": r.json()["token"],  # what a Prometheus scraper gets
        "user": hub.user_token("mreader"),
    }


@pytest.fixture(scope="module")
def service(hub, tmp_path_factory):
    directory = tmp_path_factory.mktemp("metrics")
    settings = {
        **hub.settings,
        "db_url": f"sqlite:///{directory}/db.sqlite",
        "max_environments_per_user": 0,  # every user's creation is a quota refusal
    }
    service = ServiceProcess(hub, directory, settings).start()
    yield service
    service.stop()


def scrape(service, token) -> dict:
    r = service.get("metrics", token)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return samples(r.text)


@pytest.mark.docker
def test_anonymous_and_users_without_the_scope_are_refused(hub, service, tokens):
    for token in (None, tokens["user"], "not-a-token"):
        r = service.get("metrics", token)
        assert r.status_code == 403, (token, r.status_code, r.text)
        assert "read:metrics" in r.json()["message"]
    # through the hub's proxy too
    assert requests.get(hub.service_url + "/metrics", timeout=30).status_code == 403


@pytest.mark.docker
def test_metrics_move_by_exactly_what_happened(service, tokens, hub_name, tmp_path):
    name = f"metrics-{SUFFIX}"
    p = "tljh_repo2docker_"
    before = scrape(service, tokens["scraper"])
    assert value(before, p + "environments") == 0

    repo = make_git_repo(tmp_path / "repo", marker=f"{hub_name}-metrics")
    body = {"name": name, "repo": f"file://{repo}", "ref": "HEAD"}
    r = service.request("POST", "api/v1/environments", tokens["admin"], json=body)
    assert r.status_code == 201, r.text
    first = service.wait_build(tokens["admin"], name, r.json()["latest_build"]["id"])
    assert first["status"] == "succeeded" and not first["cached"], first
    r = service.request("POST", f"api/v1/environments/{name}/builds", tokens["admin"], json={})
    again = service.wait_build(tokens["admin"], name, r.json()["id"])
    assert again["status"] == "succeeded" and again["cached"], again
    refused = service.request(
        "POST",
        "api/v1/environments",
        tokens["user"],
        # (users may not build local repositories; refused before any fetch)
        json={**body, "name": name + "-u", "repo": "https://127.0.0.1:9/repo.git"},
    )
    assert refused.status_code == 429, refused.text

    after = scrape(service, tokens["admin"])  # an admin's own token works too

    def delta(sample, **labels):
        return value(after, p + sample, **labels) - value(before, p + sample, **labels)

    assert delta("builds_total", outcome="succeeded", cached="false") == 1
    assert delta("builds_total", outcome="succeeded", cached="true") == 1
    assert delta("builds_total", outcome="failed", cached="false") == 0
    assert delta("build_duration_seconds_count", outcome="succeeded", cached="false") == 1
    assert delta("build_duration_seconds_count", outcome="succeeded", cached="true") == 1
    assert delta("build_queue_wait_seconds_count") == 1  # the cached build never queued
    assert delta("quota_refusals_total", quota="environments") == 1
    assert delta("quota_refusals_total", quota="builds_at_once") == 0
    assert value(after, p + "environments") == 1
    assert value(after, p + "build_queue_length") == 0
    assert value(after, p + "builds_running") == 0
    size = service.get(f"api/v1/environments/{name}", tokens["admin"]).json()["size"]
    assert value(after, p + "image_disk_bytes", environment=name) == size
