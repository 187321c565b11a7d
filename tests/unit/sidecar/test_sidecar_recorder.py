"""Usage events built a batch at a time (kmeter_sidecar.recorder), and the emitter building them.

The recorder's events are decoded with the contract's own decoder and compared field by field
with the exchange they describe; the emitter runs its real sender loop against a stand-in
producer. The whole path — every request through a real sidecar yields exactly one event in
Kafka, across outages and SIGTERM — is tested in ``tests/integration/test_sidecar_proxy.py``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.support.quota_records import quota_policy, record_of
from tests.unit.sidecar.test_sidecar_emitter import RecordingProducer, emitter

from kmeter.core.events import decode_event
from kmeter_sidecar.emitter import Emitter
from kmeter_sidecar.metrics import Metrics
from kmeter_sidecar.proxy import Exchange
from kmeter_sidecar.quotas import QuotaTable
from kmeter_sidecar.recorder import OVERFLOW_STEP, EventRecorder
from kmeter_sidecar.sink import EventSink
from kmeter_sidecar.usage import EventFactory

STARTED_WALL = datetime(2026, 12, 6, 21, 0, 0, 250_000, tzinfo=UTC).timestamp()


class ListSink:
    """An EventSink that keeps what it gets."""

    topic = "a list"

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def emit(self, key: bytes, value: bytes) -> None:
        self.records.append((key, value))

    async def start(self) -> None: ...

    async def close(self, flush_timeout: float) -> None: ...


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def exchange(subject: str, number: int) -> Exchange:
    """A finished GET of ``/items/<number>`` that started at monotonic 100.0."""
    done = Exchange(100.0)
    done.started_wall = STARTED_WALL
    done.subject = subject
    done.method = "GET"
    done.route = f"/items/{number}"
    done.status = 200
    done.request_bytes = number
    done.response_bytes = 10 * number
    return done


def quota_table() -> QuotaTable:
    return QuotaTable("http.request", wall=lambda: STARTED_WALL, mono_ns=lambda: 0)


def recorder_for(
    sink: EventSink,
    wake: Callable[[], None] | None,
    *,
    clock: Callable[[], float] | None = None,
    quotas: QuotaTable | None = None,
    limit: int = 100,
    kind: type[EventRecorder] = EventRecorder,
    metrics: Metrics | None = None,
) -> EventRecorder:
    return kind(
        EventFactory(source="kmeter-sidecar/ns/pod", event_type="http.request"),
        sink,
        quotas or quota_table(),
        metrics or Metrics(),
        clock or Clock(),
        limit=limit,
        wake=wake,
    )


def recorder(
    sink: ListSink, clock: Clock, *, quotas: QuotaTable | None = None, limit: int = 100
) -> tuple[EventRecorder, list[int]]:
    """A recorder for a sink that builds before its batches; the list counts the wake-ups."""
    wakes: list[int] = []
    wake = lambda: wakes.append(len(sink.records))  # noqa: E731
    return recorder_for(sink, wake, clock=clock, quotas=quotas, limit=limit), wakes


def building_for(sender: Emitter, kind: type[EventRecorder] = EventRecorder) -> EventRecorder:
    """A recorder whose events the emitter builds before each batch, as the sidecar wires it."""
    events = recorder_for(sender, sender.wake, kind=kind)
    sender.waiting = events
    return events


def routes(values: list[bytes]) -> list[str]:
    """The routes of a batch of encoded events, in order."""
    return [data_of((b"", value))[1]["route"] for value in values]


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Until ``condition()`` holds, letting the loop run; a loaded machine only makes it slower."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def data_of(record: tuple[bytes, bytes]) -> tuple[bytes, dict[str, Any], datetime]:
    event = decode_event(record[1], ingest_time=datetime.now(UTC))
    assert event.data is not None
    return record[0], dict(event.data), event.time


def test_an_exchange_is_built_with_the_next_batch_with_the_moments_noted_when_it_finished() -> None:
    sink, clock = ListSink(), Clock()
    events, wakes = recorder(sink, clock)
    clock.now = 100.0125  # the exchange ends 12.5 ms after it started
    events.finished(exchange("acme", 1), {"tokens": 42}, False)
    clock.now = 101.0
    events.finished(exchange("initech", 2), None, True)
    assert sink.records == []  # nothing built until the sink asks
    assert wakes == [0]  # woken once, by the first exchange waiting
    assert len(events) == 2

    clock.now = 105.0  # built later: the durations are still the ones noted
    events.build()

    assert len(events) == 0
    first, second = (data_of(record) for record in sink.records)
    assert first == (
        b"acme",
        {
            "method": "GET",
            "route": "/items/1",
            "status": 200,
            "duration_ms": 12.5,
            "request_bytes": 1,
            "response_bytes": 10,
            "tokens": 42,
        },
        datetime.fromtimestamp(STARTED_WALL, UTC),
    )
    assert second[0] == b"initech"
    assert second[1]["duration_ms"] == 1000.0
    assert second[1]["aborted"] is True
    assert "tokens" not in second[1]


def test_a_partial_build_takes_the_exchanges_that_finished_first() -> None:
    sink, clock = ListSink(), Clock()
    events, _ = recorder(sink, clock)
    for number in range(7):
        events.finished(exchange("acme", number), None, False)
    events.build(3)
    assert [data_of(record)[1]["route"] for record in sink.records] == [
        "/items/0",
        "/items/1",
        "/items/2",
    ]
    events.build(3)
    events.build(3)
    assert [data_of(record)[1]["route"] for record in sink.records] == [
        f"/items/{number}" for number in range(7)
    ]
    assert len(events) == 0


def test_the_exchange_that_reaches_the_limit_builds_the_oldest_few_so_the_wait_stays_bounded() -> (
    None
):
    sink, clock = ListSink(), Clock()
    limit = OVERFLOW_STEP + 10
    events, _ = recorder(sink, clock, limit=limit)
    for number in range(limit - 1):
        events.finished(exchange("acme", number), None, False)
    assert sink.records == []
    events.finished(exchange("acme", limit - 1), None, False)
    assert len(sink.records) == OVERFLOW_STEP  # a short pause, not a whole batch's
    for number in range(limit, 3 * limit):  # the sender is stuck (a slow Kafka, say)
        events.finished(exchange("acme", number), None, False)
        assert len(events) < limit
    built = [data_of(record)[1]["route"] for record in sink.records]
    assert built == [f"/items/{number}" for number in range(len(built))]  # oldest first
    assert len(built) + len(events) == 3 * limit


def test_the_recorder_keeps_nothing_of_the_exchange_only_what_its_event_says() -> None:
    sink, clock = ListSink(), Clock()
    events, _ = recorder(sink, clock)
    done = exchange("acme", 1)
    done.pending.append(b"x" * 100_000)  # a request body buffered before the app answered
    references = sys.getrefcount(done)
    events.finished(done, None, False)
    assert sys.getrefcount(done) == references
    done.status = 500  # a later change to the exchange is not in its event
    events.build()
    assert data_of(sink.records[0])[1]["status"] == 200


def test_an_event_that_cannot_be_built_is_logged_and_counted_and_the_others_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, clock, metrics = ListSink(), Clock(), Metrics()
    events = recorder_for(sink, lambda: None, clock=clock, metrics=metrics)
    events.finished(exchange("acme", 1), None, False)
    events.finished(exchange("acme", 2), {"odd": object()}, False)  # not JSON
    events.finished(exchange("acme", 3), None, False)
    events.build()
    assert [data_of(record)[1]["route"] for record in sink.records] == ["/items/1", "/items/3"]
    assert metrics.events_dropped._value.get() == 1
    assert "the usage event of GET /items/2 (subject 'acme') is lost" in caplog.text


def test_while_a_summing_quota_is_enforced_each_event_is_built_and_counted_at_once() -> None:
    table = quota_table()
    table.apply(*record_of(quota_policy(sums_value="$.tokens", limit=100)))
    assert table.summing
    sink, clock = ListSink(), Clock()
    events, _ = recorder(sink, clock, quotas=table)
    events.finished(exchange("acme", 1), {"tokens": 60}, False)
    assert len(sink.records) == 1
    admitted = table.check("acme")
    assert admitted is not None
    assert admitted.refusal is None  # 60 of 100
    events.finished(exchange("acme", 2), {"tokens": 60}, False)
    # the next request sees the values of the events built so far: 120 of 100
    verdict = table.check("acme")
    assert verdict is not None
    assert verdict.refusal is not None
    assert verdict.refusal.reason == "quota"


def test_without_a_wake_up_each_event_goes_to_the_sink_at_once() -> None:
    sink = ListSink()
    events = recorder_for(sink, None)
    events.finished(exchange("acme", 1), None, False)
    assert len(sink.records) == 1


async def test_the_emitter_builds_waiting_events_before_its_batch_a_few_at_a_time(
    tmp_path: Path,
) -> None:
    producer = RecordingProducer()
    sender = emitter(tmp_path, linger=1.0)
    seen_between: list[int] = []

    class Watched(EventRecorder):
        def build(self, most: int | None = None) -> None:
            if not seen_between:  # as a request would, when the building starts
                asyncio.get_running_loop().call_soon(lambda: seen_between.append(len(self)))
            super().build(most)

    events = building_for(sender, Watched)
    sender._producer = producer
    task = asyncio.create_task(sender._sender())
    try:
        for number in range(12):
            events.finished(exchange("acme", number), None, False)
        await asyncio.sleep(0.05)  # within the linger: nothing built yet
        assert len(events) == 12
        assert producer.sent == []
        await until(lambda: bool(producer.sent))
        await asyncio.sleep(0.05)  # time for a second batch, if there were one
    finally:
        task.cancel()
    assert len(producer.sent) == 1
    assert routes(producer.sent[0]) == [f"/items/{number}" for number in range(12)]
    # The loop turned between a few events: the ready callback ran with some still waiting.
    assert len(seen_between) == 1
    assert 0 < seen_between[0] < 12


async def test_closing_the_emitter_builds_and_keeps_the_waiting_events(tmp_path: Path) -> None:
    sender = emitter(tmp_path)  # never connected: what it holds at close goes to the spool
    events = building_for(sender)
    for number in range(3):
        events.finished(exchange("acme", number), None, False)
    await sender.close(0.2)
    assert len(events) == 0
    assert sender._spool.records_pending == 3


async def test_exchanges_finishing_while_a_batch_is_built_wait_for_the_next_batch(
    tmp_path: Path,
) -> None:
    producer = RecordingProducer()
    sender = emitter(tmp_path, linger=0.1)
    arrivals = iter(range(100, 400))

    class Busy(EventRecorder):
        def build(self, most: int | None = None) -> None:
            super().build(most)
            for _ in range(6):  # under full load, more finish between two steps than one builds
                number = next(arrivals, None)
                if number is not None:
                    self.finished(exchange("acme", number), None, False)

    events = building_for(sender, Busy)
    sender._producer = producer
    task = asyncio.create_task(sender._sender())
    try:
        for number in range(12):
            events.finished(exchange("acme", number), None, False)
        await until(lambda: len(producer.sent) >= 2)  # fails if building never ends
    finally:
        task.cancel()
    assert routes(producer.sent[0]) == [f"/items/{number}" for number in range(12)]
    # and those that finished meanwhile went with the next batch
    assert routes(producer.sent[1])[0] == "/items/100"
