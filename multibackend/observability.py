"""Prometheus metrics, correct across gunicorn workers (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import time

import redis
from flask import Response, g
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from multibackend.extensions import get_redis

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

DELIVERIES = Counter(
    "chatwoot_webhook_deliveries_total", "account_created deliveries by outcome", ["outcome"]
)
WEBHOOK_SECONDS = Histogram(
    "chatwoot_webhook_duration_seconds", "Time to answer a webhook delivery", buckets=LATENCY_BUCKETS
)
LOOKUP_SECONDS = Histogram(
    "chatwoot_lookup_duration_seconds", "Time to answer a company lookup", ["result"], buckets=LATENCY_BUCKETS
)


def start_clock() -> None:
    """The moment the request reached our views (the blueprint's before_request), for the duration histograms."""
    g.chatwoot_request_started = time.perf_counter()


def record_delivery(outcome: str) -> None:
    """Count one webhook delivery under its outcome (created, existing, queued, ignored, or the error code of a
    refusal) and observe how long its answer took."""
    DELIVERIES.labels(outcome).inc()
    elapsed = _elapsed()
    if elapsed is not None:
        WEBHOOK_SECONDS.observe(elapsed)


_LOOKUP_SECONDS_BY_RESULT = {result: LOOKUP_SECONDS.labels(result) for result in ("hit", "miss", "error")}


def record_lookup(result: str) -> None:
    """Observe how long one company lookup took, by result: hit (exists: true), miss (exists: false) or error."""
    elapsed = _elapsed()
    if elapsed is not None:
        observe_lookup(result, elapsed)


def observe_lookup(result: str, seconds: float) -> None:
    _LOOKUP_SECONDS_BY_RESULT[result].observe(seconds)


def _elapsed() -> float | None:
    """Seconds since start_clock (None when a hook of the app refused the request before it ran)."""
    started = g.get("chatwoot_request_started")
    return None if started is None else time.perf_counter() - started


def metrics_text(companies_by_status: dict[str, int]) -> bytes:
    """The exposition text: this process's (or every worker's) counters plus the state read at scrape time."""
    registry = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)
        text = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        text = generate_latest(REGISTRY)
    state = CollectorRegistry()
    state.register(_StateCollector(companies_by_status, _spool_length()))
    return text + generate_latest(state)


def _spool_length() -> int | None:
    from multibackend.services import delivery_spool

    client = get_redis()
    if client is None:
        return None
    try:
        return delivery_spool.spool_length(client)
    except redis.RedisError:
        return None


class _StateCollector:
    def __init__(self, companies_by_status: dict[str, int], spool_length: int | None):
        self.companies_by_status = companies_by_status
        self.spool_length = spool_length

    def collect(self):  # type: ignore[no-untyped-def]
        companies = GaugeMetricFamily("chatwoot_companies", "Companies by provisioning status", labels=["provisioning_status"])
        for status, count in self.companies_by_status.items():
            companies.add_metric([status], count)
        yield companies
        if self.spool_length is not None:
            yield GaugeMetricFamily("chatwoot_spool_length", "Deliveries waiting in the spool", value=self.spool_length)


def prometheus_response(companies_by_status: dict[str, int]) -> Response:
    """The exposition as Prometheus expects it (content_type, not mimetype: the charset is already in it)."""
    return Response(metrics_text(companies_by_status), content_type=CONTENT_TYPE_LATEST)

