"""Deleting a Meter, through kmeter's finalizer, according to ``spec.deletionPolicy``.

* ``Retain`` (the default): the Meter goes; its topics — and so its history — stay in Kafka.
  A Meter created again with the same name picks the output topic up again.
* ``Delete``: the Meter's own output and dedup topics and its consumer group are deleted
  too, so a Meter created again with the same name counts from the start, into an empty
  topic. The
  namespace's shared ingest and dead-letter topics are never deleted by a Meter: other
  Meters, and Meters created later, count from them.

The worker Deployment and quota ConfigMap are owned by the Meter and garbage-collected by
Kubernetes in both cases. When Kafka cannot be reached, a ``Delete`` waits (the finalizer stays,
the deletion is retried with backoff) rather than leave a topic behind unannounced. To release
a Meter without touching its topics, set ``deletionPolicy: Retain`` before deleting it, or —
with the operator gone — remove the finalizer ``kmeter.io/finalizer`` by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmeter import topics
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.groups import delete_consumer_group
from kmeter.kafka.topics import delete_topics


async def delete_meter(body: Mapping[str, Any], *, kafka: KafkaAdmin) -> list[str]:
    """Apply the deletion policy; returns the topics deleted. Raises when Kafka is down."""
    spec = body.get("spec") or {}
    if spec.get("deletionPolicy", "Retain") != "Delete":
        return []
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    doomed = [topics.meter_topic(namespace, name), topics.meter_dedup_topic(namespace, name)]
    await delete_topics(kafka, doomed)
    await delete_consumer_group(kafka, topics.meter_consumer_group(namespace, name))
    return doomed
