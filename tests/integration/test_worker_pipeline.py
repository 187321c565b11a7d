"""The worker as a real process against the real broker: totals equal a plain oracle exactly.

The helpers here (topics as the operator creates them, a worker subprocess, a random event
stream and its oracle, reading the output back) are shared by ``test_worker_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kmeter import topics
from kmeter.core.fold import decode_total
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.settings import KafkaSettings
from kmeter.kafka.topics import reconcile_topics
from kmeter.operator.meter_topics import TopicLayout, meter_topics, quota_topics

REPO = Path(__file__).resolve().parents[2]
KMETER = REPO / ".venv" / "bin" / "kmeter"
EVENT_TYPE = "llm.completion"
RETENTION = timedelta(days=1)

WindowId = tuple[str, str | None, datetime]
"""(subject, model label, window start)."""


# --- topics, as the operator creates them ------------------------------------------------------


@dataclass
class Meter:
    """A Meter under test: its namespace, name, topics and the spec the operator passes."""

    bootstrap: str
    partitions: int = 3
    namespace: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:10]}")
    name: str = "tokens"

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "eventType": EVENT_TYPE,
            "aggregation": "SUM",
            "valueProperty": "$.usage.tokens",
            "groupBy": {"model": "$.model"},
            "windowSize": "MINUTE",
            "topic": {"partitions": self.partitions, "replicationFactor": 1, "retention": "P1D"},
            "workers": {"replicas": 1},
            "deletionPolicy": "Retain",
        }

    @property
    def ingest(self) -> str:
        return topics.ingest_topic(self.namespace)

    @property
    def output(self) -> str:
        return topics.meter_topic(self.namespace, self.name)

    @property
    def dead_letters(self) -> str:
        return topics.dead_letter_topic(self.namespace)

    @property
    def group(self) -> str:
        return topics.meter_consumer_group(self.namespace, self.name)

    def create_topics(self, *, with_quota_topics: bool = True) -> None:
        """The Meter's topics and its namespace's quota topics, as the operator creates them."""
        layout = TopicLayout(self.partitions, 1, int(RETENTION.total_seconds() * 1000))

        async def create() -> None:
            async with KafkaAdmin(KafkaSettings(self.bootstrap)) as admin:
                await reconcile_topics(admin, meter_topics(self.namespace, self.name, layout, []))
                if with_quota_topics:
                    await reconcile_topics(admin, quota_topics(self.namespace, layout, []))

        asyncio.run(create())


# --- the worker process -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerProcess:
    """``kmeter worker`` as a subprocess, configured the way the operator configures it."""

    def __init__(self, meter: Meter, log_dir: Path, **extra_env: str) -> None:
        self.meter = meter
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.log_path = log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = {
            **os.environ,
            "KMETER_KAFKA_BOOTSTRAP": meter.bootstrap,
            "KMETER_METER": json.dumps(meter.spec),
            "KMETER_QUOTAS_FILE": "/nonexistent/quotas.json",
            "POD_NAME": f"worker-{uuid.uuid4().hex[:6]}",
            "KMETER_METRICS_PORT": str(self.metrics_port),
            "KMETER_HEALTH_PORT": str(self.health_port),
            "KMETER_SESSION_TIMEOUT_MS": "6000",
            **extra_env,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(KMETER), "worker", "--namespace", meter.namespace, "--meter", meter.name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get(self.health_port, "/readyz")[0] == 200

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the worker exited: {self.log()}"
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"the worker did not become ready: {self.log()}")

    def metrics(self) -> dict[str, float]:
        status, text = self._get(self.metrics_port, "/metrics")
        assert status == 200
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


# --- events and their oracle ------------------------------------------------------------------


@dataclass
class Stream:
    """Ingest records (key, value) and what a plain computation says they must give."""

    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    totals: dict[WindowId, Decimal] = field(default_factory=dict)
    dead: Counter[str] = field(default_factory=Counter)
    """Expected dead letters by kind: malformed, too-old, bad-value."""
    counted: set[tuple[str, str]] = field(default_factory=set)
    duplicates: int = 0
    """Copies of counted events: the worker must skip them."""

    def count(self, subject: str, model: str | None, at: datetime, value: Decimal) -> None:
        start = at.replace(second=0, microsecond=0)
        key = (subject, model, start)
        self.totals[key] = self.totals.get(key, Decimal(0)) + value


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def random_stream(  # noqa: PLR0912, PLR0915 - one generator, each branch a kind of event
    seed: int, size: int, *, now: datetime | None = None, id_prefix: str = ""
) -> Stream:
    """``size`` events: valid (recent or late), exact duplicates, other types, malformed,
    too old and with bad values, in random order. Keys are subjects, as the usage API writes."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    stream = Stream()
    subjects = [f"customer-{i}" for i in range(rng.randint(3, 12))]
    models = ["gpt-4o", "claude", None]
    sent: list[tuple[tuple[bytes | None, bytes], str]] = []
    for n in range(size):
        roll = rng.random()
        subject = rng.choice(subjects)
        if roll < 0.12 and sent:  # a producer's retry: the same record again
            again, earlier = rng.choice(sent)
            stream.records.append(again)
            if earlier == "counted":
                stream.duplicates += 1
            elif earlier != "other":  # only counted events are remembered: refused again
                stream.dead[earlier] += 1
            continue
        source = rng.choice(["gateway", "batch-job", "sidecar/a"])
        event_id = f"{id_prefix}{seed}-{n}"
        if roll < 0.72:
            at = now - timedelta(seconds=rng.randint(0, 300))
        else:
            at = now - timedelta(seconds=rng.randint(301, 20 * 3600))  # late, within retention
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": EVENT_TYPE,
            "subject": subject,
            "time": _stamp(at),
        }
        model = rng.choice(models)
        value = rng.choice([Decimal(rng.randint(0, 5000)), Decimal("0.1"), Decimal("12.345")])
        data: dict[str, Any] = {
            "usage": {"tokens": int(value) if value == int(value) else str(value)}
        }
        if model is not None:
            data["model"] = model
        event["data"] = data
        kind = rng.random()
        key: bytes | None = subject.encode()
        refused = "counted"
        if kind < 0.04:
            raw = b'{"specversion": "1.0", "id": ' + event_id.encode()  # not JSON
            refused = "malformed"
        elif kind < 0.07:
            del event["subject"]
            raw = json.dumps(event).encode()
            key = None
            refused = "malformed"
        elif kind < 0.10:
            event["time"] = _stamp(now - timedelta(days=3))
            raw = json.dumps(event).encode()
            refused = "too-old"
        elif kind < 0.13:
            data["usage"]["tokens"] = rng.choice(["lots", True, None])
            raw = json.dumps(event).encode()
            refused = "bad-value"
        elif kind < 0.18:
            event["type"] = "other.meter"
            raw = json.dumps(event).encode()
            refused = "other"
        else:
            raw = json.dumps(event).encode()
            stream.count(subject, model, at, value)
            stream.counted.add((source, event_id))
        record = (key, raw)
        stream.records.append(record)
        if refused not in ("counted", "other"):
            stream.dead[refused] += 1
        sent.append((record, refused))
    return stream


