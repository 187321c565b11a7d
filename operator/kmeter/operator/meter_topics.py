"""The Kafka topics a Meter needs, as desired state (pure).

A Meter owns its output topic, ``kmeter.<ns>.meter.<name>``: compacted window totals, one
record per (subject, group, window), kept for the Meter's retention after its last update
(``cleanup.policy=compact,delete``), and its dedup changelog ``kmeter.<ns>.dedup.<name>``:
the (source, id) keys counted, kept for the dedup horizon.

Both are **co-partitioned** with the ingest topic: the worker writes what it derived from
ingest partition *p* to partition *p* of each, so a worker taking over partition *p* after a
rebalance or a crash restores exactly its state from partition *p*. They therefore have at
least as many partitions as the ingest topic (``spec.topic.partitions`` is a floor) — as the
ingest topic *is*, not only as the Meters now ask: a Meter deleted after it grew the ingest
topic leaves it larger than any remaining spec (Kafka never shrinks it), and a Meter created
then must still get an output partition for every ingest partition, or its worker could not
write what it derives from the highest ones. The caller passes the ingest topic's current
partition count (``ingest_partitions``) for that.

The namespace's ingest topic ``kmeter.<ns>.events`` and dead-letter topic are shared by all
its Meters. The ingest topic's layout is the *largest* any Meter of the namespace asks for —
partitions and retention — so Meters never pull it back and forth, and a Meter asking for fewer
partitions than it has is not a shrink; the dead-letter topic has
:data:`DEAD_LETTER_PARTITIONS` partitions, kept :data:`DEAD_LETTER_RETENTION_MS`.
Replication factor cannot be changed through the admin API; it is set when a topic is created.

The namespace's quota topics (:func:`quota_topics`) are shared too: ``quota-decisions``
(compacted; the workers write the decisions of ingest partition *p* to its partition *p*, so it
is co-partitioned with the ingest topic and has as many partitions) and ``notifications``
(threshold crossings, kept :data:`NOTIFICATIONS_RETENTION_MS`). Every namespace with a Meter has
them, whether or not it has Quotas yet: a Quota then needs no topic change to take effect, and
sidecars always find the decisions topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kmeter import topics
from kmeter.kafka.topics import DesiredTopic

DEAD_LETTER_RETENTION_MS = 30 * 24 * 3600 * 1000
DEAD_LETTER_PARTITIONS = 1
DEDUP_HORIZON_MS = 48 * 3600 * 1000  # the worker dedups within 24 h by default; keep twice
NOTIFICATIONS_RETENTION_MS = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicLayout:
    """What one Meter's ``spec.topic`` asks for."""

    partitions: int
    replication_factor: int
    retention_ms: int


def meter_topics(
    namespace: str,
    meter: str,
    own: TopicLayout,
    namespace_layouts: Iterable[TopicLayout],
    *,
    ingest_partitions: int = 0,
) -> list[DesiredTopic]:
    """Ingest, output, dedup and dead-letter topics for ``meter``.

    ``namespace_layouts`` are the layouts of every Meter in the namespace (this one included
    or not: it is added), for the shared topics; ``ingest_partitions`` the ingest topic's
    partition count now (0 when it does not exist yet), a floor for the co-partitioned topics.
    """
    layouts = [own, *namespace_layouts]
    shared_partitions = max(layout.partitions for layout in layouts)
    shared_retention = max(layout.retention_ms for layout in layouts)
    co_partitioned = _co_partitioned(layouts, ingest_partitions)
    return [
        DesiredTopic(
            name=topics.ingest_topic(namespace),
            partitions=shared_partitions,
            replication_factor=own.replication_factor,
            configs={"cleanup.policy": "delete", "retention.ms": str(shared_retention)},
        ),
        DesiredTopic(
            name=topics.meter_topic(namespace, meter),
            partitions=co_partitioned,
            replication_factor=own.replication_factor,
            configs={"cleanup.policy": "compact,delete", "retention.ms": str(own.retention_ms)},
        ),
        DesiredTopic(
            name=topics.meter_dedup_topic(namespace, meter),
            partitions=co_partitioned,
            replication_factor=own.replication_factor,
            configs={"cleanup.policy": "delete", "retention.ms": str(DEDUP_HORIZON_MS)},
        ),
        DesiredTopic(
            name=topics.dead_letter_topic(namespace),
            partitions=DEAD_LETTER_PARTITIONS,
            replication_factor=own.replication_factor,
            configs={"cleanup.policy": "delete", "retention.ms": str(DEAD_LETTER_RETENTION_MS)},
        ),
    ]


def quota_topics(
    namespace: str,
    own: TopicLayout,
    namespace_layouts: Iterable[TopicLayout],
    *,
    ingest_partitions: int = 0,
) -> list[DesiredTopic]:
    """The namespace's quota decisions and notifications topics (see the module); the decisions
    topic is co-partitioned with the ingest topic, so ``ingest_partitions`` is a floor."""
    partitions = _co_partitioned([own, *namespace_layouts], ingest_partitions)
    return [
        DesiredTopic(
            name=topics.quota_decisions_topic(namespace),
            partitions=partitions,
            replication_factor=own.replication_factor,
            configs={"cleanup.policy": "compact"},
        ),
        DesiredTopic(
            name=topics.notifications_topic(namespace),
            partitions=partitions,
            replication_factor=own.replication_factor,
            configs={"cleanup.policy": "delete", "retention.ms": str(NOTIFICATIONS_RETENTION_MS)},
        ),
    ]


def _co_partitioned(layouts: list[TopicLayout], ingest_partitions: int) -> int:
    """Partitions of a topic written by ingest partition: as many as the ingest topic will have
    — the most any Meter asks for, or more if it has more already (it never shrinks)."""
    return max(ingest_partitions, *(layout.partitions for layout in layouts))
