"""The usage API's Prometheus metrics (``/metrics``), prefix ``kmeter_api_``.

* ``kmeter_api_requests_total{route,method,status}`` — answered requests; ``route`` is the
  pattern, e.g. ``/api/v1/meters/{meter}/query``;
* ``kmeter_api_request_seconds{route}`` — time to answer (histogram);
* ``kmeter_api_events_ingested_total{namespace}`` — events Kafka acknowledged, answered 204;
* ``kmeter_api_events_refused_total{reason}`` — events not accepted: ``invalid``,
  ``too_large``, ``kafka_unavailable``, ``no_topic``;
* ``kmeter_api_produce_seconds`` — first send of a request to Kafka's last acknowledgement;
* ``kmeter_api_materializer_lag_records{namespace,meter}`` — committed output records not read;
* ``kmeter_api_materialized_windows{namespace,meter}`` — window totals held in memory;
* ``kmeter_api_materializer_records_total{namespace,meter,result}`` — output records read:
  ``ok``, ``tombstone``, ``malformed``, ``foreign``;
* ``kmeter_api_ready`` — 1 once every Meter known at start is read up to its end offsets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "kmeter_api_requests",
    "Requests answered, by route, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "kmeter_api_request_seconds",
    "Time to answer a request.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
EVENTS_INGESTED = Counter(
    "kmeter_api_events_ingested", "Events acknowledged by Kafka and answered 204.", ["namespace"]
)
EVENTS_REFUSED = Counter("kmeter_api_events_refused", "Events not accepted, by reason.", ["reason"])
PRODUCE_SECONDS = Histogram(
    "kmeter_api_produce_seconds",
    "From the first send of a request to the last acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
MATERIALIZER_LAG = Gauge(
    "kmeter_api_materializer_lag_records",
    "Committed records of a Meter's output topic not yet read.",
    ["namespace", "meter"],
)
MATERIALIZED_WINDOWS = Gauge(
    "kmeter_api_materialized_windows", "Window totals held in memory.", ["namespace", "meter"]
)
MATERIALIZER_RECORDS = Counter(
    "kmeter_api_materializer_records",
    "Output records read, by result.",
    ["namespace", "meter", "result"],
)
READY = Gauge("kmeter_api_ready", "1 once the Meters known at start are read up to date.")
