"""The broker can be stopped and started again by tests, and keeps its committed data."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tests.support.faults import KafkaBroker


async def test_records_survive_the_broker_being_killed_and_started_again(
    kafka_bootstrap: str, kafka_broker: KafkaBroker
) -> None:
    topic = f"testenv-fault-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    await producer.send_and_wait(topic, b"before the crash")
    await producer.stop()

    kafka_broker.stop(kill=True)
    kafka_broker.start()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    assert [m.value for messages in batch.values() for m in messages] == [b"before the crash"]
