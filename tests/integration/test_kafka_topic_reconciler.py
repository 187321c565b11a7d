"""The topic reconciler against the real Kafka broker.

What the reconciler did is checked the way a person would: through a fresh aiokafka admin
client of the test's own, never through the reconciler's ``describe_topics``. Every test works
on topics of a namespace of its own (``kmeter.t-<uuid>...``) and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from tests.support.kafka import TopicSeen
from tests.support.kafka import seen_by_kafka as topic_seen

from kmeter import topics
from kmeter.kafka.admin import KafkaAdmin, KafkaUnavailable
from kmeter.kafka.settings import KafkaSettings
from kmeter.kafka.topics import (
    DesiredTopic,
    PartitionsGrown,
    ReplicationFactorDiffers,
    ShrinkRefused,
    TopicError,
    TopicOutcome,
    delete_topics,
    describe_topics,
    reconcile_topics,
)

# The configs kmeter manages on a Meter's output topic.
METER_CONFIGS = {"cleanup.policy": "compact,delete", "retention.ms": "86400000"}


@asynccontextmanager
async def raw_admin(bootstrap: str) -> AsyncIterator[Any]:
    """A plain aiokafka admin client: the test's own eyes and hands on the broker."""
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def seen_by_kafka(bootstrap: str, name: str) -> TopicSeen:
    seen = await topic_seen(bootstrap, name)
    assert seen is not None, f"topic {name} does not exist"
    return seen


async def topic_exists(bootstrap: str, name: str) -> bool:
    async with raw_admin(bootstrap) as client:
        return name in await client.list_topics()


