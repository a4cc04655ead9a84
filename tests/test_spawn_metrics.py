"""The spawner's figures in the hub's ``/hub/metrics`` with a real hub, and
admission control: with one start at a time, a second user waits, is told
so, and the metrics move by exactly what happened."""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .dockerfixtures import dump_container_logs, remove_hub_objects
from .hubprocess import HubProcess

pytestmark = pytest.mark.docker

NAME = "tljh_repo2docker_"


@pytest.fixture(scope="module")
def hub(docker_ready, tmp_path_factory, hub_name, hub_settings, request):
    prefix = tmp_path_factory.mktemp("tljh")
    config_d = prefix / "config" / "jupyterhub_config.d"
    config_d.mkdir(parents=True)
    (config_d / "admission.py").write_text("c.Repo2DockerSpawner.max_concurrent_starts = 1\n")
    process = HubProcess(prefix, hub_settings, token=secrets.token_hex(16))
    try:
        yield process.start()
    finally:
        if getattr(request.node, "_failed", False):
            sys.stderr.write(f"\n=== hub log ===\n{process.log_tail(200)}\n")
            sys.stderr.write(f"=== containers ===\n{dump_container_logs(hub_name)}\n")
        process.stop()
        remove_hub_objects(hub_name)


@pytest.fixture(scope="module")
def built(hub, git_repo):
    admin = hub.user_token("admin")
    build = hub.build_environment("demo", f"file://{git_repo}", "v1", admin)
    assert build["status"] == "succeeded", build
    for user in ("alice", "bob", "mallory"):
        hub.api("POST", f"/users/{user}")


@pytest.fixture(scope="module")
def scraper(hub):
    r = hub.api("POST", "/users/admin/tokens", json={"scopes": ["read:metrics"]})
    assert r.status_code == 201, r.text
    token = r.json()["token"]

    def scrape() -> dict:
        r = requests.get(
            hub.url + "/hub/metrics", headers={"Authorization": f"token {token}"}, timeout=30
        )
        assert r.status_code == 200, r.text[:300]
        found = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return found

    return scrape


def value(found: dict, name: str, **labels) -> float:
    return found.get((NAME + name, tuple(sorted(labels.items()))), 0.0)


def total(found: dict, name: str) -> float:
    return sum(v for (n, _), v in found.items() if n == NAME + name)


def progress_messages(hub, user: str, out: list, deadline: float):
    """The user's progress messages while their server starts."""
    while time.monotonic() < deadline:
        server = hub.api("GET", f"/users/{user}").json().get("servers", {}).get("")
        if server and server.get("ready"):
            return
        if server and server.get("pending"):
            break
        time.sleep(0.05)
    r = requests.get(
        f"{hub.url}/hub/api/users/{user}/server/progress",
        headers={"Authorization": f"token {hub.token}"},
        stream=True,
        timeout=120,
    )
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            out.append(event.get("message", ""))
            if event.get("ready") or event.get("failed"):
                return


def test_metrics_move_by_exactly_what_happened(hub, built, scraper):
    before = scraper()
    assert value(before, "spawns_waiting_for_admission") == 0

    # a refused start: the reason is counted, never the name asked for
    r = hub.api("POST", "/users/mallory/server", json={"environment": "no-such-env"})
    assert r.status_code == 400, r.text

    # two starts at once with room for one: the second waits its turn
    messages = {"alice": [], "bob": []}
    answers = {}
    deadline = time.monotonic() + 120

    def start(user):
        answers[user] = hub.api("POST", f"/users/{user}/server", json={"environment": "demo"})

    threads = [threading.Thread(target=start, args=(u,)) for u in messages]
    threads += [
        threading.Thread(target=progress_messages, args=(hub, u, messages[u], deadline))
        for u in messages
    ]
    for t in threads:
        t.start()
    saw_waiting = False
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        during = scraper()
        if value(during, "spawns_waiting_for_admission") == 1:
            saw_waiting = True
            assert value(during, "spawns_starting") == 1
        time.sleep(0.3)
    for t in threads:
        t.join(5)
    for user in messages:
        assert answers[user].status_code in (201, 202), answers[user].text
        hub.wait_ready(user)
    assert saw_waiting
    told = [m for msgs in messages.values() for m in msgs]
    assert "1 server is starting before yours" in told, messages

    after = scraper()
    count = "spawn_duration_seconds_count"
    assert value(after, count, environment="demo", outcome="success") == (
        value(before, count, environment="demo", outcome="success") + 2
    )
    assert value(after, count, environment="_other", outcome="refused") == (
        value(before, count, environment="_other", outcome="refused") + 1
    )
    assert total(after, count) == total(before, count) + 3
    reasons = "spawn_refusals_total"
    assert value(after, reasons, reason="invalid_options") == (
        value(before, reasons, reason="invalid_options") + 1
    )
    assert total(after, reasons) == total(before, reasons) + 1
    assert value(after, "spawns_waiting_for_admission") == 0
    assert value(after, "spawns_starting") == 0
    assert not any("no-such-env" in str(key) for key in after)

    # the records the status page reads: one of the two waited for the other
    lines = (hub.prefix / "state" / "tljh-repo2docker-spawns.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["outcome"] for r in records) == ["refused", "success", "success"]
    assert max(r["queued"] for r in records if r["outcome"] == "success") > 0.5


def test_anonymous_scrape_is_refused(hub):
    r = requests.get(hub.url + "/hub/metrics", timeout=30)
    assert r.status_code == 403
