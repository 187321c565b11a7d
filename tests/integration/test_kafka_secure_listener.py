"""The test broker's TLS + SASL listener admits the right credentials and CA, and no others.

``scripts/testenv`` gives the broker a ``SASL_SSL`` listener (SCRAM-SHA-512 and PLAIN, a CA of
its own; see docs/development.md) so that tests can prove kmeter's Kafka credentials and CA
bundles really work. These tests prove the listener itself, with real aiokafka clients whose
options come from :meth:`KafkaSettings.client_options`, as every kmeter client's do: a record
makes the round trip with either mechanism, and a wrong password or an untrusted CA is refused
with the error a person would read in the log. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError
from tests.support.kube import Environment

from kmeter.kafka.admin import KafkaAdmin, KafkaUnavailable
from kmeter.kafka.settings import KafkaSettings

MECHANISMS = ["SCRAM-SHA-512", "PLAIN"]
DEADLINE_S = 30.0
# A refusal is an answer, not a timeout: it must come well within one request timeout.
REFUSAL_S = 5.0


async def _create_topic(settings: KafkaSettings) -> str:
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    async with KafkaAdmin(settings) as admin, admin.call("creating a topic") as client:
        response = await client.create_topics([NewTopic(topic, 1, 1)])
    assert [error[1] for error in response.topic_errors] == [0], response
    return topic


async def _round_trip(settings: KafkaSettings, topic: str, value: bytes) -> bytes | None:
    producer = AIOKafkaProducer(**settings.client_options())
    try:
        await asyncio.wait_for(producer.start(), DEADLINE_S)
        await asyncio.wait_for(producer.send_and_wait(topic, value), DEADLINE_S)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, **settings.client_options(), auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        await asyncio.wait_for(consumer.start(), DEADLINE_S)
        record = await asyncio.wait_for(consumer.getone(), DEADLINE_S)
    finally:
        await consumer.stop()
    received: bytes | None = record.value
    return received


async def _refused(settings: KafkaSettings, caplog: pytest.LogCaptureFixture) -> str:
    """Start a producer that must be refused; return what aiokafka logged about why."""
    producer = AIOKafkaProducer(**settings.client_options())
    started = time.monotonic()
    try:
        with (
            caplog.at_level(logging.ERROR, logger="aiokafka"),
            pytest.raises(KafkaConnectionError, match="Unable to bootstrap"),
        ):
            await asyncio.wait_for(producer.start(), DEADLINE_S)
    finally:
        await producer.stop()
    assert time.monotonic() - started < REFUSAL_S
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_record_produced_over_sasl_ssl_is_consumed_back(
    kafka_secure: KafkaSettings, mechanism: str
) -> None:
    settings = replace(kafka_secure, sasl_mechanism=mechanism)
    topic = await _create_topic(settings)
    value = f"over SASL_SSL with {mechanism}: {uuid.uuid4()}".encode()

    assert await _round_trip(settings, topic, value) == value


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_wrong_password_is_refused_with_an_authentication_error(
    kafka_secure: KafkaSettings, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = replace(
        kafka_secure, sasl_mechanism=mechanism, sasl_password=f"not-{kafka_secure.sasl_password}"
    )

    logged = await _refused(wrong, caplog)

    # SCRAM says "... due to invalid credentials with SASL mechanism SCRAM-SHA-512",
    # PLAIN says "Authentication failed: Invalid username or password".
    assert "[Error 58] SaslAuthenticationFailed: Authentication failed" in logged
    assert "invalid" in logged.lower()


async def test_a_client_trusting_only_the_system_cas_is_refused_by_certificate_verification(
    kafka_secure: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    logged = await _refused(replace(kafka_secure, ssl_cafile=None), caplog)

    assert "CERTIFICATE_VERIFY_FAILED" in logged


@pytest.fixture
def another_ca(testenv: Environment, kafka_secure: KafkaSettings, tmp_path: Path) -> Path:
    """The API server's CA: a real CA of the same environment, but not Kafka's."""
    kubeconfig = yaml.safe_load(testenv.kubeconfig.read_text())
    path = tmp_path / "apiserver-ca.crt"
    path.write_bytes(
        base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    )
    assert path.read_bytes() != Path(str(kafka_secure.ssl_cafile)).read_bytes()
    return path


async def test_a_client_trusting_another_ca_is_refused_by_certificate_verification(
    kafka_secure: KafkaSettings, another_ca: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logged = await _refused(replace(kafka_secure, ssl_cafile=str(another_ca)), caplog)

    assert "CERTIFICATE_VERIFY_FAILED" in logged


async def test_the_operators_admin_says_the_password_is_wrong_not_only_that_kafka_is_unreachable(
    kafka_secure: KafkaSettings,
) -> None:
    wrong = replace(kafka_secure, sasl_password="not-the-password", request_timeout_ms=5_000)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as refused:
        async with KafkaAdmin(wrong):
            pass
    assert time.monotonic() - started < REFUSAL_S
    assert "Authentication failed" in str(refused.value), str(refused.value)