async def eventually_gone(bootstrap: str, name: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while await topic_exists(bootstrap, name):
        assert time.monotonic() < deadline, f"{name} still exists after {seconds} s"
        await asyncio.sleep(0.1)


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin(kafka_bootstrap: str, namespace: str) -> AsyncIterator[KafkaAdmin]:
    async with KafkaAdmin(KafkaSettings(kafka_bootstrap, client_id="kmeter-tests")) as admin:
        yield admin
        # Clean up the test's topics (all of its namespace) on the shared broker.
        async with raw_admin(kafka_bootstrap) as client:
            mine = [t for t in await client.list_topics() if t.startswith(f"kmeter.{namespace}.")]
        await delete_topics(admin, mine)


def meter_topic(namespace: str, partitions: int = 3, replication_factor: int = 1) -> DesiredTopic:
    return DesiredTopic(
        name=topics.meter_topic(namespace, "llm-tokens"),
        partitions=partitions,
        replication_factor=replication_factor,
        configs=METER_CONFIGS,
    )


async def test_a_missing_topic_is_created_with_its_partitions_replication_factor_and_configs(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    desired = meter_topic(namespace, partitions=3)

    outcomes = await reconcile_topics(admin, [desired])

    assert outcomes == [TopicOutcome(name=desired.name, created=True)]
    seen = await seen_by_kafka(kafka_bootstrap, desired.name)
    assert seen.partitions == 3
    assert seen.replication_factor == 1
    assert seen.overrides["cleanup.policy"] == "compact,delete"
    assert seen.overrides["retention.ms"] == "86400000"


async def test_reconciling_a_topic_that_is_as_desired_changes_nothing(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    desired = meter_topic(namespace)
    await reconcile_topics(admin, [desired])
    before = await seen_by_kafka(kafka_bootstrap, desired.name)

    (outcome,) = await reconcile_topics(admin, [desired])

    assert outcome.unchanged
    assert outcome == TopicOutcome(name=desired.name)
    assert await seen_by_kafka(kafka_bootstrap, desired.name) == before


async def test_partitions_grow_from_3_to_6(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    await reconcile_topics(admin, [meter_topic(namespace, partitions=3)])

    (outcome,) = await reconcile_topics(admin, [meter_topic(namespace, partitions=6)])

    assert outcome.partitions_grown == PartitionsGrown(before=3, after=6)
    assert outcome.problems == ()
    assert (await seen_by_kafka(kafka_bootstrap, outcome.name)).partitions == 6


async def test_fewer_partitions_are_refused_with_a_reason_and_the_topic_keeps_its_6(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    await reconcile_topics(admin, [meter_topic(namespace, partitions=6)])

    (outcome,) = await reconcile_topics(admin, [meter_topic(namespace, partitions=3)])

    assert outcome.unchanged
    assert outcome.shrink_refused == ShrinkRefused(actual=6, desired=3)
    assert [(p.reason, p.message) for p in outcome.problems] == [
        (
            "PartitionsCannotShrink",
            "the topic has 6 partitions and 3 are asked for; "
            "Kafka cannot remove partitions, so it keeps 6",
        )
    ]
    assert (await seen_by_kafka(kafka_bootstrap, outcome.name)).partitions == 6


async def test_a_drifted_managed_config_is_reverted_and_an_unmanaged_override_survives(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    desired = meter_topic(namespace)
    await reconcile_topics(admin, [desired])
    # By hand: retention (managed) changed, and a size limit kmeter does not manage added.
    # AlterConfigs replaces the whole set, so the hand sends what it wants the topic to have.
    by_hand = {**METER_CONFIGS, "retention.ms": "1000", "max.message.bytes": "200000"}
    async with raw_admin(kafka_bootstrap) as client:
        await client.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, desired.name, configs=by_hand)]
        )
    assert (await seen_by_kafka(kafka_bootstrap, desired.name)).overrides == by_hand

    (outcome,) = await reconcile_topics(admin, [desired])

    assert outcome.configs_reverted == ("retention.ms",)
    assert (await seen_by_kafka(kafka_bootstrap, desired.name)).overrides == {
        "cleanup.policy": "compact,delete",
        "retention.ms": "86400000",
        "max.message.bytes": "200000",
    }
    (again,) = await reconcile_topics(admin, [desired])
    assert again.unchanged


async def test_deleting_is_idempotent_and_a_missing_topic_is_fine(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    desired = meter_topic(namespace)
    never_created = topics.dead_letter_topic(namespace)
    await reconcile_topics(admin, [desired])

    assert await delete_topics(admin, [desired.name, never_created]) == [desired.name]
    assert await delete_topics(admin, [desired.name, never_created]) == []

    await eventually_gone(kafka_bootstrap, desired.name)  # Kafka deletes in the background
    assert await describe_topics(admin, [desired.name, never_created]) == {}


@pytest.mark.parametrize("clients", ["one shared admin client", "an admin client each"])
async def test_five_concurrent_reconciles_of_one_topic_all_succeed_and_one_creates_it(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str, clients: str
) -> None:
    # Five Meters of one namespace sharing its ingest topic, reconciled at the same moment.
    desired = DesiredTopic(
        topics.ingest_topic(namespace), 6, 1, {"cleanup.policy": "delete", "retention.ms": "1"}
    )

    async def reconcile() -> TopicOutcome:
        if clients == "one shared admin client":
            (outcome,) = await reconcile_topics(admin, [desired])
            return outcome
        async with KafkaAdmin(KafkaSettings(kafka_bootstrap)) as own:
            (outcome,) = await reconcile_topics(own, [desired])
            return outcome

    outcomes = await asyncio.gather(*(reconcile() for _ in range(5)))

    assert sorted(o.created for o in outcomes) == [False] * 4 + [True]
    assert all(o.problems == () for o in outcomes)
    seen = await seen_by_kafka(kafka_bootstrap, desired.name)
    assert seen.partitions == 6
    assert seen.overrides == {"cleanup.policy": "delete", "retention.ms": "1"}


async def test_concurrent_growths_of_one_topic_all_succeed(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    await reconcile_topics(admin, [meter_topic(namespace, partitions=2)])

    async def grow() -> TopicOutcome:
        async with KafkaAdmin(KafkaSettings(kafka_bootstrap)) as own:
            (outcome,) = await reconcile_topics(own, [meter_topic(namespace, partitions=8)])
            return outcome

    outcomes = await asyncio.gather(*(grow() for _ in range(5)))

    grown = [o.partitions_grown for o in outcomes if o.partitions_grown]
    assert grown == [PartitionsGrown(before=2, after=8)]
    assert all(o.problems == () for o in outcomes)
    assert (await seen_by_kafka(kafka_bootstrap, outcomes[0].name)).partitions == 8


async def test_a_replication_factor_other_than_the_topics_is_reported_and_left_alone(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    await reconcile_topics(admin, [meter_topic(namespace, replication_factor=1)])

    (outcome,) = await reconcile_topics(admin, [meter_topic(namespace, replication_factor=2)])

    assert outcome.replication_factor_differs == ReplicationFactorDiffers(actual=1, desired=2)
    assert outcome.shrink_refused is None
    assert outcome.unchanged
    assert (await seen_by_kafka(kafka_bootstrap, outcome.name)).replication_factor == 1


async def test_a_replication_factor_of_3_on_one_broker_is_a_topic_error_naming_the_problem(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    desired = meter_topic(namespace, replication_factor=3)

    with pytest.raises(TopicError) as raised:
        await reconcile_topics(admin, [desired])

    assert raised.value.topic == desired.name
    assert raised.value.error == "INVALID_REPLICATION_FACTOR"
    assert raised.value.reason == "InvalidReplicationFactor"
    assert "replication factor of 3 cannot be reached" in str(raised.value)
    assert str(raised.value).startswith(f"topic {desired.name}: INVALID_REPLICATION_FACTOR: ")
    assert not await topic_exists(kafka_bootstrap, desired.name)


async def test_an_invalid_config_value_is_a_topic_error_with_kafkas_words(
    admin: KafkaAdmin, namespace: str
) -> None:
    desired = DesiredTopic(topics.ingest_topic(namespace), 1, 1, {"retention.ms": "forever"})

    with pytest.raises(TopicError) as raised:
        await reconcile_topics(admin, [desired])

    assert raised.value.error == "INVALID_CONFIG"
    assert "retention.ms" in raised.value.message
    assert "forever" in raised.value.message


async def test_one_failing_topic_does_not_keep_the_others_from_being_reconciled(
    admin: KafkaAdmin, kafka_bootstrap: str, namespace: str
) -> None:
    failing = DesiredTopic(topics.dead_letter_topic(namespace), 1, 3)
    fine = meter_topic(namespace)

    with pytest.raises(TopicError, match="INVALID_REPLICATION_FACTOR"):
        await reconcile_topics(admin, [failing, fine])

    assert (await seen_by_kafka(kafka_bootstrap, fine.name)).partitions == 3


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: bound to find a free one, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_kafka_raises_kafka_unavailable_at_once_with_a_clear_message(
    closed_port: int, namespace: str
) -> None:
    settings = KafkaSettings(f"127.0.0.1:{closed_port}", request_timeout_ms=2000)
    started = time.monotonic()

    with pytest.raises(KafkaUnavailable) as raised:
        async with KafkaAdmin(settings) as admin:
            await reconcile_topics(admin, [meter_topic(namespace)])

    assert time.monotonic() - started < 2.0
    assert str(raised.value) == (
        f"cannot reach Kafka at 127.0.0.1:{closed_port} while connecting: "
        "no bootstrap server accepted a connection and answered "
        f'(Unable connect to "127.0.0.1:{closed_port}": [Errno 111] Connect call failed '
        f"('127.0.0.1', {closed_port}))"
    )
    assert raised.value.reason == "KafkaUnavailable"


async def test_a_server_that_accepts_connections_but_never_answers_is_unavailable_in_time(
    namespace: str,
) -> None:
    silent: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = KafkaSettings(f"127.0.0.1:{port}", request_timeout_ms=1000)
    started = time.monotonic()
    try:
        with pytest.raises(KafkaUnavailable, match=f"cannot reach Kafka at 127.0.0.1:{port} "):
            async with KafkaAdmin(settings) as admin:
                await reconcile_topics(admin, [meter_topic(namespace)])
    finally:
        for writer in silent:
            writer.close()
        server.close()
        with suppress(Exception):
            await server.wait_closed()

    assert time.monotonic() - started < 3.0


@asynccontextmanager
async def forwarder(port: int, to: str) -> AsyncIterator[None]:
    """Kafka becoming reachable at ``127.0.0.1:port``: a TCP forwarder to the real broker."""
    host, _, to_port = to.rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(to_port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def test_an_admin_started_while_kafka_was_unreachable_works_once_kafka_is_reachable(
    closed_port: int, kafka_bootstrap: str, namespace: str
) -> None:
    # One admin for the process's lifetime, as the operator keeps it: it connects on use.
    admin = KafkaAdmin(KafkaSettings(f"127.0.0.1:{closed_port}", request_timeout_ms=2000))
    desired = meter_topic(namespace)
    try:
        with pytest.raises(KafkaUnavailable):
            await reconcile_topics(admin, [desired])

        async with forwarder(closed_port, to=kafka_bootstrap):
            (outcome,) = await reconcile_topics(admin, [desired])
            assert outcome.created
            assert await delete_topics(admin, [desired.name]) == [desired.name]
    finally:
        await admin.close()