def combine(*streams: Stream) -> Stream:
    """The oracle of several streams produced one after the other (ids must not overlap)."""
    whole = Stream()
    for stream in streams:
        whole.records.extend(stream.records)
        for key, value in stream.totals.items():
            whole.totals[key] = whole.totals.get(key, Decimal(0)) + value
        whole.dead.update(stream.dead)
        whole.counted |= stream.counted
        whole.duplicates += stream.duplicates
    return whole


# --- Kafka, seen independently ----------------------------------------------------------------


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(send())


async def _read_all(bootstrap: str, topic: str, partition_count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partition_count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        remaining = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return records
    finally:
        await consumer.stop()


def read_totals(meter: Meter) -> dict[WindowId, Decimal]:
    """The totals in the output topic: the latest record per (partition, key), read_committed.

    Also checks the co-partitioning: a window's key lives in one partition only.
    """
    records = asyncio.run(_read_all(meter.bootstrap, meter.output, meter.partitions))
    latest: dict[tuple[int, bytes], bytes] = {}
    for record in records:
        latest[(record.partition, record.key)] = record.value
    partitions_of_key: dict[bytes, set[int]] = {}
    for partition, key in latest:
        partitions_of_key.setdefault(key, set()).add(partition)
    assert all(len(found) == 1 for found in partitions_of_key.values())
    totals: dict[WindowId, Decimal] = {}
    for value in latest.values():
        total = decode_total(value)
        window = (total.subject, total.group["model"], total.window_start)
        assert total.value is not None
        totals[window] = total.value
    return totals


def read_dead_letters(meter: Meter) -> list[Any]:
    return asyncio.run(_read_all(meter.bootstrap, meter.dead_letters, 1))


def committed_offsets(meter: Meter) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, end offset) per ingest partition."""

    async def ask() -> tuple[dict[int, int], dict[int, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=meter.bootstrap)
        await admin.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=meter.bootstrap)
        await consumer.start()
        try:
            offsets = await admin.list_consumer_group_offsets(meter.group)
            partitions = [TopicPartition(meter.ingest, p) for p in range(meter.partitions)]
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
            await admin.close()
        committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
        return committed, {tp.partition: end for tp, end in ends.items()}

    return asyncio.run(ask())


def wait_until_consumed(meter: Meter, timeout: float = 120, *, alive: list[WorkerProcess]) -> None:
    """Until the group's committed offsets reach the end of every ingest partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        committed, ends = committed_offsets(meter)
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return
        for worker in alive:
            assert worker.process.poll() is None, f"a worker exited: {worker.log()}"
        time.sleep(0.3)
    logs = "\n".join(worker.log() for worker in alive)
    raise AssertionError(f"not consumed in {timeout} s: {committed_offsets(meter)}\n{logs}")


