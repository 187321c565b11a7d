"""The usage API's producing of events (``kmeter.api.ingest.Ingestor``) against a stand-in for
what it uses of an ``AIOKafkaProducer``: which partition each event is given, that subjects'
partitions are remembered across requests, and that a partition that vanished mid-request is
a 503, not a 500. That the events really land there is tested against Kafka in
``tests/integration/test_api_ingest.py``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from tests.support.partitioning import count_hashing

from kmeter.api.ingest import Ingestor, KafkaUnavailable
from kmeter.core.events import UsageEvent
from kmeter.kafka.settings import KafkaSettings
from kmeter.topics import ingest_topic

NAMESPACE = "acme"
TOPIC = ingest_topic(NAMESPACE)


class StandInProducer:
    """Records each send; like aiokafka, asserts that a given partition exists."""

    def __init__(self, partition_count: int) -> None:
        self.partitions = set(range(partition_count))
        self.client = SimpleNamespace(
            cluster=SimpleNamespace(partitions_for_topic=lambda topic: self.partitions)
        )
        self.sent: list[tuple[bytes, int]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> Any:
        assert partition in self.partitions, "Unrecognized partition"
        self.sent.append((key, partition))
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


def ingestor_with(producer: StandInProducer) -> Ingestor:
    ingestor = Ingestor(KafkaSettings("127.0.0.1:9"))
    ingestor._producer = producer  # connected, to the stand-in
    return ingestor


def events(*subjects: str) -> list[UsageEvent]:
    at = datetime(2026, 12, 7, tzinfo=UTC)
    return [
        UsageEvent(f"e-{n}", "test", "llm", subject, at, {"tokens": n})
        for n, subject in enumerate(subjects)
    ]


def default(key: bytes, count: int) -> int:
    every = list(range(count))
    return int(DefaultPartitioner()(key, every, every))


async def test_each_event_gets_the_default_partitioners_partition_remembered_across_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed = count_hashing(monkeypatch)
    producer = StandInProducer(partition_count=6)
    ingestor = ingestor_with(producer)
    subjects = [f"customer-{n}" for n in range(8)]
    for _ in range(3):  # three requests
        await ingestor.produce(NAMESPACE, events(*subjects))
    assert producer.sent == [(s.encode(), default(s.encode(), 6)) for s in subjects] * 3
    assert sorted(hashed) == sorted(s.encode() for s in subjects)  # once each, not per request


async def test_a_partition_gone_while_producing_is_kafka_unavailable() -> None:
    producer = StandInProducer(partition_count=6)
    ingestor = ingestor_with(producer)
    subjects = [f"customer-{n}" for n in range(12)]
    await ingestor.produce(NAMESPACE, events(*subjects))
    # The topic is deleted and created again with fewer partitions while a request is under
    # way: the count the request started with names partitions that are gone.
    real_send = producer.send

    async def shrinking(topic: str, value: bytes, *, key: bytes, partition: int) -> Any:
        producer.partitions = {0}
        return await real_send(topic, value, key=key, partition=partition)

    producer.send = shrinking  # type: ignore[method-assign]
    assert any(default(s.encode(), 6) != 0 for s in subjects)
    with pytest.raises(KafkaUnavailable, match="lost partitions"):
        await ingestor.produce(NAMESPACE, events(*subjects))
