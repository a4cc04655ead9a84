"""The admins' status page (``<prefix>status``): is everything up, why was a
start slow, what fills the disk.

Sections: the health checks; image disk per environment and version, largest
first, with the delete forms; builds per day for 30 days by outcome; the
spawn-time distribution of the last day; the slowest and the failed starts
with their reasons. Charts are small SVGs drawn here (nothing from the
internet), coloured by ``static/status.css`` from Bootstrap's variables, so
they follow the hub's light and dark themes.

Spawn times come from the record file the spawner writes in the hub process
(``spawnmetrics``): neither Docker nor the hub keeps when a server first
answered or why a start was refused.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select
from tornado import web

from .. import spawnmetrics, tljhconfig, versions
from . import store
from .pages import PageHandler

BUILD_OUTCOMES = (store.SUCCEEDED, store.FAILED, store.CANCELLED, store.INTERRUPTED)
# seconds: a lone start takes a few, a storm on a 2-core machine up to minutes
SPAWN_BINS = (2, 5, 10, 20, 30, 60, 120)
CHART_WIDTH = 600
CHART_HEIGHT = 120
LIST_LENGTH = 10


# --- pure: the figures ---------------------------------------------------------------
def builds_per_day(rows, today: date, days: int = 30) -> list[dict]:
    """``rows``: (created_at, status). One entry per day, oldest first, with
    a count per final outcome (builds still running are left out)."""
    first = today - timedelta(days=days - 1)
    counts: dict[date, Counter] = defaultdict(Counter)
    for created, status in rows:
        day = created.date()
        if first <= day <= today and status in BUILD_OUTCOMES:
            counts[day][status] += 1
    return [
        {
            "day": first + timedelta(days=n),
            **{o: counts[first + timedelta(days=n)][o] for o in BUILD_OUTCOMES},
        }
        for n in range(days)
    ]


def stacked_bars(days: list[dict], width=CHART_WIDTH, height=CHART_HEIGHT) -> dict:
    """SVG geometry of a stacked bar per day: rects with an outcome class."""
    top = max([sum(d[o] for o in BUILD_OUTCOMES) for d in days] + [1])
    slot = width / max(len(days), 1)
    rects = []
    for n, d in enumerate(days):
        y = height
        for outcome in BUILD_OUTCOMES:
            if not d[outcome]:
                continue
            h = d[outcome] / top * height
            y -= h
            rects.append(
                {
                    "x": round(n * slot + 1, 1),
                    "y": round(y, 1),
                    "w": round(max(slot - 2, 1), 1),
                    "h": round(h, 1),
                    "cls": outcome,
                    "title": f"{d['day'].isoformat()}: {d[outcome]} {outcome}",
                }
            )
    return {"width": width, "height": height, "top": top, "rects": rects}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def spawn_histogram(records: list[dict], bins=SPAWN_BINS) -> list[dict]:
    """Starts per duration bin: successes and the rest apart."""
    edges = [0, *bins]
    out = []
    for n, low in enumerate(edges):
        high = edges[n + 1] if n + 1 < len(edges) else None
        label = f"{low}-{high} s" if high is not None else f"> {low} s"
        out.append({"label": label, "low": low, "high": high, "success": 0, "other": 0})
    for r in records:
        seconds = float(r.get("seconds") or 0)
        for b in reversed(out):
            if seconds >= b["low"]:
                b["success" if r.get("outcome") == "success" else "other"] += 1
                break
    return out


def histogram_bars(bins: list[dict], width=CHART_WIDTH, height=CHART_HEIGHT) -> dict:
    top = max([b["success"] + b["other"] for b in bins] + [1])
    slot = width / max(len(bins), 1)
    rects, labels = [], []
    for n, b in enumerate(bins):
        y = height
        for kind in ("success", "other"):
            if not b[kind]:
                continue
            h = b[kind] / top * height
            y -= h
            what = "ready" if kind == "success" else "failed"
            rects.append(
                {
                    "x": round(n * slot + 2, 1),
                    "y": round(y, 1),
                    "w": round(slot - 4, 1),
                    "h": round(h, 1),
                    "cls": "spawn-ok" if kind == "success" else "spawn-failed",
                    "title": f"{b['label']}: {b[kind]} {what}",
                }
            )
        labels.append({"x": round(n * slot + slot / 2, 1), "text": b["label"]})
    return {"width": width, "height": height, "top": top, "rects": rects, "labels": labels}


def spawn_summary(records: list[dict], limit: int = LIST_LENGTH) -> dict:
    ok = [r for r in records if r.get("outcome") == "success"]
    seconds = [float(r.get("seconds") or 0) for r in ok]
    return {
        "count": len(records),
        "ready": len(ok),
        "p50": percentile(seconds, 50),
        "p95": percentile(seconds, 95),
        "slowest": sorted(ok, key=lambda r: -float(r.get("seconds") or 0))[:limit],
        "failed": sorted(
            (r for r in records if r.get("outcome") != "success"),
            key=lambda r: -float(r.get("time") or 0),
        )[: limit * 2],
    }


def disk_by_environment(images, in_use: set[str]) -> list[dict]:
    """Environments largest first, each with its versions largest first."""
    groups: dict[str, list] = defaultdict(list)
    for info in images:
        groups[info.environment].append(info)
    out = []
    for name, infos in groups.items():
        current = versions.newest_first(infos)[0].commit if infos else ""
        rows = [
            {
                "commit": i.commit,
                "image": i.image,
                "size": int(i.size or 0),
                "built_at": i.built_at or None,
                "current": i.commit == current,
                "in_use": i.image in in_use or i.image_id in in_use,
            }
            for i in infos
        ]
        rows.sort(key=lambda v: (-v["size"], v["commit"]))
        out.append({"name": name, "size": sum(v["size"] for v in rows), "versions": rows})
    out.sort(key=lambda e: (-e["size"], e["name"]))
    return out


def record_file(config) -> str:
    """Where the spawner writes its records (its ``spawn_record_file``)."""
    spawner = config.get("Repo2DockerSpawner", {})
    if "spawn_record_file" in spawner:
        return str(spawner["spawn_record_file"] or "")
    return os.path.join(tljhconfig.state_dir(), "tljh-repo2docker-spawns.jsonl")


# --- the page ------------------------------------------------------------------------
class StatusPage(PageHandler):
    @web.authenticated
    async def get(self):
        if not self.can_manage:
            raise web.HTTPError(403, "Only administrators may see the status page.")
        svc = self.service
        ok, report = await svc.health.report()
        try:
            images = await svc.catalogue.images()
            in_use = await svc.servers.images_in_use()
            disk_error = ""
        except Exception as e:  # Docker down: the rest of the page still helps
            images, in_use, disk_error = [], set(), f"{type(e).__name__}: {e}"[:300]
        disk = disk_by_environment(images, in_use)
        now = store.utcnow()
        with self.db() as db:
            rows = db.execute(
                select(store.Build.created_at, store.Build.status).where(
                    store.Build.created_at >= now - timedelta(days=31)
                )
            ).all()
        days = builds_per_day(rows, now.date())
        path = record_file(svc.config)
        records = spawnmetrics.read_records(path, time.time() - 86400) if path else []
        summary = spawn_summary(records)
        self.render_page(
            "service/status.html",
            active_page="status",
            health_ok=ok,
            checks=report["checks"],
            disk=disk,
            disk_total=sum(e["size"] for e in disk),
            disk_error=disk_error,
            build_days=days,
            build_totals={o: sum(d[o] for d in days) for o in BUILD_OUTCOMES},
            build_chart=stacked_bars(days),
            spawns=summary,
            spawn_chart=histogram_bars(spawn_histogram(records)),
            record_file=path,
            when=lambda t: datetime.fromtimestamp(float(t), timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            ),
        )


def routes(prefix: str) -> list:
    return [(prefix + "status", StatusPage)]
