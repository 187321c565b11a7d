"""What the real broker says about a topic, asked with a plain aiokafka admin client, and
the usage events in a namespace's ingest topic, read with a plain consumer.

Tests check kmeter's effects through this independent view, not through kmeter's own adapter.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError

from kmeter.topics import ingest_topic

TOPIC_OVERRIDE = 1  # DescribeConfigs source: set on the topic itself


@dataclass(frozen=True)
class TopicSeen:
    partitions: int
    replication_factor: int
    overrides: dict[str, str]


async def seen_by_kafka(bootstrap: str, name: str) -> TopicSeen | None:
    """Partitions, replication factor and topic-level overrides; None when there is no topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            return None
        (topic,) = await admin.describe_topics([name])
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    assert topic["error_code"] == 0, topic
    (resource,) = response.to_object()["resources"]
    return TopicSeen(
        partitions=len(topic["partitions"]),
        replication_factor=len(topic["partitions"][0]["replicas"]),
        overrides={
            entry["config_names"]: entry["config_value"]
            for entry in resource["config_entries"]
            if entry["config_source"] == TOPIC_OVERRIDE
        },
    )


def describe_topic(bootstrap: str, name: str) -> TopicSeen | None:
    """Partitions and topic-level config overrides, or None when the topic does not exist."""
    return asyncio.run(seen_by_kafka(bootstrap, name))


def set_topic_configs(bootstrap: str, name: str, configs: dict[str, str]) -> None:
    """Replace a topic's config overrides by hand, as an operator of Kafka might."""

    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs)])
        finally:
            await admin.close()

    asyncio.run(alter())


def commit_group_offset(bootstrap: str, group: str, topic: str) -> None:
    """Make ``group`` exist with a committed offset on partition 0 of ``topic``."""

    async def commit() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.commit({partition: 0})
        finally:
            await consumer.stop()

    asyncio.run(commit())


def consumer_groups(bootstrap: str) -> set[str]:
    async def listed() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return {group[0] for group in await admin.list_consumer_groups()}
        finally:
            await admin.close()

    return asyncio.run(listed())


async def read_events(bootstrap: str, namespace: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every (key, event) in the namespace's ingest topic."""
    return [(key, event) for _, key, event in await read_event_records(bootstrap, namespace)]


async def read_event_records(
    bootstrap: str, namespace: str
) -> list[tuple[int, bytes, dict[str, Any]]]:
    """Every (partition, key, event) in the namespace's ingest topic."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return await _read_events(bootstrap, namespace)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def _read_events(bootstrap: str, namespace: str) -> list[tuple[int, bytes, dict[str, Any]]]:
    topic = ingest_topic(namespace)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            await consumer._client.force_metadata_update()
            found_partitions = consumer.partitions_for_topic(topic)
            if not found_partitions:
                raise KafkaConnectionError("no metadata for the topic yet")
            partitions = [TopicPartition(topic, p) for p in found_partitions]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[tuple[int, bytes, dict[str, Any]]] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            batch = await consumer.getmany(timeout_ms=2000)
            for messages in batch.values():
                found.extend((m.partition, m.key, json.loads(m.value)) for m in messages)
        return found
    finally:
        await consumer.stop()


async def create_ingest_topic(bootstrap: str, namespace: str) -> str:
    """The namespace's ingest topic (3 partitions). The broker is shared with other tests that
    stop and start it, so a refused connection is retried for a while."""
    topic = ingest_topic(namespace)
    deadline = time.monotonic() + 90
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(topic, 3, 1)])
            return topic
        except KafkaConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
        finally:
            await admin.close()
