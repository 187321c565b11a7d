"""Deleting a Meter, through kmeter's finalizer, according to ``spec.deletionPolicy``.

* ``Retain`` (the default): the Meter goes; its topics — and so its history — stay in Kafka.
  A Meter created again with the same name picks the output topic up again.
* ``Delete``: the Meter's own output and dedup topics and its consumer group are deleted
  too, so a Meter created again with the same name counts from the start, into an empty
  topic. The
  namespace's shared ingest and dead-letter topics are never deleted by a Meter: other
  Meters, and Meters created later, count from them.

The worker Deployment and quota ConfigMap are owned by the Meter and garbage-collected by
Kubernetes in both cases. In both cases the policies of the Quotas on the Meter are withdrawn
from the namespace's decisions topic (:func:`withdraw_policies`): their worker, which would
tombstone them when a Quota goes, is going too, and the sidecars would otherwise keep enforcing
a Quota whose usage no one counts any more (its rate limit, and blocks until the period ends).
The Quotas themselves stay, ``MeterFound: False``, and take effect again with a new Meter.

When Kafka cannot be reached, the deletion waits (the finalizer stays, the deletion is retried
with backoff) rather than leave a topic or a policy behind unannounced. To release
a Meter without touching its topics, set ``deletionPolicy: Retain`` before deleting it, or —
with the operator gone — remove the finalizer ``kmeter.io/finalizer`` by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from kmeter import topics
from kmeter.decisions import policy_key
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.clients import running
from kmeter.kafka.groups import delete_consumer_group
from kmeter.kafka.topics import delete_topics, describe_topics


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


async def withdraw_policies(kafka: KafkaAdmin, namespace: str, quotas: Iterable[str]) -> int:
    """Tombstone the decisions-topic policies of ``quotas``; returns how many. Raises when Kafka
    is down (the deletion is then retried)."""
    names = sorted(set(quotas))
    topic = topics.quota_decisions_topic(namespace)
    if not names or topic not in await describe_topics(kafka, [topic]):
        return 0
    producer = AIOKafkaProducer(
        **kafka.settings.client_options(), acks="all", enable_idempotence=True
    )
    async with running(producer):
        sent = [await producer.send(topic, None, key=policy_key(name)) for name in names]
        await asyncio.gather(*sent)
    return len(names)
