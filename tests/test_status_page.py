"""The admins' status page with a real hub: who may see it, and that it shows
the health checks, the image disk with the delete forms, the builds, and the
starts (read from the spawner's records), escaped."""

from __future__ import annotations

import re
from datetime import date, datetime

import pytest

from tljh_repo2docker.labels import ImageInfo
from tljh_repo2docker.service import status

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def activity(hub, git_repo):
    # built through the service, so that the build is in its database
    admin = hub.user_token("admin")
    build = hub.build_environment("demo", f"file://{git_repo}", "v1", admin)
    assert build["status"] == "succeeded", build
    # one refused start (a name nobody built, hostile) and one that works
    for user in ("mallory", "alice"):
        hub.api("POST", f"/users/{user}")  # 201, or 409 when it exists
    r = hub.api("POST", "/users/mallory/server", json={"environment": HOSTILE})
    assert r.status_code == 400, r.text
    r = hub.api("POST", "/users/alice/server", json={"environment": "demo"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    r = hub.api("DELETE", "/users/alice/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("alice")


@pytest.mark.docker
def test_an_admin_sees_every_section(hub, activity):
    session = hub.login("admin")
    url = hub.service_url + "/status"
    r = session.get(url)
    assert r.status_code == 200 and r.url == url, (r.status_code, r.url)
    page = r.text
    for section in (
        "status-health",
        "status-disk",
        "status-builds",
        "status-spawns",
        "status-slowest",
        "status-failed",
    ):
        assert f'id="{section}"' in page, section
    # every health check, passing
    for check in ("docker", "store", "queue", "disk", "hub"):
        assert f'data-check="{check}" data-ok="true"' in page, check
    # the image, with the way to delete it
    assert 'data-environment="demo"' in page
    assert re.search(
        r'action="/services/environments/environments/demo/versions/[0-9a-f]+/delete"', page
    )
    # today's build in the chart, the start and the refusal in theirs
    assert 'class="r2d-bar-succeeded"' in page
    assert 'class="r2d-bar-spawn-ok"' in page
    assert 'class="r2d-bar-spawn-failed"' in page
    assert "1 ready" in page
    failed = re.findall(r'<tr class="r2d-status-failed-start">(.*?)</tr>', page, re.S)
    assert len(failed) == 1 and "mallory" in failed[0] and "refused" in failed[0]
    assert "&lt;img src=x onerror=alert(1)&gt;" in failed[0]
    assert HOSTILE not in page
    # nothing from the internet: no absolute URL in src or href
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert 'id="tljh-repo2docker-status-nav"' in page


@pytest.mark.docker
def test_a_user_gets_403(hub, activity):
    session = hub.login("alice")
    r = session.get(hub.service_url + "/status")
    assert r.status_code == 403
    assert "administrators" in r.text
    listing = session.get(hub.service_url + "/")
    assert listing.status_code == 200
    assert "tljh-repo2docker-status-nav" not in listing.text


# --- the figures (pure) -------------------------------------------------------------
def test_builds_per_day_keeps_30_days_and_final_outcomes():
    today = date(2026, 3, 31)
    rows = [
        (datetime(2026, 3, 31, 9), "succeeded"),
        (datetime(2026, 3, 31, 10), "failed"),
        (datetime(2026, 3, 31, 11), "running"),  # not finished: left out
        (datetime(2026, 3, 2, 0, 1), "cancelled"),  # the 30th day back
        (datetime(2026, 3, 1, 23), "succeeded"),  # 31 days back: out
    ]
    days = status.builds_per_day(rows, today)
    assert len(days) == 30 and days[0]["day"] == date(2026, 3, 2)
    assert days[-1] == {"day": today, "succeeded": 1, "failed": 1, "cancelled": 0, "interrupted": 0}
    assert days[0]["cancelled"] == 1
    assert sum(d["succeeded"] for d in days) == 1
    chart = status.stacked_bars(days, width=300, height=100)
    assert chart["top"] == 2
    assert sorted(r["cls"] for r in chart["rects"]) == ["cancelled", "failed", "succeeded"]
    assert all(0 <= r["y"] and r["y"] + r["h"] <= 100.01 for r in chart["rects"])


def test_percentile_and_spawn_figures():
    assert status.percentile([], 50) is None
    assert status.percentile([3, 1, 2], 50) == 2
    assert status.percentile(list(range(1, 101)), 95) == 95
    records = [
        {"time": 1, "outcome": "success", "seconds": 1.5},
        {"time": 2, "outcome": "success", "seconds": 40},
        {"time": 3, "outcome": "refused", "seconds": 0.1, "reason": "busy"},
        {"time": 4, "outcome": "timeout", "seconds": 200},
    ]
    bins = status.spawn_histogram(records)
    by_label = {b["label"]: (b["success"], b["other"]) for b in bins}
    assert by_label["0-2 s"] == (1, 1)
    assert by_label["30-60 s"] == (1, 0)
    assert by_label["> 120 s"] == (0, 1)
    summary = status.spawn_summary(records)
    assert summary["ready"] == 2 and summary["p50"] == 1.5
    assert [r["seconds"] for r in summary["slowest"]] == [40, 1.5]
    assert [r["time"] for r in summary["failed"]] == [4, 3]  # newest first


def test_disk_is_largest_first():
    def image(env, commit, size, built_at):
        return ImageInfo(
            image=f"r/{env}:{commit}",
            image_id=f"sha256:{env}{commit}",
            environment=env,
            display_name=env,
            repo="",
            ref="",
            commit=commit,
            size=size,
            built_at=built_at,
        )

    images = [
        image("small", "a1", 10, "2026-01-01T00:00:00Z"),
        image("big", "b1", 50, "2026-01-01T00:00:00Z"),
        image("big", "b2", 70, "2026-01-02T00:00:00Z"),
    ]
    disk = status.disk_by_environment(images, in_use={"r/big:b1"})
    assert [e["name"] for e in disk] == ["big", "small"]
    assert disk[0]["size"] == 120
    assert [(v["commit"], v["current"], v["in_use"]) for v in disk[0]["versions"]] == [
        ("b2", True, False),
        ("b1", False, True),
    ]
