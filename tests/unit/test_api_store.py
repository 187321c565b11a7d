"""The materialized store: latest per key, partial totals of one window merged by queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.api.query import answer
from kmeter.api.store import MeterStore
from kmeter.core.aggregation import Aggregation
from kmeter.core.fold import WindowTotal
from kmeter.core.rollup import Query, QueryError, Row, check_query, roll_up
from kmeter.core.windows import WindowSize, time_zone

AT = datetime(2024, 5, 1, tzinfo=UTC)


def total(value: str, subject: str = "c1") -> WindowTotal:
    return WindowTotal(
        subject, {"model": "m"}, AT, WindowSize.MINUTE, Aggregation.SUM, Decimal(value)
    )


def query(store: MeterStore) -> list[Decimal | None]:
    rows = roll_up(
        store.windows(),
        aggregation=Aggregation.SUM,
        storage_size=WindowSize.MINUTE,
        meter_groups=store.group_names,
        query=Query(),
    )
    return [row.value for row in rows]


def test_latest_per_key_and_partials_of_two_partitions_merge() -> None:
    store = MeterStore(Aggregation.SUM, WindowSize.MINUTE, ("model",))
    store.put(b"0:k", total("1"))
    store.put(b"0:k", total("5"))  # a later total of the same key replaces it
    store.put(b"1:k", total("2"))  # the same window's partial total from another partition
    assert query(store) == [Decimal(7)]
    store.delete(b"1:k")
    assert query(store) == [Decimal(5)]
    assert store.subjects() == ["c1"]
    store.delete(b"0:k")
    assert store.subjects() == []
    assert len(store) == 0


def test_foreign_totals_are_not_served_and_regroup_rearranges() -> None:
    store = MeterStore(Aggregation.COUNT, WindowSize.MINUTE, ("model",))
    store.put(b"0:k", total("1"))
    assert store.foreign == 1
    assert len(store) == 0
    summed = MeterStore(Aggregation.SUM, WindowSize.MINUTE, ())
    summed.put(b"0:k", total("3"))
    summed.regroup(("model", "region"))
    assert list(summed.windows()) == [(("c1", ("m", None), int(AT.timestamp())), Decimal(3))]


# --- Coarser levels: the same rows from merged hours and days as from the stored minutes ---

ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe")
DAY0 = datetime(2024, 3, 9, tzinfo=UTC)  # spans New York's and Lord Howe's clock changes

minutes = st.integers(min_value=0, max_value=5 * 1440 - 1)
operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "delete"]),
        st.integers(min_value=0, max_value=2),  # partition
        st.sampled_from(["c1", "c2"]),
        st.sampled_from(["m1", "m2", None]),
        minutes,
        st.integers(min_value=1, max_value=9),
    ),
    max_size=60,
)


def minute_total(subject: str, model: str | None, minute: int, value: int) -> WindowTotal:
    return WindowTotal(
        subject,
        {"model": model},
        DAY0 + timedelta(minutes=minute),
        WindowSize.MINUTE,
        Aggregation.SUM,
        Decimal(value),
    )


@st.composite
def queries(draw: st.DrawFn) -> Query:
    unit = draw(st.sampled_from([60, 3600, 86400]))
    bounds = sorted(draw(st.lists(minutes, min_size=2, max_size=2)))
    start, end = (DAY0 + timedelta(seconds=minute * 60 // unit * unit) for minute in bounds)
    return Query(
        start=draw(st.sampled_from([start, None])),
        end=draw(st.sampled_from([end + timedelta(seconds=unit), None])),
        window_size=draw(st.sampled_from([None, *WindowSize])),
        zone=time_zone(draw(st.sampled_from(ZONES))),
        subjects=draw(st.sampled_from([None, frozenset({"c1"})])),
        group_by=draw(st.sampled_from([(), ("subject",), ("model",)])),
        filter_group_by=draw(st.sampled_from([{}, {"model": "m1"}])),
    )


def from_minutes(store: MeterStore, query: Query) -> list[Row] | str:
    try:
        return roll_up(
            store.windows(),
            aggregation=Aggregation.SUM,
            storage_size=WindowSize.MINUTE,
            meter_groups=store.group_names,
            query=query,
        )
    except QueryError as error:
        return str(error)


def from_levels(store: MeterStore, query: Query) -> list[Row] | str:
    try:
        check_query(query, storage_size=WindowSize.MINUTE, meter_groups=store.group_names)
        return answer(store, query)
    except QueryError as error:
        return str(error)


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(queries(), min_size=1, max_size=4))
def test_a_query_answered_from_merged_hours_and_days_equals_one_from_the_stored_minutes(
    steps: list[tuple[str, int, str, str | None, int, int]], asked: list[Query]
) -> None:
    store = MeterStore(Aggregation.SUM, WindowSize.MINUTE, ("model",))
    for index, (action, partition, subject, model, minute, value) in enumerate(steps):
        key = f"{partition}:{subject}:{model}:{minute}".encode()
        if action == "put":
            store.put(key, minute_total(subject, model, minute, value))
        else:
            store.delete(key)
        if index % 7 == 0:  # queries between changes fill the caches that changes must drop
            for query in asked:
                assert from_levels(store, query) == from_minutes(store, query)
    for query in asked:
        assert from_levels(store, query) == from_minutes(store, query)


def test_a_replaced_minute_total_is_not_served_from_a_stale_merged_day() -> None:
    store = MeterStore(Aggregation.SUM, WindowSize.MINUTE, ("model",))
    day = Query(start=DAY0, end=DAY0 + timedelta(days=1), window_size=WindowSize.DAY)
    store.put(b"0:a", minute_total("c1", "m1", 10, 5))
    store.put(b"0:b", minute_total("c1", "m1", 70, 1))
    assert [row.value for row in answer(store, day)] == [Decimal(6)]
    store.put(b"0:a", minute_total("c1", "m1", 10, 2))  # compaction: the later total wins
    assert [row.value for row in answer(store, day)] == [Decimal(3)]
    store.delete(b"0:b")
    assert [row.value for row in answer(store, day)] == [Decimal(2)]
    store.delete(b"0:a")
    assert answer(store, day) == []
