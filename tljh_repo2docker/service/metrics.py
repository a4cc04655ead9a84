"""Prometheus metrics of the environments service (``GET <prefix>metrics``).

A private ``CollectorRegistry`` per service: nothing of the process-global
default registry (or of a second service in one test process) mixes in.
Events (builds ending, queue waits, quota refusals) are counted as they
happen; what can be read (queue length, image disk, environments) is set
just before each scrape. Label values come from fixed sets, except the
environment of the image-disk gauge: the largest ``MAX_ENVIRONMENT_LABELS``
environments get their own series and the rest are summed under ``_other``.
"""

from __future__ import annotations

import json
from collections import defaultdict

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select

from ..catalogue import DockerUnavailable
from . import store
from .handlers import BaseHandler

# JupyterHub's own scope for /hub/metrics: one scraper token (a service with
# the role scopes ["read:metrics"]) reads both; admins have it already.
METRICS_SCOPE = "read:metrics"

PREFIX = "tljh_repo2docker_"
MAX_ENVIRONMENT_LABELS = 100
OTHER = "_other"
OUTCOMES = store.FINAL_STATES
QUOTAS = ("builds_at_once", "builds_per_day", "environments")
# a cached build takes well under a second; a real one seconds to an hour
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
WAIT_BUCKETS = (0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


def image_disk_by_environment(images, limit: int = MAX_ENVIRONMENT_LABELS) -> dict[str, int]:
    """Bytes of images per environment: the ``limit`` largest by name, the
    rest summed under ``_other`` (bounded label cardinality)."""
    sizes: dict[str, int] = defaultdict(int)
    for info in images:
        sizes[info.environment] += int(info.size or 0)
    ranked = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:limit])
    rest = sum(size for _, size in ranked[limit:])
    if rest:
        kept[OTHER] = rest
    return kept


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.builds = Counter(
            PREFIX + "builds",
            "Builds that ended, by outcome (cached: an image of the commit existed)",
            ["outcome", "cached"],
            registry=r,
        )
        self.build_duration = Histogram(
            PREFIX + "build_duration_seconds",
            "Time repo2docker ran for a build (for a cached build: request to done)",
            ["outcome", "cached"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            PREFIX + "build_queue_wait_seconds",
            "Time a build waited in the queue for a place under the concurrency cap",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.queue_length = Gauge(
            PREFIX + "build_queue_length", "Builds waiting for a place", registry=r
        )
        self.builds_running = Gauge(
            PREFIX + "builds_running", "Builds running repo2docker now", registry=r
        )
        self.quota_refusals = Counter(
            PREFIX + "quota_refusals",
            "Requests refused because a user's quota was reached, by quota",
            ["quota"],
            registry=r,
        )
        self.image_disk = Gauge(
            PREFIX + "image_disk_bytes",
            "Disk taken by the images of an environment, all versions, as Docker reports "
            f"(the {MAX_ENVIRONMENT_LABELS} largest; the rest as environment={OTHER})",
            ["environment"],
            registry=r,
        )
        self.environments = Gauge(
            PREFIX + "environments", "Environments in the service's database", registry=r
        )
        self.versions = Gauge(
            PREFIX + "versions", "Built versions (images) of all environments", registry=r
        )
        # every outcome and quota shows (as 0) from the first scrape on, so
        # that rate() and alerts see the series before the first event
        for outcome in OUTCOMES:
            for cached in ("true", "false"):
                self.builds.labels(outcome, cached)
        for quota in QUOTAS:
            self.quota_refusals.labels(quota)

    # --- events -------------------------------------------------------------------
    def build_finished(self, outcome: str, cached: bool, duration: float):
        outcome = outcome if outcome in OUTCOMES else "failed"
        label = "true" if cached else "false"
        self.builds.labels(outcome, label).inc()
        self.build_duration.labels(outcome, label).observe(max(0.0, duration))

    def queue_wait(self, seconds: float):
        self.queue_wait_seconds.observe(max(0.0, seconds))

    def quota_refused(self, quota: str):
        self.quota_refusals.labels(quota if quota in QUOTAS else "other").inc()

    # --- read at scrape time ------------------------------------------------------
    async def refresh(self, service):
        builds = service.builds
        self.queue_length.set(len(builds.waiting))
        self.builds_running.set(len(builds.running))
        with service.sessions() as db:
            self.environments.set(db.scalar(select(func.count(store.Environment.id))) or 0)
        try:
            images = await service.catalogue.images()
        except DockerUnavailable:
            return  # the image figures keep their last values; /health says why
        self.versions.set(len(images))
        self.image_disk.clear()  # removed environments leave no series behind
        for name, size in image_disk_by_environment(images).items():
            self.image_disk.labels(name).set(size)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsHandler(BaseHandler):
    """Prometheus text, for a token (or login) with ``read:metrics``."""

    @property
    def hub_scopes(self):
        return {METRICS_SCOPE}

    def check_xsrf_cookie(self):
        return None  # GET only

    async def get(self):
        if self.current_user is None:
            self.set_status(403)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            message = f"metrics need a hub API token with the scope {METRICS_SCOPE}"
            self.finish(json.dumps({"status": 403, "message": message}))
            return
        service = self.service
        await service.metrics.refresh(service)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(service.metrics.exposition())
