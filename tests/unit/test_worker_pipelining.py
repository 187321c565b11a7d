"""The worker's pipelining: the next batch is planned while a transaction is in flight, and is
never written when that transaction fails (fakes for Kafka; the real thing is in
tests/integration/test_worker_*.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.unit.test_worker_records import Record

from kmeter.core.fold import FoldState, decode_total
from kmeter.worker.partition import PartitionState
from kmeter.worker.runner import Owned, Worker
from kmeter.worker.settings import WorkerSettings

SPEC = {
    "eventType": "t",
    "aggregation": "SUM",
    "valueProperty": "$.n",
    "windowSize": "MINUTE",
    "topic": {"partitions": 1, "replicationFactor": 1, "retention": "P400D"},
    "workers": {"replicas": 1},
    "deletionPolicy": "Retain",
}
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)


class FakeProducer:
    """Records transactions; each commit waits for ``release`` and fails if told to."""

    def __init__(self, failing_commits: set[int]) -> None:
        self.failing_commits = failing_commits
        self.release = asyncio.Event()
        self.begun = 0
        self.committed: list[tuple[list[tuple[str, Any, bytes]], dict[Any, int]]] = []
        self.aborted = 0
        self._sent: list[tuple[str, Any, bytes]] = []
        self._offsets: dict[Any, int] = {}

    async def begin_transaction(self) -> None:
        self.begun += 1
        self._sent = []

    async def send(
        self, topic: str, value: bytes, key: Any = None, partition: Any = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self._sent.append((topic, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self._offsets = dict(offsets)

    async def commit_transaction(self) -> None:
        await self.release.wait()
        if self.begun in self.failing_commits:
            raise RuntimeError("the broker said no")
        self.committed.append((self._sent, self._offsets))

    async def abort_transaction(self) -> None:
        self.aborted += 1

    async def stop(self) -> None:
        pass


class FakeConsumer:
    def __init__(self, worker: Worker) -> None:
        self.paused: list[Any] = []
        self._worker = worker

    def pause(self, *tps: Any) -> None:
        self.paused.extend(tps)

    def assignment(self) -> set[Any]:
        from aiokafka import TopicPartition  # noqa: PLC0415

        return {TopicPartition(self._worker.ingest_topic, 0)}

    def last_stable_offset(self, tp: Any) -> int | None:
        return None


def worker_with(producer: FakeProducer) -> tuple[Worker, Owned]:
    environ = {"KMETER_KAFKA_BOOTSTRAP": "kafka:9092", "KMETER_METER": json.dumps(SPEC)}
    worker = Worker(WorkerSettings.from_environment("ns", "m", environ))
    worker._consumer = FakeConsumer(worker)
    state = PartitionState(0, FoldState(worker.meter))
    owned = Owned(0, producer=producer, state=state, position=None)
    worker.owned[0] = owned
    return worker, owned


def batch(worker: Worker, first: int, values: list[int]) -> dict[Any, list[Record]]:
    from aiokafka import TopicPartition  # noqa: PLC0415

    stamp = int((T0 + timedelta(minutes=1)).timestamp() * 1000)
    records = []
    for offset, n in enumerate(values, start=first):
        event = {
            "specversion": "1.0",
            "id": f"e{offset}",
            "source": "s",
            "type": "t",
            "subject": "c",
            "time": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data": {"n": n},
        }
        value = json.dumps(event).encode()
        records.append(Record(worker.ingest_topic, 0, offset, stamp, b"c", value))
    return {TopicPartition(worker.ingest_topic, 0): records}


def totals(sent: list[tuple[str, Any, bytes]], topic: str) -> list[str | None]:
    return [
        None if (value := decode_total(v).value) is None else str(value)
        for t, _, v in sent
        if t == topic
    ]


async def test_the_next_batch_is_planned_on_the_batch_in_flight_and_written_after_it() -> None:
    producer = FakeProducer(failing_commits=set())
    worker, owned = worker_with(producer)
    await worker._process(batch(worker, 0, [1, 2]))
    await asyncio.sleep(0.01)
    assert producer.begun == 1  # in flight, waiting for its commit
    first = owned.inflight
    release = asyncio.get_running_loop().call_later(0.05, producer.release.set)
    await worker._process(batch(worker, 2, [10]))  # planned while the first is in flight
    assert first is not None
    assert first.done()
    assert owned.inflight is not None
    await owned.inflight
    release.cancel()
    assert producer.begun == 2
    (first_sent, first_offsets), (second_sent, second_offsets) = producer.committed
    assert totals(first_sent, worker.output_topic) == ["3"]
    assert totals(second_sent, worker.output_topic) == ["13"]  # on top of the first batch
    assert list(first_offsets.values()) == [2]
    assert list(second_offsets.values()) == [3]


async def test_when_the_transaction_in_flight_fails_the_batch_planned_behind_it_is_dropped() -> (
    None
):
    producer = FakeProducer(failing_commits={1})
    worker, owned = worker_with(producer)
    await worker._process(batch(worker, 0, [1, 2]))
    release = asyncio.get_running_loop().call_later(0.05, producer.release.set)
    await worker._process(batch(worker, 2, [10]))
    release.cancel()
    # The first commit failed: the state that ran ahead of Kafka is dropped, the partition
    # paused for its rebuild, and the second batch never began a transaction.
    assert producer.committed == []
    assert producer.begun == 1
    assert producer.aborted == 1
    assert owned.state is None
    assert owned.producer is None
    assert not owned.ready
    assert owned.inflight is None or owned.inflight.done()
    assert worker.consumer.paused
    # Nothing is planned for the partition until it is rebuilt.
    await worker._process(batch(worker, 3, [100]))
    assert producer.begun == 1
