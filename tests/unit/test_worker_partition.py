"""A partition's state and the planning of one batch (pure), against a plain oracle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_worker_records import Record

from kmeter.core.dedup import Deduplicator
from kmeter.core.fold import FoldState, MeterSpec, decode_total
from kmeter.worker.partition import PartitionState, batch_now, plan_batch

METER = MeterSpec.create(event_type="t", aggregation="SUM", value_property="$.n")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=1)


def encoded(event_id: str, n: int, minute: int, subject: str = "c") -> bytes:
    time = (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "s",
            "type": "t",
            "subject": subject,
            "time": time,
            "data": {"n": n},
        }
    ).encode()


def records(values: list[bytes], first_offset: int = 0) -> list[Record]:
    stamp = int((T0 + timedelta(hours=1)).timestamp() * 1000)
    return [
        Record("kmeter.ns.events", 0, first_offset + i, stamp, b"c", value)
        for i, value in enumerate(values)
    ]


def fresh() -> PartitionState:
    return PartitionState(0, FoldState(METER, dedup=Deduplicator()))


def test_planning_a_batch_leaves_the_state_alone_until_it_is_committed() -> None:
    partition = fresh()
    work = plan_batch(
        "m",
        partition,
        records([encoded("a", 2, 0)]),
        retention=RETENTION,
        wall_now=T0 + timedelta(days=9),
    )
    assert partition.fold_state.windows == {}
    assert len(partition.fold_state.dedup) == 0
    assert work.next_offset == 1
    partition.commit(work, RETENTION)
    assert len(partition.fold_state.windows) == 1
    assert ("s", "a") in partition.fold_state.dedup


def test_the_batch_time_is_the_newest_record_timestamp_capped_at_the_wall_clock() -> None:
    batch = records([b"{}", b"{}"])
    log_time = T0 + timedelta(hours=1)
    assert batch_now(batch, T0 + timedelta(days=1)) == log_time
    assert batch_now(batch, T0) == T0


def test_a_state_restored_from_its_output_and_changelog_continues_like_the_original() -> None:
    original = fresh()
    outputs: list[bytes] = []
    changelog: list[bytes] = []
    for batch_number in range(3):
        values = [encoded(f"e{batch_number}-{i}", i, i % 2) for i in range(5)]
        work = plan_batch(
            "m",
            original,
            records(values, batch_number * 5),
            retention=RETENTION,
            wall_now=T0 + timedelta(days=9),
        )
        outputs.extend(record.value for record in work.result.records)
        changelog.extend(work.dedup_values)
        original.commit(work, RETENTION)
    restored, counts = PartitionState.restore(
        0, METER, outputs, changelog, horizon=timedelta(hours=24), max_entries=1000
    )
    assert counts.windows == 2
    assert counts.dedup_entries == 15
    assert restored.fold_state.windows == original.fold_state.windows
    replay = records([encoded("e1-3", 3, 1), encoded("new", 7, 1)], 15)
    a = plan_batch("m", original, replay, retention=RETENTION, wall_now=T0 + timedelta(days=9))
    b = plan_batch("m", restored, replay, retention=RETENTION, wall_now=T0 + timedelta(days=9))
    assert a.result.records == b.result.records
    assert a.result.counts.duplicates == b.result.counts.duplicates == 1


def test_unreadable_totals_in_the_output_topic_are_skipped_and_counted() -> None:
    _, counts = PartitionState.restore(
        0, METER, [b"garbage"], [], horizon=timedelta(hours=1), max_entries=10
    )
    assert counts.invalid_totals == 1
    assert counts.windows == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(-5, 100), st.integers(0, 4), st.booleans()),
        max_size=60,
    ),
    st.integers(1, 10),
)
def test_batches_of_any_size_with_duplicates_sum_like_a_plain_oracle(
    events: list[tuple[int, int, int, bool]], batch_size: int
) -> None:
    values = [encoded(f"id{i}", n, minute) for i, n, minute, _ in events]
    values += [encoded(f"id{i}", n, minute) for i, n, minute, again in events if again]
    oracle: dict[int, Decimal] = {}
    seen: set[int] = set()
    for i, n, minute, _ in events:
        if i not in seen:
            seen.add(i)
            oracle[minute] = oracle.get(minute, Decimal(0)) + n
    partition = fresh()
    latest: dict[bytes, bytes] = {}
    for start in range(0, len(values), batch_size):
        work = plan_batch(
            "m",
            partition,
            records(values[start : start + batch_size], start),
            retention=RETENTION,
            wall_now=T0 + timedelta(days=9),
        )
        latest.update((record.key, record.value) for record in work.result.records)
        partition.commit(work, RETENTION)
    totals = {
        int((decode_total(value).window_start - T0).total_seconds() // 60): decode_total(
            value
        ).value
        for value in latest.values()
    }
    assert totals == oracle
