"""The emitter's batches and partitions, against a stand-in producer that records what it gets.

* Batches: every batch waits out ``--linger-ms`` for more events, also right after the previous
  one was acknowledged; a full batch goes at once.
* Partitions: a key goes where Kafka's default partitioner puts it, for the partition count of
  the moment, though the emitter remembers keys' partitions between batches
  (``Emitter._produce``; the memory itself: ``tests/unit/test_kafka_partitions.py``).

The real producer, and the partitions records really land in, are tested against Kafka in
``tests/integration/test_sidecar_proxy.py``. The batch tests wait for real (a few seconds), with
margins of at least 0.3 s around every moment that matters.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.partitioning import count_hashing

from kmeter.kafka.settings import KafkaSettings
from kmeter_sidecar.emitter import Emitter
from kmeter_sidecar.metrics import Metrics
from kmeter_sidecar.spool import Spool


class Batch:
    """A record batch: the records appended to it."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object:
        self.records.append((key, value))
        return object()  # aiokafka returns the record's metadata; None would mean "full"


class RecordingProducer:
    """What ``_produce`` uses of an ``AIOKafkaProducer``, with a partition count that can grow."""

    def __init__(self, ack_delay: float = 0.0) -> None:
        self.partition_count = 3
        self.placed: list[tuple[bytes, int]] = []
        self.sent: list[list[bytes]] = []  # the values of each batch sent, in order
        self.ack_delay = ack_delay

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partition_count))

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        self.placed += [(key, partition) for key, _ in batch.records]
        self.sent.append([value for _, value in batch.records])
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self.ack_delay, acknowledged.set_result, None)
        return acknowledged


def emitter(directory: Path, *, linger: float = 0.02, batch_max: int = 1000) -> Emitter:
    return Emitter(
        kafka=KafkaSettings("127.0.0.1:9"),
        namespace="emitter",
        spool=Spool(directory, 1 << 20),
        metrics=Metrics(),
        linger=linger,
        batch_max=batch_max,
    )


async def test_every_batch_waits_out_the_linger_also_right_after_the_previous_one(
    tmp_path: Path,
) -> None:
    producer = RecordingProducer(ack_delay=0.6)
    sender = emitter(tmp_path, linger=1.0)
    sender._producer = producer  # connected, to the stand-in
    task = asyncio.create_task(sender._sender())
    try:
        sender.emit(b"s", b"1")  # t=0: the first batch goes at t=1.0, acknowledged at 1.6
        await asyncio.sleep(1.3)
        sender.emit(b"s", b"2")  # while the first batch is in flight
        await asyncio.sleep(0.7)
        sender.emit(b"s", b"3")  # t=2.0: still within the second batch's linger (until 2.6)
        await asyncio.sleep(1.2)
    finally:
        task.cancel()
    # Sending as soon as the first was acknowledged would have made [b"2"] and [b"3"].
    assert producer.sent == [[b"1"], [b"2", b"3"]]


async def test_a_full_batch_goes_at_once_without_waiting_out_the_linger(tmp_path: Path) -> None:
    producer = RecordingProducer()
    sender = emitter(tmp_path, linger=30.0, batch_max=4)
    sender._producer = producer
    task = asyncio.create_task(sender._sender())
    try:
        for value in (b"1", b"2", b"3", b"4", b"5"):
            sender.emit(b"s", value)
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
    assert producer.sent == [[b"1", b"2", b"3", b"4"]]  # the fifth waits for its linger


keys = st.binary(min_size=0, max_size=12)
rounds = st.lists(
    st.tuples(st.lists(keys, min_size=1, max_size=30), st.booleans()), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(rounds)
def test_every_key_goes_where_the_default_partitioner_puts_it_for_the_current_partition_count(
    tmp_path_factory: Any, batches: list[tuple[list[bytes], bool]]
) -> None:
    producer = RecordingProducer()
    sender = emitter(tmp_path_factory.mktemp("spool"))

    async def run() -> None:
        for batch_keys, grow in batches:
            if grow:  # partitions are added to the topic between two batches
                producer.partition_count += 2
            producer.placed.clear()
            await sender._produce(producer, [(key, b"{}") for key in batch_keys])
            every = list(range(producer.partition_count))
            expected = sorted((key, DefaultPartitioner()(key, every, every)) for key in batch_keys)
            assert sorted(producer.placed) == expected

    asyncio.run(run())


def test_the_emitter_hashes_a_key_once_per_partition_count_across_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = count_hashing(monkeypatch)
    producer = RecordingProducer()
    sender = emitter(tmp_path)
    records = [(b"customer-1", b"{}"), (b"customer-2", b"{}")]

    async def run() -> None:
        await sender._produce(producer, records)
        await sender._produce(producer, records * 5)
        assert hashed == [b"customer-1", b"customer-2"]
        producer.partition_count = 7
        await sender._produce(producer, records)
        assert hashed == [b"customer-1", b"customer-2"] * 2

    asyncio.run(run())
