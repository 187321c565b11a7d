"""The query-side roll-up, against a plain computation over the raw events."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmeter.core.aggregation import Aggregation
from kmeter.core.events import UsageEvent
from kmeter.core.fold import FoldState, MeterSpec, fold
from kmeter.core.rollup import Query, QueryError, Row, roll_up
from kmeter.core.windows import WindowSize, local_window

ZONES = [
    "UTC",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
]
# Around clock changes and month ends.
BASES = [
    datetime(2024, 3, 10, 7, tzinfo=UTC),  # New York springs forward
    datetime(2024, 11, 3, 6, tzinfo=UTC),  # New York falls back
    datetime(2024, 3, 31, 1, tzinfo=UTC),  # London springs forward
    datetime(2024, 4, 6, 15, tzinfo=UTC),  # Lord Howe moves back 30 minutes
    datetime(2024, 1, 31, 20, tzinfo=UTC),  # a month end
]
MODELS = ["gpt", "mini", None]
SUBJECTS = ["c1", "c2", "c3"]
STEP = {WindowSize.MINUTE: 60, WindowSize.HOUR: 3600, WindowSize.DAY: 86400}
QUANTUM = Decimal(1).scaleb(-18)


def meter(aggregation: Aggregation, storage: WindowSize) -> MeterSpec:
    return MeterSpec.create(
        event_type="llm",
        aggregation=aggregation,
        window_size=storage,
        value_property=None if aggregation is Aggregation.COUNT else "$.v",
        group_by={"model": "$.model", "region": "$.region"},
    )


@st.composite
def streams(draw: st.DrawFn) -> list[UsageEvent]:
    base = draw(st.sampled_from(BASES))
    count = draw(st.integers(0, 40))
    events = []
    for index in range(count):
        offset = draw(st.integers(-3 * 86400, 3 * 86400))
        data: dict[str, Any] = {"v": draw(st.sampled_from(["1", "2.5", "0.1", "-3", "7", "10"]))}
        model = draw(st.sampled_from(MODELS))
        if model is not None:
            data["model"] = model
        data["region"] = draw(st.sampled_from(["eu", "us"]))
        events.append(
            UsageEvent(
                str(index),
                draw(st.sampled_from(["a", "b"])),
                "llm",
                draw(st.sampled_from(SUBJECTS)),
                base + timedelta(seconds=offset, microseconds=draw(st.integers(0, 999_999))),
                data,
            )
        )
    return events


def folded(spec: MeterSpec, events: list[UsageEvent], cuts: list[int]) -> FoldState:
    state = FoldState(spec)
    previous = 0
    for cut in [*sorted(cut % (len(events) + 1) for cut in cuts), len(events)]:
        result = fold(state, events[previous:cut], now=datetime(2025, 1, 1, tzinfo=UTC))
        assert result.counts.rejected == 0
        state.apply(result)
        previous = max(previous, cut)
    return state


def expected_value(aggregation: Aggregation, events: list[UsageEvent]) -> Decimal:  # noqa: PLR0911
    values = [Decimal(event.data["v"]) for event in events if event.data]
    if aggregation is Aggregation.SUM:
        return sum(values, Decimal(0))
    if aggregation is Aggregation.COUNT:
        return Decimal(len(events))
    if aggregation is Aggregation.MIN:
        return min(values)
    if aggregation is Aggregation.MAX:
        return max(values)
    if aggregation is Aggregation.UNIQUE_COUNT:
        return Decimal(len({event.data["v"] for event in events if event.data}))
    if aggregation is Aggregation.AVG:
        mean = (sum(values, Decimal(0)) / len(values)).quantize(QUANTUM, ROUND_HALF_EVEN)
        return mean.normalize() if mean else Decimal(0)
    latest = max(events, key=lambda event: (event.time, event.source, event.id))
    return Decimal(latest.data["v"]) if latest.data else Decimal(0)


def oracle(
    events: list[UsageEvent], aggregation: Aggregation, storage: WindowSize, query: Query
) -> list[tuple[Any, ...]]:
    """Each event straight into its query window, then aggregated: no stored windows."""
    step = STEP[storage]
    chosen = []
    for event in events:
        assert event.data is not None
        if query.subjects is not None and event.subject not in query.subjects:
            continue
        if query.start is not None and event.time < query.start:
            continue
        if query.end is not None and event.time >= query.end:
            continue
        if any(event.data.get(k) != v for k, v in query.filter_group_by.items()):
            continue
        chosen.append(event)
    if not chosen:
        return []

    def stored(instant: datetime) -> int:
        return int(instant.timestamp()) // step * step

    buckets: dict[tuple[Any, ...], list[UsageEvent]] = defaultdict(list)
    for event in chosen:
        if query.window_size is None:
            begin = query.start or datetime.fromtimestamp(min(stored(e.time) for e in chosen), UTC)
            end = query.end or datetime.fromtimestamp(
                max(stored(e.time) for e in chosen) + step, UTC
            )
        else:
            window = local_window(event.time, query.window_size, query.zone)
            begin = max(window.start, query.start) if query.start else window.start
            end = min(window.end, query.end) if query.end else window.end
        subject = event.subject if query.by_subject else None
        data = event.data or {}
        labels = tuple(data.get(name) for name in query.group_names)
        buckets[(begin, end, subject, labels)].append(event)
    rows = [
        (begin, end, subject, dict(zip(query.group_names, labels, strict=True)), value)
        for (begin, end, subject, labels), bucket in buckets.items()
        for value in [expected_value(aggregation, bucket)]
    ]
    return sorted(rows, key=lambda row: (row[0], row[2] or "", str(sorted(row[3].items()))))


def as_tuples(rows: list[Row]) -> list[tuple[Any, ...]]:
    return sorted(
        [(r.window_start, r.window_end, r.subject, dict(r.group_by), r.value) for r in rows],
        key=lambda row: (row[0], row[2] or "", str(sorted(row[3].items()))),
    )


@st.composite
def queries(draw: st.DrawFn, events: list[UsageEvent], storage: WindowSize) -> Query:
    step = STEP[storage]
    times = [int(event.time.timestamp()) for event in events] or [int(BASES[0].timestamp())]
    low, high = min(times) - 2 * 86400, max(times) + 2 * 86400

    def bound() -> datetime | None:
        if draw(st.booleans()):
            return None
        return datetime.fromtimestamp(draw(st.integers(low, high)) // step * step, UTC)

    start, end = bound(), bound()
    if start is not None and end is not None and end <= start:
        start, end = end, start + timedelta(seconds=step) if end == start else start
    sizes = [size for size in WindowSize if STEP.get(size, 10**9) >= step]
    size = draw(st.sampled_from([None, *sizes]))
    zone = "UTC"
    if storage is WindowSize.MINUTE:
        zone = draw(st.sampled_from(ZONES))
    elif storage is WindowSize.HOUR:
        zone = draw(st.sampled_from(["UTC", "America/New_York", "Europe/London"]))
    subjects = draw(st.none() | st.frozensets(st.sampled_from(SUBJECTS), min_size=1))
    group_by = tuple(draw(st.lists(st.sampled_from(["model", "region", "subject"]), max_size=3)))
    filters = draw(
        st.dictionaries(st.sampled_from(["model", "region"]), st.sampled_from(["gpt", "eu"]))
    )
    return Query(start, end, size, ZoneInfo(zone), subjects, group_by, filters)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(list(Aggregation)),
    st.sampled_from([WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY]),
    streams(),
    st.lists(st.integers(0, 100), max_size=3),
    st.data(),
)
def test_roll_up_equals_the_oracle(
    aggregation: Aggregation,
    storage: WindowSize,
    events: list[UsageEvent],
    cuts: list[int],
    data: st.DataObject,
) -> None:
    spec = meter(aggregation, storage)
    state = folded(spec, events, cuts)
    query = data.draw(queries(events, storage))
    rows = roll_up(
        state.windows.items(),
        aggregation=aggregation,
        storage_size=storage,
        meter_groups=spec.group_names,
        query=query,
    )
    assert as_tuples(rows) == oracle(events, aggregation, storage, query)
    assert rows == sorted(rows, key=lambda row: row.window_start)


def run(windows: Any, query: Query, storage: WindowSize = WindowSize.MINUTE) -> list[Row]:
    return roll_up(
        windows,
        aggregation=Aggregation.SUM,
        storage_size=storage,
        meter_groups=("model",),
        query=query,
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_new_york_fall_back_has_two_one_oclock_hours() -> None:
    # 05:30 UTC is 01:30 EDT, 06:30 UTC is 01:30 EST.
    windows = [
        (("c1", ("gpt",), int(at("2024-11-03T05:30:00+00:00").timestamp())), Decimal(1)),
        (("c1", ("gpt",), int(at("2024-11-03T06:30:00+00:00").timestamp())), Decimal(2)),
    ]
    rows = run(windows, Query(window_size=WindowSize.HOUR, zone=ZoneInfo("America/New_York")))
    assert [(row.window_start, row.window_end, row.value) for row in rows] == [
        (at("2024-11-03T05:00:00+00:00"), at("2024-11-03T06:00:00+00:00"), Decimal(1)),
        (at("2024-11-03T06:00:00+00:00"), at("2024-11-03T07:00:00+00:00"), Decimal(2)),
    ]
    (day,) = run(windows, Query(window_size=WindowSize.DAY, zone=ZoneInfo("America/New_York")))
    assert day.window_end - day.window_start == timedelta(hours=25)
    assert day.value == 3


def test_equal_keys_are_merged_not_overwritten() -> None:
    start = int(at("2024-05-01T00:00:00+00:00").timestamp())
    windows = [(("c1", ("gpt",), start), Decimal("0.1"))] * 3
    (row,) = run(windows, Query())
    assert row.value == Decimal("0.3")
    assert row.subject is None
    assert row.group_by == {}


def test_subject_filter_groups_by_subject_and_group_by_keeps_labels() -> None:
    start = int(at("2024-05-01T00:00:00+00:00").timestamp())
    windows = [
        (("c1", ("gpt",), start), Decimal(1)),
        (("c1", (None,), start), Decimal(2)),
        (("c2", ("gpt",), start), Decimal(4)),
    ]
    rows = run(windows, Query(subjects=frozenset({"c1"}), group_by=("model",)))
    assert [(row.subject, row.group_by, row.value) for row in rows] == [
        ("c1", {"model": None}, Decimal(2)),
        ("c1", {"model": "gpt"}, Decimal(1)),
    ]
    (total,) = run(windows, Query(filter_group_by={"model": "gpt"}))
    assert total.value == 5


def test_a_month_queried_from_its_middle_is_cut_at_from() -> None:
    windows = [(("c1", ("gpt",), int(at("2024-05-20T00:00:00+00:00").timestamp())), Decimal(1))]
    (row,) = run(
        windows, Query(start=at("2024-05-15T00:00:00+00:00"), window_size=WindowSize.MONTH)
    )
    assert row.window_start == at("2024-05-15T00:00:00+00:00")
    assert row.window_end == at("2024-06-01T00:00:00+00:00")


@pytest.mark.parametrize(
    ("query", "storage", "parameter", "words"),
    [
        (
            Query(
                start=at("2024-05-01T00:00:00+00:00"),
                end=at("2024-05-03T00:00:00+00:00"),
                window_size=WindowSize.DAY,
                zone=ZoneInfo("Asia/Kolkata"),
            ),
            WindowSize.DAY,
            "windowTimeZone",
            "Asia/Kolkata",
        ),
        (Query(window_size=WindowSize.HOUR), WindowSize.DAY, "windowSize", "cannot answer"),
        (Query(start=at("2024-05-01T00:00:30+00:00")), WindowSize.MINUTE, "from", "cannot be"),
        (Query(group_by=("region",)), WindowSize.MINUTE, "groupBy", "region"),
        (Query(filter_group_by={"x": "1"}), WindowSize.MINUTE, "filterGroupBy", "'x'"),
        (
            Query(start=at("2024-05-02T00:00:00+00:00"), end=at("2024-05-01T00:00:00+00:00")),
            WindowSize.MINUTE,
            "to",
            "after",
        ),
    ],
)
def test_unanswerable_queries_are_refused_with_a_reason(
    query: Query, storage: WindowSize, parameter: str, words: str
) -> None:
    with pytest.raises(QueryError) as refused:
        run([], query, storage)
    assert refused.value.parameter == parameter
    assert words in str(refused.value)


def test_an_unbounded_inexact_query_is_refused_when_data_straddles() -> None:
    windows = [(("c1", ("gpt",), int(at("2024-05-01T00:00:00+00:00").timestamp())), Decimal(1))]
    with pytest.raises(QueryError, match="Kolkata"):
        run(
            windows,
            Query(window_size=WindowSize.DAY, zone=ZoneInfo("Asia/Kolkata")),
            WindowSize.DAY,
        )
