"""The emitter's partition choice: a key goes where Kafka's default partitioner puts it, though
the emitter remembers keys' partitions between batches (``Emitter._produce``).

The producer here is a stand-in that records what the emitter hands it; the real producer, and
the partitions records really land in, are tested against Kafka in
``tests/integration/test_sidecar_proxy.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.kafka.settings import KafkaSettings
from kmeter_sidecar.emitter import Emitter
from kmeter_sidecar.metrics import Metrics
from kmeter_sidecar.spool import Spool


class Batch:
    """A record batch: the keys appended to it."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object:
        self.keys.append(key)
        return object()  # aiokafka returns the record's metadata; None would mean "full"


class RecordingProducer:
    """What ``_produce`` uses of an ``AIOKafkaProducer``, with a partition count that can grow."""

    def __init__(self) -> None:
        self.partition_count = 3
        self.partitioner_calls = 0
        self.placed: list[tuple[bytes, int]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partition_count))

    def _partition(self, *arguments: Any) -> int:
        # (topic, partition, key, value, serialized key, serialized value), as in aiokafka
        key = arguments[4]
        self.partitioner_calls += 1
        every = list(range(self.partition_count))
        return int(DefaultPartitioner()(key, every, every))

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        self.placed += [(key, partition) for key in batch.keys]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def emitter(directory: Path) -> Emitter:
    return Emitter(
        kafka=KafkaSettings("127.0.0.1:9"),
        namespace="partitions",
        spool=Spool(directory, 1 << 20),
        metrics=Metrics(),
    )


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
            calls_before = producer.partitioner_calls
            await sender._produce(producer, [(key, b"{}") for key in batch_keys])
            every = list(range(producer.partition_count))
            expected = sorted((key, DefaultPartitioner()(key, every, every)) for key in batch_keys)
            assert sorted(producer.placed) == expected
            # Each key is computed at most once per batch, and not at all when seen before at
            # this partition count.
            assert producer.partitioner_calls - calls_before <= len(set(batch_keys))

    asyncio.run(run())


def test_a_key_seen_before_is_not_hashed_again_until_the_partition_count_changes(
    tmp_path: Path,
) -> None:
    producer = RecordingProducer()
    sender = emitter(tmp_path)
    records = [(b"customer-1", b"{}"), (b"customer-2", b"{}")]

    async def run() -> None:
        await sender._produce(producer, records)
        assert producer.partitioner_calls == 2
        await sender._produce(producer, records * 5)
        assert producer.partitioner_calls == 2
        producer.partition_count = 7
        await sender._produce(producer, records)
        assert producer.partitioner_calls == 4

    asyncio.run(run())
