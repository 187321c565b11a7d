"""aiokafka clients whose start fails are stopped, not left open (kmeter.kafka.clients).

Kafka here is a closed port on loopback, so ``start()`` fails for real; what a leaked client looks
like is what aiokafka itself reports when one is collected unstopped: ``Unclosed
AIOKafkaConsumer``, logged at ERROR through the event loop.
"""

from __future__ import annotations

import gc
import logging
import socket

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from kmeter.kafka.clients import running, started


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def unclosed_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # aiokafka reports an unstopped client when it is collected
    messages = [record.getMessage().split("\n")[0] for record in caplog.records]
    return [message for message in messages if message.startswith("Unclosed AIOKafka")]


async def test_a_plain_failed_start_leaves_a_client_open_as_aiokafka_reports_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The control: what the helpers prevent is visible to this check.
    caplog.set_level(logging.ERROR, logger="asyncio")
    consumer = AIOKafkaConsumer(bootstrap_servers=closed_port())
    with pytest.raises(KafkaConnectionError):
        await consumer.start()
    del consumer
    assert unclosed_reports(caplog) == ["Unclosed AIOKafkaConsumer"]


async def test_a_client_whose_start_fails_is_stopped_and_the_error_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    with pytest.raises(KafkaConnectionError):
        await started(AIOKafkaProducer(bootstrap_servers=closed_port()))
    with pytest.raises(KafkaConnectionError):
        async with running(AIOKafkaConsumer(bootstrap_servers=closed_port())):
            raise AssertionError("the block runs only once the client started")
    assert unclosed_reports(caplog) == []
