"""Quota enforcement by a real kmeter-sidecar, fed by a real decisions topic in the real Kafka.

The decision records are produced here with the contract's encode functions
(:mod:`kmeter.decisions`) — the interface the aggregation worker writes through (the worker
end to end is ``tests/e2e/test_quota_enforcement.py``). The app is an aiohttp server that
counts the requests it sees per subject, so a test can tell a refused request never reached it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tests.support.http import App, serve_in_thread
from tests.support.operator import free_port
from tests.support.quota_records import Record, quota_policy, record_of, subject_decision
from tests.support.sidecar import SidecarProcess, launch_sidecar

from kmeter.core.windows import WindowSize, local_window
from kmeter.decisions import QuotaPolicy, RateLimitPolicy, SubjectDecision, policy_key
from kmeter.topics import ingest_topic, quota_decisions_topic

EVENT_TYPE = "api.call"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"

# --- the app --------------------------------------------------------------------------------

seen_by_app: collections.Counter[str] = collections.Counter()


async def app_hello(request: web.Request) -> web.Response:
    seen_by_app[request.headers.get("X-Customer-Id", "")] += 1
    return web.json_response({"ok": True}, headers={"RateLimit": '"app-own";r=7'})


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    application = web.Application()
    application.router.add_get("/hello", app_hello)
    with serve_in_thread(application) as served:
        yield served


# --- Kafka ----------------------------------------------------------------------------------


async def create_topics(bootstrap: str, namespace: str, *, decisions: bool = True) -> None:
    topics = [NewTopic(ingest_topic(namespace), 3, 1)]
    if decisions:
        topics.append(
            NewTopic(
                quota_decisions_topic(namespace), 3, 1, topic_configs={"cleanup.policy": "compact"}
            )
        )
    await create(bootstrap, *topics)


async def create(bootstrap: str, *topics: NewTopic) -> None:
    """Create topics and wait until the broker's metadata lists them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(list(topics))
        while not {topic.name for topic in topics} <= set(await admin.list_topics()):  # noqa: ASYNC110 - polling the broker
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def commit(
    bootstrap: str, namespace: str, *records: QuotaPolicy | SubjectDecision | Record
) -> float:
    """Write records to the decisions topic in one transaction, as the worker does; the
    monotonic time at which the commit returned."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            for record in records:
                key, value = record if isinstance(record, tuple) else record_of(record)
                await producer.send(quota_decisions_topic(namespace), value, key=key)
        return time.monotonic()
    finally:
        await producer.stop()


async def events_of(bootstrap: str, namespace: str) -> list[dict[str, Any]]:
    topic = ingest_topic(namespace)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[dict[str, Any]] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for messages in (await consumer.getmany(timeout_ms=2000)).values():
                found.extend(json.loads(m.value) for m in messages)
        return found
    finally:
        await consumer.stop()


# --- records --------------------------------------------------------------------------------


def today(now: datetime | None = None) -> tuple[datetime, datetime]:
    window = local_window(now or datetime.now(UTC), WindowSize.DAY, UTC)
    return window.start, window.end


def policy(**changes: Any) -> QuotaPolicy:
    return quota_policy(**{"event_type": EVENT_TYPE, "counts_requests": True, **changes})


def decision(subject: str, used: int, **changes: Any) -> SubjectDecision:
    return subject_decision(subject, used, today(), **changes)


# --- the sidecar ----------------------------------------------------------------------------


class Sidecars:
    """Starts sidecars in front of the app, each on a namespace of its own; kills leftovers."""

    def __init__(self, bootstrap: str, app: App, directory: Path) -> None:
        self.bootstrap = bootstrap
        self.app = app
        self.directory = directory
        self.started: list[SidecarProcess] = []

    def namespace(self) -> str:
        return f"q-{uuid.uuid4().hex[:10]}"

    def start(
        self,
        namespace: str,
        *args: str,
        env: dict[str, str] | None = None,
        bootstrap: str | None = None,
        wait: bool = True,
    ) -> SidecarProcess:
        sidecar = launch_sidecar(
            bootstrap or self.bootstrap,
            self.app.port,
            self.directory,
            namespace,
            "--event-type", EVENT_TYPE,
            "--kafka-retry-interval", "0.5s",
            *args,
            env=env,
        )  # fmt: skip
        self.started.append(sidecar)
        if wait:
            sidecar.wait_ready()
        return sidecar

    async def enforcing(
        self, *records: QuotaPolicy | SubjectDecision | Record, args: tuple[str, ...] = ()
    ) -> SidecarProcess:
        """A sidecar on a new namespace whose decisions topic holds ``records``."""
        namespace = self.namespace()
        await create_topics(self.bootstrap, namespace)
        await commit(self.bootstrap, namespace, *records)
        return await asyncio.to_thread(self.start, namespace, *args)


@pytest.fixture
def sidecars(kafka_bootstrap: str, app: App, tmp_path: Path) -> Iterator[Sidecars]:
    factory = Sidecars(kafka_bootstrap, app, tmp_path)
    yield factory
    for sidecar in factory.started:
        sidecar.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def get(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, subject: str
) -> tuple[int, dict[str, str], Any]:
    async with http.get(f"{sidecar.url}/hello", headers={"X-Customer-Id": subject}) as response:
        body = await response.json(content_type=None)
        headers = {name: ", ".join(response.headers.getall(name)) for name in response.headers}
        return response.status, headers, body


async def statuses(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, subject: str, count: int
) -> list[int]:
    return [(await get(http, sidecar, subject))[0] for _ in range(count)]


# --- tests ----------------------------------------------------------------------------------


async def test_request_101_of_a_100_per_day_quota_is_refused_and_never_reaches_the_app(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(policy())
    namespace = sidecar.namespace
    subject = f"c-{uuid.uuid4().hex[:6]}"

    assert await statuses(http, sidecar, subject, 100) == [200] * 100
    status, headers, body = await get(http, sidecar, subject)

    assert status == 429
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["RateLimit-Policy"] == '"free-tier";q=100;w=86400'
    _, end = today()
    remaining = (end - datetime.now(UTC)).total_seconds()
    assert headers["RateLimit"].startswith('"free-tier";r=0;t=')
    assert abs(int(headers["Retry-After"]) - remaining) < 5, "seconds until the period resets"
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["quota"] == "free-tier"
    assert body["violated-policies"] == ["free-tier"]
    assert "free-tier" in body["detail"]
    assert await statuses(http, sidecar, subject, 5) == [429] * 5
    assert seen_by_app[subject] == 100
    assert sidecar.metric('kmeter_sidecar_requests_refused_total{reason="quota"}') == 6
    assert sidecar.terminate() == 0, sidecar.output()
    events = await events_of(kafka_bootstrap, namespace)
    billed = {event["id"] for event in events if event["subject"] == subject}  # at least once
    assert len(billed) == 100, "refused requests are not billed"


async def test_an_admitted_response_carries_the_headers_next_to_the_apps_own(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(policy(), decision("c1", 40))

    status, headers, _ = await get(http, sidecar, "c1")

    assert status == 200
    assert headers["RateLimit-Policy"] == '"free-tier";q=100;w=86400'
    assert headers["RateLimit"].startswith('"app-own";r=7, "free-tier";r=59;t=')
    status, headers, _ = await get(http, sidecar, "no-decision-yet")
    assert headers["RateLimit"].startswith('"app-own";r=7, "free-tier";r=99;t=')


async def test_a_blocked_decision_is_enforced_within_a_second_of_its_commit(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(policy(counts_requests=False))
    namespace = sidecar.namespace
    assert await statuses(http, sidecar, "c1", 3) == [200] * 3

    committed = await commit(kafka_bootstrap, namespace, decision("c1", 100))
    while (await get(http, sidecar, "c1"))[0] != 429:
        assert time.monotonic() - committed < 1.0, "no 429 within 1 s of the commit"
        await asyncio.sleep(0.01)

    # a refusal of a request without a body keeps the connection: an admitted request, then
    # 1,000 refused ones pipelined behind it on the same connection
    admitted = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Customer-Id: c2\r\n\r\n"
    refused = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Customer-Id: c1\r\n\r\n"
    raw = pipelined(sidecar.port, admitted + refused * 1000, 1001)
    assert raw.count(b"HTTP/1.1 200 ") == 1
    assert raw.count(b"HTTP/1.1 429 Too Many Requests") == 1000
    assert b"Connection: close" not in raw


def pipelined(port: int, requests: bytes, count: int) -> bytes:
    """Send ``requests`` on one connection; the bytes of the first ``count`` responses."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(requests)
        received = b""
        while received.count(b"HTTP/1.1 ") < count or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