def assert_exact(meter: Meter, stream: Stream) -> None:
    assert read_totals(meter) == stream.totals


def dead_letter_kinds(meter: Meter) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for record in read_dead_letters(meter):
        reason = dict(record.headers)["kmeter-reason"].decode()
        if "older than the retention" in reason:
            kinds["too-old"] += 1
        elif "$.usage.tokens" in reason:
            kinds["bad-value"] += 1
        else:
            kinds["malformed"] += 1
    return kinds


# --- the tests --------------------------------------------------------------------------------


def test_totals_equal_a_plain_oracle_over_random_streams_with_duplicates_late_and_bad_events(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    meter.create_topics()
    first, second = random_stream(1, 1500), random_stream(2, 1500)
    produce(kafka_bootstrap, meter.ingest, first.records)
    worker = WorkerProcess(meter, tmp_path)
    try:
        worker.wait_ready()
        produce(kafka_bootstrap, meter.ingest, second.records)  # while it runs
        wait_until_consumed(meter, alive=[worker])
        stream = combine(first, second)
        assert_exact(meter, stream)
        assert dead_letter_kinds(meter) == stream.dead
    finally:
        worker.kill()


def test_each_refused_event_is_dead_lettered_once_with_its_reason_and_original_bytes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap, partitions=1)
    meter.create_topics()
    now = datetime.now(UTC)
    good = {
        "specversion": "1.0",
        "id": "ok-1",
        "source": "s",
        "type": EVENT_TYPE,
        "subject": "c1",
        "time": _stamp(now),
        "data": {"usage": {"tokens": 5}},
    }
    too_old = {**good, "id": "old-1", "time": _stamp(now - timedelta(days=2))}
    bad_value = {**good, "id": "bad-1", "data": {"usage": {"tokens": "many"}}}
    no_subject = {k: v for k, v in good.items() if k != "subject"} | {"id": "nosub-1"}
    array = [good | {"id": "arr-ok"}, good | {"id": "arr-bad", "specversion": "0.3"}]
    records: list[tuple[bytes | None, bytes]] = [
        (b"c1", json.dumps(good).encode()),
        (b"c1", json.dumps(too_old).encode()),
        (b"c1", json.dumps(bad_value).encode()),
        (None, json.dumps(no_subject).encode()),
        (b"c1", b"not json at all"),
        (b"c1", b"[1, 2"),
        (b"c1", json.dumps(array).encode()),
    ]
    produce(kafka_bootstrap, meter.ingest, records)
    worker = WorkerProcess(meter, tmp_path)
    try:
        wait_until_consumed(meter, alive=[worker])
        letters = read_dead_letters(meter)
        seen = {
            (record.value, dict(record.headers).get("kmeter-index")): dict(record.headers)[
                "kmeter-reason"
            ].decode()
            for record in letters
        }
        assert len(letters) == len(seen) == 6
        assert "older than the retention horizon" in seen[(records[1][1], None)]
        assert "$.usage.tokens" in seen[(records[2][1], None)]
        assert "subject: must be a non-empty string" in seen[(records[3][1], None)]
        assert "body: is not valid JSON" in seen[(records[4][1], None)]
        assert "body: is not valid JSON" in seen[(records[5][1], None)]
        assert "specversion" in seen[(records[6][1], b"1")]
        assert all(dict(r.headers)["kmeter-meter"] == meter.name.encode() for r in letters)
        minute = now.replace(second=0, microsecond=0)
        assert read_totals(meter) == {("c1", None, minute): Decimal(10)}
        assert worker.process.poll() is None  # bad input never stops it
    finally:
        worker.kill()


