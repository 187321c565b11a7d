"""Kafka transactions work on the test broker: the basis of kmeter's exactly-once counting."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def _create_topic(bootstrap: str, partitions: int = 3) -> str:
    topic = f"testenv-tx-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def _read_all(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        # Read until the consumer is at the end of every partition.
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                seen.extend(m.value for m in messages if m.value is not None)
            partitions = consumer.assignment()
            ends = await consumer.end_offsets(list(partitions))
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if partitions and all(positions[tp] >= ends[tp] for tp in partitions):
                return seen
    finally:
        await consumer.stop()


async def test_a_read_committed_consumer_sees_committed_records_and_never_aborted_ones(
    kafka_bootstrap: str,
) -> None:
    topic = await _create_topic(kafka_bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"testenv-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(10):
                await producer.send(topic, f"committed-{i}".encode(), key=str(i).encode())
        await producer.begin_transaction()
        for i in range(10):
            await producer.send(topic, f"aborted-{i}".encode(), key=str(i).encode())
        await producer.flush()
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"after-abort", key=b"x")
    finally:
        await producer.stop()

    committed_view = await _read_all(kafka_bootstrap, topic, "read_committed")
    assert sorted(committed_view) == sorted(
        [f"committed-{i}".encode() for i in range(10)] + [b"after-abort"]
    )
    # The aborted records did reach the log: a read_uncommitted consumer sees them, which
    # proves the broker filtered them for read_committed rather than never receiving them.
    uncommitted_view = await _read_all(kafka_bootstrap, topic, "read_uncommitted")
    assert {f"aborted-{i}".encode() for i in range(10)} <= set(uncommitted_view)


async def test_records_of_an_open_transaction_are_invisible_until_it_commits(
    kafka_bootstrap: str,
) -> None:
    topic = await _create_topic(kafka_bootstrap, partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"testenv-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"pending")
        assert await _read_all(kafka_bootstrap, topic, "read_committed") == []
        await producer.commit_transaction()
        assert await _read_all(kafka_bootstrap, topic, "read_committed") == [b"pending"]
    finally:
        await producer.stop()
