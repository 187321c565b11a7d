"""Prometheus metrics of the sidecar, prefix ``kmeter_sidecar_``, served on the admin port.

Labelled children are bound once here, so the request path does one ``inc()`` per counter and
never a ``labels()`` lookup. Queue depth and spool size are read when scraped.

=============================================  ==============================================
metric                                         meaning
=============================================  ==============================================
``kmeter_sidecar_requests_total{code}``        requests answered, by status class (``2xx``…),
                                               including the sidecar's own 4xx/5xx answers
``kmeter_sidecar_upstream_errors_total{kind}`` ``connect`` (502), ``timeout`` (504), ``reset``
                                               (the app's connection broke mid-response)
``kmeter_sidecar_rejected_total{reason}``      requests refused before the app: ``malformed``,
                                               ``header_too_large``, ``header_timeout``,
                                               ``subject``
``kmeter_sidecar_events_emitted_total``        events acknowledged by Kafka (incl. replayed)
``kmeter_sidecar_events_spooled_total``        events written to the spool
``kmeter_sidecar_events_replayed_total``       spooled events acknowledged by Kafka later
``kmeter_sidecar_events_dropped_total``        events lost because queue and spool were full
``kmeter_sidecar_queue_depth``                 events in memory waiting for Kafka
``kmeter_sidecar_spool_bytes``                 bytes in the spool directory
``kmeter_sidecar_kafka_up``                    1 while the producer is connected
``kmeter_sidecar_connections``                 open client connections
``kmeter_sidecar_value_body_too_large_total``  responses whose JSON body or an SSE event was too
                                               large to read values from
``kmeter_sidecar_requests_refused_total``      requests refused by enforcement, by ``reason``:
                                               ``quota`` (429), ``rate_limit`` (429),
                                               ``decisions_unavailable`` (503, fail-closed)
``kmeter_sidecar_decisions_available``         1 once the quota decisions are loaded
``kmeter_sidecar_decisions_applied_total``     records of the decisions topic applied
``kmeter_sidecar_decisions_malformed_total``   records of the decisions topic skipped as invalid
``kmeter_sidecar_quota_policies``              quotas this sidecar enforces (its event type)
``kmeter_sidecar_quota_subjects``              subjects' usage entries held for them
``kmeter_sidecar_rate_limit_buckets``          token buckets held (one per active subject)
=============================================  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["Metrics"]

_PREFIX = "kmeter_sidecar"


class Metrics:
    """The sidecar's metrics in a registry of their own (plus process and GC metrics)."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: the sidecar is its own process
        self.registry = registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        requests = Counter(
            f"{_PREFIX}_requests",
            "Requests answered, by status class.",
            ["code"],
            registry=registry,
        )
        self.requests_by_class = {n: requests.labels(f"{n}xx") for n in range(1, 6)}
        upstream = Counter(
            f"{_PREFIX}_upstream_errors",
            "Failures talking to the app.",
            ["kind"],
            registry=registry,
        )
        self.upstream_connect = upstream.labels("connect")
        self.upstream_timeout = upstream.labels("timeout")
        self.upstream_reset = upstream.labels("reset")
        rejected = Counter(
            f"{_PREFIX}_rejected",
            "Requests refused before reaching the app.",
            ["reason"],
            registry=registry,
        )
        self.rejected_malformed = rejected.labels("malformed")
        self.rejected_header_too_large = rejected.labels("header_too_large")
        self.rejected_header_timeout = rejected.labels("header_timeout")
        self.rejected_subject = rejected.labels("subject")
        self.events_emitted = Counter(
            f"{_PREFIX}_events_emitted", "Events acknowledged by Kafka.", registry=registry
        )
        self.events_spooled = Counter(
            f"{_PREFIX}_events_spooled", "Events written to the spool.", registry=registry
        )
        self.events_replayed = Counter(
            f"{_PREFIX}_events_replayed", "Spooled events acknowledged later.", registry=registry
        )
        self.events_dropped = Counter(
            f"{_PREFIX}_events_dropped", "Events lost: queue and spool full.", registry=registry
        )
        self.value_body_too_large = Counter(
            f"{_PREFIX}_value_body_too_large",
            "Responses too large to read values from.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{_PREFIX}_queue_depth", "Events in memory waiting for Kafka.", registry=registry
        )
        self.spool_bytes = Gauge(
            f"{_PREFIX}_spool_bytes", "Bytes in the spool directory.", registry=registry
        )
        self.kafka_up = Gauge(
            f"{_PREFIX}_kafka_up", "1 while the Kafka producer is connected.", registry=registry
        )
        self.connections = Gauge(
            f"{_PREFIX}_connections", "Open client connections.", registry=registry
        )
        refused = Counter(
            f"{_PREFIX}_requests_refused",
            "Requests refused by quota enforcement, by reason.",
            ["reason"],
            registry=registry,
        )
        self.refused = {
            reason: refused.labels(reason)
            for reason in ("quota", "rate_limit", "decisions_unavailable")
        }
        self.decisions_available = Gauge(
            f"{_PREFIX}_decisions_available",
            "1 once the quota decisions are loaded, 0 while they are unavailable.",
            registry=registry,
        )
        self.decisions_applied = Counter(
            f"{_PREFIX}_decisions_applied",
            "Records of the quota decisions topic applied.",
            registry=registry,
        )
        self.decisions_malformed = Counter(
            f"{_PREFIX}_decisions_malformed",
            "Records of the quota decisions topic skipped as invalid.",
            registry=registry,
        )
        self.quota_policies = Gauge(
            f"{_PREFIX}_quota_policies", "Quotas this sidecar enforces.", registry=registry
        )
        self.quota_subjects = Gauge(
            f"{_PREFIX}_quota_subjects", "Subjects' quota usage entries held.", registry=registry
        )
        self.rate_limit_buckets = Gauge(
            f"{_PREFIX}_rate_limit_buckets", "Rate-limit token buckets held.", registry=registry
        )

    def count_status(self, status: int) -> None:
        child = self.requests_by_class.get(status // 100)
        if child is not None:
            child.inc()

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Read ``gauge`` from ``read()`` at scrape time."""
        gauge.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
