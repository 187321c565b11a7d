"""The worker's Prometheus metrics (prefix ``kmeter_worker_``), on their own registry.

* ``records_in_total`` (counter): ingest records read (a record may hold an array of events)
* ``events_in_total`` (counter): events decoded from them
* ``events_counted_total`` (counter): events folded into a window (committed)
* ``events_deduplicated_total`` (counter): events skipped as duplicates of a counted (source, id)
* ``events_other_type_total`` (counter): events of other Meters' types
* ``events_dead_lettered_total{kind}`` (counter): ``malformed`` or ``rejected``
  (too old, bad value)
* ``transactions_total{result}`` (counter): ``committed`` or ``aborted``
* ``partition_recoveries_total`` (counter): partitions (re)built from Kafka: assignment or error
* ``restore_seconds`` (histogram): time to rebuild one partition
* ``consumer_lag{partition}`` (gauge): records behind
  the last stable offset
* ``last_event_timestamp_seconds`` (gauge): the newest event ``time`` counted
* ``dedup_entries``, ``dedup_memory_bytes`` (gauge): pairs remembered and
  their estimated size, all partitions
* ``dedup_evicted`` (gauge): pairs forgotten early for the bound (duplicates of these go unseen)
* ``dedup_coverage_seconds`` (gauge): the shortest effective dedup horizon of the partitions owned
* ``windows`` (gauge): windows held in memory
* ``assigned_partitions`` (gauge): ingest partitions owned (ready or restoring)

Counters count committed work only: a batch whose transaction aborts is not counted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "kmeter_worker"


class WorkerMetrics:
    """The metrics of one worker process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def counter(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", help_text, labels, registry=r)

        def gauge(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", help_text, labels, registry=r)

        self.records_in = counter("records_in", "Ingest records read and committed.")
        self.events_in = counter("events_in", "Events decoded from ingest records.")
        self.events_counted = counter("events_counted", "Events folded into a window.")
        self.events_deduplicated = counter(
            "events_deduplicated", "Events skipped as duplicates of a counted (source, id)."
        )
        self.events_other_type = counter("events_other_type", "Events of other Meters' types.")
        self.events_dead_lettered = counter(
            "events_dead_lettered", "Events sent to the dead-letter topic.", ("kind",)
        )
        self.transactions = counter("transactions", "Kafka transactions.", ("result",))
        self.recoveries = counter(
            "partition_recoveries", "Partitions rebuilt from Kafka (assignment or error)."
        )
        self.restore_seconds = Histogram(
            f"{PREFIX}_restore_seconds",
            "Time to rebuild one partition's state from Kafka.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.consumer_lag = gauge(
            "consumer_lag",
            "Records between the position and the last stable offset.",
            ("partition",),
        )
        self.last_event_time = gauge(
            "last_event_timestamp_seconds", "The newest event time counted (Unix seconds)."
        )
        self.dedup_entries = gauge("dedup_entries", "(source, id) pairs remembered.")
        self.dedup_bytes = gauge("dedup_memory_bytes", "Estimated memory of the dedup pairs.")
        self.dedup_evicted = gauge(
            "dedup_evicted",
            "Pairs forgotten early (since the partitions were restored) to stay within the bound.",
        )
        self.dedup_coverage = gauge(
            "dedup_coverage_seconds", "The shortest effective dedup horizon of the partitions."
        )
        self.windows = gauge("windows", "Windows held in memory.")
        self.assigned = gauge("assigned_partitions", "Ingest partitions owned.")
