"""Prometheus metrics of the environments service (``GET <prefix>metrics``).

A private ``CollectorRegistry`` per service: nothing of the process-global
default registry (or of a second service in one test process) mixes in.
Events (builds ending, queue waits, quota refusals, launches ending) are
counted as they happen; what can be read (queue length, image disk, environments) is set
just before each scrape. Label values come from fixed sets, except the
environment of the image-disk gauge: the largest ``MAX_ENVIRONMENT_LABELS``
environments get their own series and the rest are summed under ``_other``.
"""

from __future__ import annotations

import json
import logging
import time
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

log = logging.getLogger(__name__)

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
# how a launch (a /build/ stream) ended: ready (the server, or with build_only
# the image), failed, refused (nothing ran: not logged in, a bad spec, no
# consent, not allowed, a quota) or cancelled (the client left first)
LAUNCH_OUTCOMES = ("ready", "failed", "refused", "cancelled")
# resolve: the request to a commit; build: to the image (near 0 when it
# existed); start: to the server ready; total: the request to a ready server
LAUNCH_PHASES = ("resolve", "build", "start", "total")
# resolving takes a second, a build up to an hour, a start seconds to minutes
PHASE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


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
        self.launches = Counter(
            PREFIX + "launches",
            "Launches (build streams) that ended, by outcome (ready, failed, refused, "
            "cancelled) and whether only the image was asked for",
            ["outcome", "build_only"],
            registry=r,
        )
        self.launch_phase_duration = Histogram(
            PREFIX + "launch_phase_duration_seconds",
            "Time launches spent in each phase they completed (resolve, build, start) "
            "and from request to a ready server (total)",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        # every outcome and quota shows (as 0) from the first scrape on, so
        # that rate() and alerts see the series before the first event
        for outcome in OUTCOMES:
            for cached in ("true", "false"):
                self.builds.labels(outcome, cached)
        for quota in QUOTAS:
            self.quota_refusals.labels(quota)
        for outcome in LAUNCH_OUTCOMES:
            for build_only in ("true", "false"):
                self.launches.labels(outcome, build_only)
        for phase in LAUNCH_PHASES:
            self.launch_phase_duration.labels(phase)

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

    def launch(self, build_only: bool = False) -> LaunchRecord:
        """The record of one launch that starts now."""
        return LaunchRecord(self, build_only)

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


class LaunchRecord:
    """One launch's phases and its outcome, for ``Metrics``.

    ``phase(name)`` says the launch entered a phase, which completes the one
    before it (observed then); ``end(outcome)`` counts the launch once (later
    calls are ignored) and, when it is ready, observes the last phase and, for
    a launch that started a server, the total. The phase a launch failed in is
    not observed: its time is not the time that phase takes. Metrics never
    fail a launch: every error here is logged and dropped.
    """

    def __init__(self, metrics: Metrics | None, build_only: bool = False, clock=time.monotonic):
        self._metrics = metrics
        self.build_only = build_only
        self._clock = clock
        self._started = self._phase_started = clock()
        self._phase: str | None = None
        self.outcome: str | None = None

    def _observe(self, phase: str, seconds: float):
        self._metrics.launch_phase_duration.labels(phase).observe(max(0.0, seconds))

    def phase(self, name: str):
        if self.outcome is not None or self._metrics is None or name not in LAUNCH_PHASES:
            return
        try:
            now = self._clock()
            if self._phase is not None:
                self._observe(self._phase, now - self._phase_started)
            self._phase, self._phase_started = name, now
        except Exception:  # noqa: BLE001 (metrics never fail a launch)
            log.exception("launch metrics: phase %s", name)

    def end(self, outcome: str):
        if self.outcome is not None:
            return
        self.outcome = outcome = outcome if outcome in LAUNCH_OUTCOMES else "failed"
        if self._metrics is None:
            return
        try:
            now = self._clock()
            if outcome == "ready" and self._phase is not None:
                self._observe(self._phase, now - self._phase_started)
                if self._phase == "start":
                    self._observe("total", now - self._started)
            build_only = "true" if self.build_only else "false"
            self._metrics.launches.labels(outcome, build_only).inc()
        except Exception:  # noqa: BLE001 (metrics never fail a launch)
            log.exception("launch metrics: outcome %s", outcome)


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
