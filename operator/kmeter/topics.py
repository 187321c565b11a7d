"""Kafka topic and consumer-group names: the one place they are formatted.

Every component — operator, worker, usage API, sidecar, ``kmeter dev`` — asks this module for a
name and never formats one itself, so a rename is one change and a typo cannot split a stream.

Names embed the Kubernetes namespace (and the Meter's name), which are DNS-1123 labels and
subdomains: lowercase letters, digits, ``-`` and ``.`` — all legal in Kafka topic names. Kafka
allows 249 characters; the Meter CRD caps a Meter's name so that the longest name here fits
(see :data:`MAX_METER_NAME_LENGTH`).

This module is a light shared contract: the sidecar may import it.
"""

from __future__ import annotations

PREFIX = "kmeter"
KAFKA_TOPIC_MAX_LENGTH = 249
# kmeter.<namespace:63>.meter.<name> must fit in 249 characters.
MAX_METER_NAME_LENGTH = KAFKA_TOPIC_MAX_LENGTH - len(f"{PREFIX}..meter.") - 63


def ingest_topic(namespace: str) -> str:
    """The namespace's usage events (CloudEvents), keyed by subject; shared by its Meters."""
    return f"{PREFIX}.{namespace}.events"


def meter_topic(namespace: str, meter: str) -> str:
    """A Meter's window totals: compacted, one record per (subject, group, window)."""
    return f"{PREFIX}.{namespace}.meter.{meter}"


def meter_dedup_topic(namespace: str, meter: str) -> str:
    """The (source, id) keys a Meter's workers have counted, within the dedup horizon.

    A changelog written in the same transaction as the window totals, so dedup survives
    restarts. ``dedup`` is its own infix (not a suffix of the output topic's name): Meter names
    may contain dots, and ``meter.x.dedup`` would be the output topic of a Meter ``x.dedup``.
    """
    return f"{PREFIX}.{namespace}.dedup.{meter}"


def dead_letter_topic(namespace: str) -> str:
    """Events the namespace's workers could not count, each with the reason."""
    return f"{PREFIX}.{namespace}.dead-letter"


def quota_decisions_topic(namespace: str) -> str:
    """The namespace's current quota decisions per subject: compacted, followed by sidecars."""
    return f"{PREFIX}.{namespace}.quota-decisions"


def notifications_topic(namespace: str) -> str:
    """Quota threshold crossings of the namespace."""
    return f"{PREFIX}.{namespace}.notifications"


def notifications_consumer_group(namespace: str, meter: str) -> str:
    """The consumer group in which a Meter's workers deliver its Quotas' notifications
    (webhooks, Kubernetes Events) from the namespace's notifications topic."""
    return f"{PREFIX}.{namespace}.notify.{meter}"


def meter_consumer_group(namespace: str, meter: str) -> str:
    """The consumer group of a Meter's aggregation workers on the ingest topic."""
    return f"{PREFIX}.{namespace}.meter.{meter}"
