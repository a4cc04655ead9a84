"""The spawner's figures: Prometheus metrics in the hub and a spawn record file.

Metrics go into prometheus_client's default registry, the one JupyterHub
serves at ``/hub/metrics``; they are made on first use, so that a process
that only reads the records (the environments service) does not serve them
empty. Label values are bounded: the environment label names catalogue
environments only, at most ``MAX_ENVIRONMENT_LABELS`` per process, then
``_other`` (never an environment's name: names start with a letter or digit).

The record file holds one JSON line per finished start (when, who, which
environment, how long it waited for its turn, how long it took, outcome and
reason). The status page reads it: neither Docker nor the hub keeps when a
server first answered. It is rotated once past ``MAX_RECORD_BYTES`` (one
older file kept), so it never grows without bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

PREFIX = "tljh_repo2docker_"
MAX_ENVIRONMENT_LABELS = 50
OTHER = "_other"
# a lone start takes a few seconds, a storm on a 2-core machine up to minutes
DURATION_BUCKETS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, float("inf"))
OUTCOMES = ("success", "refused", "failure", "timeout")
REFUSAL_REASONS = (
    "invalid_options",
    "not_found",
    "conflict",
    "image_gone",
    "busy",
    "unavailable",
    "other",
)
MAX_RECORD_BYTES = 2 << 20
MAX_TEXT = 300


def refusal_reason(status: int, reason: str = "") -> str:
    """The bounded reason label of a refused start."""
    if reason in REFUSAL_REASONS:
        return reason
    return {
        400: "invalid_options",
        404: "not_found",
        409: "conflict",
        410: "image_gone",
        503: "unavailable",
    }.get(status, "other")


def outcome_of(error: BaseException | None, status: int | None = None) -> str:
    """success, refused (4xx, or the hub too busy or Docker unavailable),
    timeout (the hub gave up, or the server never answered), failure."""
    if error is None:
        return "success"
    if isinstance(error, (TimeoutError, asyncio.CancelledError)) or status == 504:
        return "timeout"
    if status is not None and (400 <= status < 500 or status == 503):
        return "refused"
    return "failure"


class EnvironmentLabels:
    """Environment label values: the first ``limit`` names seen, then OTHER."""

    def __init__(self, limit: int = MAX_ENVIRONMENT_LABELS):
        self.limit = limit
        self._seen: set[str] = set()

    def label(self, environment: str | None) -> str:
        if not environment:
            return OTHER
        if environment in self._seen:
            return environment
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(environment)
        return environment


class SpawnMetrics:
    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = registry or REGISTRY
        self.labels = EnvironmentLabels()
        self.duration = Histogram(
            PREFIX + "spawn_duration_seconds",
            "Time from the spawner's start to the server's first answer (or the "
            "failure), admission wait included, by environment and outcome",
            ["environment", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.refusals = Counter(
            PREFIX + "spawn_refusals",
            "Starts the spawner refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.waiting = Gauge(
            PREFIX + "spawns_waiting_for_admission",
            "Servers waiting for their turn to start (admission control)",
            registry=registry,
        )
        self.starting = Gauge(
            PREFIX + "spawns_starting",
            "Servers starting now (admitted, not yet answering)",
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)  # every series from 0

    def observe(self, environment: str | None, outcome: str, seconds: float):
        self.duration.labels(self.labels.label(environment), outcome).observe(seconds)

    def refused(self, reason: str):
        self.refusals.labels(reason).inc()


_metrics: SpawnMetrics | None = None
_metrics_lock = threading.Lock()


def hub_metrics() -> SpawnMetrics:
    """The hub process's spawn metrics, registered on first use."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = SpawnMetrics()
        return _metrics


# --- the record file --------------------------------------------------------------
def record_line(
    *,
    user: str,
    server: str,
    environment: str | None,
    outcome: str,
    seconds: float,
    queued: float,
    reason: str = "",
    when: float | None = None,
) -> str:
    return json.dumps(
        {
            "time": round(time.time() if when is None else when, 3),
            "user": user[:MAX_TEXT],
            "server": server[:MAX_TEXT],
            "environment": (environment or "")[:MAX_TEXT],
            "outcome": outcome,
            "seconds": round(seconds, 3),
            "queued": round(queued, 3),
            "reason": (reason or "")[:MAX_TEXT],
        },
        ensure_ascii=True,
    )


_write_lock = threading.Lock()


def append_record(path: str, line: str, max_bytes: int = MAX_RECORD_BYTES) -> None:
    """Append one record; rotate to ``path + '.1'`` once the file is too big."""
    with _write_lock:
        try:
            if os.path.getsize(path) > max_bytes:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write(line + "\n")


def read_records(path: str, since: float) -> list[dict]:
    """Records newer than ``since`` (unix time) from the file and its
    rotated predecessor; lines that do not parse are skipped."""
    records = []
    for name in (path + ".1", path):
        try:
            with open(name, encoding="ascii", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
                if float(record["time"]) >= since:
                    records.append(record)
            except (ValueError, KeyError, TypeError):
                continue
    return records