async def test_a_notify_quota_never_refuses(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(policy(enforcement="Notify"), decision("c1", 5000))

    assert await statuses(http, sidecar, "c1", 120) == [200] * 120
    assert sidecar.metric('kmeter_sidecar_requests_refused_total{reason="quota"}') == 0


async def test_an_override_subject_has_its_own_limit(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(
        policy(overrides={"big": Decimal(500)}, counts_requests=False),
        decision("big", 200, limit=Decimal(500)),
        decision("small", 200),
    )

    big_status, big_headers, _ = await get(http, sidecar, "big")
    assert (big_status, big_headers["RateLimit-Policy"]) == (
        200,
        '"free-tier";q=500;w=86400;kmeter-meter="api-calls"',
    )
    assert (await get(http, sidecar, "small"))[0] == 429
    await commit(kafka_bootstrap, sidecar.namespace, decision("big", 500, limit=Decimal(500)))
    deadline = time.monotonic() + 5
    while (await get(http, sidecar, "big"))[0] != 429:
        assert time.monotonic() < deadline


async def test_a_period_that_ended_or_a_clock_past_it_serves_the_subject_again(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    start, end = today()
    now_sidecar = await sidecars.enforcing(
        policy(counts_requests=False),
        decision("old", 150, period_start=start - timedelta(days=1), period_end=start),
        decision("c1", 150),
    )
    assert (await get(http, now_sidecar, "old"))[0] == 200
    assert (await get(http, now_sidecar, "c1"))[0] == 429

    tomorrow = str((end - datetime.now(UTC)).total_seconds() + 60)
    later = sidecars.start(now_sidecar.namespace, env={"KMETER_CLOCK_OFFSET_SECONDS": tomorrow})
    status, headers, _ = await get(http, later, "c1")
    assert status == 200, "the period rolled over with no new record"
    assert headers["RateLimit"].startswith('"app-own";r=7, "free-tier";r=100;t=')


async def test_a_policy_tombstone_lifts_the_quota(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(policy(), decision("c1", 100))
    assert (await get(http, sidecar, "c1"))[0] == 429

    committed = await commit(kafka_bootstrap, sidecar.namespace, (policy_key("free-tier"), None))
    while (await get(http, sidecar, "c1"))[0] != 200:
        assert time.monotonic() - committed < 1.0
        await asyncio.sleep(0.01)
    _, headers, _ = await get(http, sidecar, "c1")
    assert "free-tier" not in headers.get("RateLimit-Policy", "")


async def test_a_rate_limit_burst_and_its_refill_behave_as_documented(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    # 2 requests per 2 s (a token a second), bursts of 3 — per sidecar replica
    sidecar = await sidecars.enforcing(
        policy(enforcement="Notify", rate_limit=RateLimitPolicy(2, 2, 3))
    )

    burst = [await get(http, sidecar, "c1") for _ in range(3 + 2)]
    assert [status for status, _, _ in burst] == [200, 200, 200, 429, 429]
    _, headers, body = burst[3]
    assert headers["RateLimit-Policy"] == '"free-tier/rate";q=2;w=2;kmeter-burst=3'
    assert headers["RateLimit"] == '"free-tier/rate";r=0;t=1'
    assert headers["Retry-After"] == "1"
    assert body["violated-policies"] == ["free-tier/rate"]
    assert burst[2][1]["RateLimit"].endswith('"free-tier/rate";r=0;t=1')

    await asyncio.sleep(1.5)  # one token (and half of the next)
    assert await statuses(http, sidecar, "c1", 2) == [200, 429]
    assert await statuses(http, sidecar, "someone-else", 4) == [200, 200, 200, 429]
    other = sidecars.start(sidecar.namespace)
    assert await statuses(http, other, "c1", 4) == [200, 200, 200, 429], "buckets per replica"
    assert sidecar.metric('kmeter_sidecar_requests_refused_total{reason="rate_limit"}') == 4


async def test_the_sidecar_is_ready_only_once_the_decisions_are_loaded(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    namespace = sidecars.namespace()
    await create_topics(kafka_bootstrap, namespace)
    await commit(kafka_bootstrap, namespace, policy(), decision("c1", 100))
    # Kafka reached through a relay that is not there yet: the sidecar cannot load at first
    relay_port = free_port()
    sidecar = sidecars.start(
        namespace, "--decisions-timeout", "60s", bootstrap=f"127.0.0.1:{relay_port}", wait=False
    )
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            readiness = sidecar.admin("/readyz")
            break
        except OSError:
            await asyncio.sleep(0.05)
    assert readiness == (503, "loading quota decisions\n")
    await asyncio.sleep(1)
    assert sidecar.admin("/readyz")[0] == 503
    assert not sidecar.accepts_connections(), "the proxy listens only once decisions are in"

    kafka_host, kafka_port = kafka_bootstrap.rsplit(":", 1)
    async with relay(relay_port, kafka_host, int(kafka_port)):
        await asyncio.to_thread(sidecar.wait_ready)
        assert (await get(http, sidecar, "c1"))[0] == 429, "the first request is enforced"
    assert sidecar.metric("kmeter_sidecar_decisions_available") == 1


class relay:  # noqa: N801 - used as a context manager
    """A TCP relay from a loopback port to Kafka, while the context is open."""

    def __init__(self, port: int, host: str, target: int) -> None:
        self.port, self.host, self.target = port, host, target
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.target)
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        self.server = await asyncio.start_server(connected, "127.0.0.1", self.port)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_without_decisions_the_sidecar_fails_open_by_default_and_says_so(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    missing = sidecars.namespace()
    await create_topics(kafka_bootstrap, missing, decisions=False)
    sidecar = sidecars.start(missing)
    assert await statuses(http, sidecar, "c1", 3) == [200] * 3
    assert sidecar.metric("kmeter_sidecar_decisions_available") == 0
    assert "does not exist" in sidecar.output()
    assert "failing OPEN" in sidecar.output()

    unreachable = sidecars.start(
        sidecars.namespace(), "--decisions-timeout", "1s", bootstrap=f"127.0.0.1:{free_port()}"
    )
    assert await statuses(http, unreachable, "c1", 3) == [200] * 3
    assert unreachable.metric("kmeter_sidecar_decisions_available") == 0
    assert "failing OPEN" in unreachable.output()
    assert "did not answer in time" in unreachable.output() or "Kafka at" in unreachable.output()


async def test_failing_closed_refuses_with_503_until_the_decisions_load(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    namespace = sidecars.namespace()
    await create_topics(kafka_bootstrap, namespace, decisions=False)
    sidecar = sidecars.start(namespace, "--decisions-fail", "closed")
    subject = f"c-{uuid.uuid4().hex[:6]}"

    status, headers, body = await get(http, sidecar, subject)
    assert status == 503
    assert headers["Content-Type"] == "application/problem+json"
    assert "fail closed" in body["detail"]
    assert "does not exist" in body["detail"]
    assert headers["Retry-After"] == "5"
    assert seen_by_app[subject] == 0
    assert sidecar.metric("kmeter_sidecar_decisions_available") == 0
    assert (
        sidecar.metric('kmeter_sidecar_requests_refused_total{reason="decisions_unavailable"}') == 1
    )
    assert "failing CLOSED" in sidecar.output()

    # the topic appears (the operator creates it): the sidecar loads it and enforces
    await create(kafka_bootstrap, NewTopic(quota_decisions_topic(namespace), 3, 1))
    await commit(kafka_bootstrap, namespace, policy(), decision("c1", 100))
    deadline = time.monotonic() + 10
    while (await get(http, sidecar, "c1"))[0] == 503:
        assert time.monotonic() < deadline, sidecar.output()
        await asyncio.sleep(0.1)
    assert (await get(http, sidecar, "c1"))[0] == 429
    assert (await get(http, sidecar, "c2"))[0] == 200
    assert sidecar.metric("kmeter_sidecar_decisions_available") == 1
    assert "available again" in sidecar.output()


async def test_malformed_records_are_counted_and_skipped_and_enforcement_goes_on(
    sidecars: Sidecars, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = await sidecars.enforcing(
        (b"policy/free-tier", b"{not json"),
        (b"nonsense", b"{}"),
        (b"subject/free-tier/c1", b'{"kind": "subject"}'),
        policy(),
        decision("c1", 100),
    )
    assert (await get(http, sidecar, "c1"))[0] == 429
    assert sidecar.metric("kmeter_sidecar_decisions_malformed_total") == 3
    assert "skipping a malformed record" in sidecar.output()
    assert sidecar.process.poll() is None