def test_metrics_and_readiness_say_what_the_worker_did(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    meter.create_topics()
    stream = random_stream(7, 600)
    worker = WorkerProcess(meter, tmp_path)
    try:
        worker.wait_ready()
        assert worker._get(worker.health_port, "/healthz")[0] == 200
        produce(kafka_bootstrap, meter.ingest, stream.records)
        wait_until_consumed(meter, alive=[worker])
        time.sleep(1.5)  # gauges refresh every second
        metrics = worker.metrics()
        assert metrics["kmeter_worker_records_in_total"] == len(stream.records)
        assert metrics["kmeter_worker_events_counted_total"] == len(stream.counted)
        assert metrics["kmeter_worker_events_deduplicated_total"] == stream.duplicates
        dead = sum(stream.dead.values())
        assert (
            metrics.get('kmeter_worker_events_dead_lettered_total{kind="malformed"}', 0)
            + metrics.get('kmeter_worker_events_dead_lettered_total{kind="rejected"}', 0)
            == dead
        )
        assert metrics["kmeter_worker_dedup_entries"] == len(stream.counted)
        assert metrics["kmeter_worker_dedup_memory_bytes"] > 0
        assert metrics['kmeter_worker_transactions_total{result="committed"}'] >= 1
        assert metrics["kmeter_worker_last_event_timestamp_seconds"] > time.time() - 400
        assert metrics["kmeter_worker_assigned_partitions"] == 3
        assert all(
            value == 0
            for name, value in metrics.items()
            if name.startswith("kmeter_worker_consumer_lag")
        )
    finally:
        worker.kill()


def test_sigterm_finishes_the_batch_leaves_the_group_and_exits_zero(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    meter.create_topics()
    stream = random_stream(11, 3000)
    produce(kafka_bootstrap, meter.ingest, stream.records)
    worker = WorkerProcess(meter, tmp_path)
    worker.wait_ready()
    time.sleep(0.3)
    started = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - started < 15, "leaving the group should not wait for a timeout"
    # A second worker takes over at once (the first left the group) and finishes exactly.
    second = WorkerProcess(meter, tmp_path)
    try:
        wait_until_consumed(meter, alive=[second])
        assert_exact(meter, stream)
    finally:
        second.kill()


def test_a_restarted_worker_restores_windows_and_dedup_from_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    meter.create_topics()
    first = random_stream(21, 800)
    produce(kafka_bootstrap, meter.ingest, first.records)
    worker = WorkerProcess(meter, tmp_path)
    wait_until_consumed(meter, alive=[worker])
    assert worker.stop() == 0
    # Every record of the first stream is delivered again (a producer replaying its spool),
    # and new events for the same windows: the restarted worker must add only the new ones.
    second = random_stream(22, 800)
    produce(kafka_bootstrap, meter.ingest, first.records + second.records)
    restarted = WorkerProcess(meter, tmp_path)
    try:
        wait_until_consumed(meter, alive=[restarted])
        expected = combine(first, second)
        assert_exact(meter, expected)
        kinds = dead_letter_kinds(meter)
        # Duplicated dead letters are re-refused (only counted events are remembered).
        assert kinds == first.dead + first.dead + second.dead
    finally:
        restarted.kill()
