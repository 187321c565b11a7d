"""The worker's fold, against a naive dict-of-lists computation."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.core.aggregation import Aggregation
from kmeter.core.dedup import Deduplicator
from kmeter.core.events import UsageEvent, decode_event, encode_event
from kmeter.core.fold import (
    FoldCounts,
    FoldState,
    MeterSpec,
    WindowTotal,
    decode_total,
    fold,
    record_key,
)
from kmeter.core.windows import WindowSize

NOW = datetime(2024, 5, 10, 12, tzinfo=UTC)


def event(
    event_id: str = "1",
    *,
    data: dict[str, Any] | None = None,
    source: str = "gw",
    subject: str = "c1",
    event_type: str = "llm",
    at: datetime = NOW - timedelta(minutes=5),
) -> UsageEvent:
    return UsageEvent(event_id, source, event_type, subject, at, data)


def tokens(number: Any, model: Any = "gpt") -> dict[str, Any]:
    return {"usage": {"tokens": number}, "model": model}


def sum_meter(**kwargs: Any) -> MeterSpec:
    options: dict[str, Any] = {
        "event_type": "llm",
        "aggregation": "SUM",
        "value_property": "$.usage.tokens",
        "group_by": {"model": "$.model"},
    }
    options.update(kwargs)
    return MeterSpec.create(**options)


def results(state: FoldState) -> dict[tuple[str, tuple[str | None, ...], datetime], Any]:
    return {
        (total.subject, tuple(total.group.values()), total.window_start): total.value
        for total in state.totals()
    }


# --- the cases a user checks ------------------------------------------------------------------


def test_events_are_summed_per_subject_group_and_minute() -> None:
    state = FoldState(sum_meter())
    minute = NOW.replace(second=0) - timedelta(minutes=5)
    batch = [
        event("1", data=tokens(10), at=minute + timedelta(seconds=1)),
        event("2", data=tokens("2.5"), at=minute + timedelta(seconds=59)),
        event("3", data=tokens(1, "mini"), at=minute),
        event("4", data=tokens(7), at=minute + timedelta(minutes=1)),
        event("5", data=tokens(100), subject="c2", at=minute),
    ]
    result = fold(state, batch, now=NOW)
    state.apply(result)
    assert result.counts == FoldCounts(counted=5)
    assert results(state) == {
        ("c1", ("gpt",), minute): Decimal("12.5"),
        ("c1", ("mini",), minute): Decimal(1),
        ("c1", ("gpt",), minute + timedelta(minutes=1)): Decimal(7),
        ("c2", ("gpt",), minute): Decimal(100),
    }


def test_the_last_microsecond_of_a_minute_is_folded_into_that_minute() -> None:
    last = datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    state = FoldState(sum_meter())
    state.apply(fold(state, [event(data=tokens(1), at=last)], now=NOW))
    assert [total.window_start for total in state.totals()] == [
        last.replace(second=0, microsecond=0)
    ]


def test_events_of_another_type_are_skipped_not_rejected() -> None:
    result = fold(FoldState(sum_meter()), [event(event_type="other", data={})], now=NOW)
    assert result.counts == FoldCounts(other_type=1)
    assert result.rejects == ()
    assert result.records == ()


def test_a_duplicate_in_the_same_batch_is_counted_once() -> None:
    result = fold(FoldState(sum_meter()), [event("1", data=tokens(5))] * 3, now=NOW)
    assert result.counts == FoldCounts(counted=1, duplicates=2)
    (total,) = [decode_total(record.value) for record in result.records]
    assert total.value == 5


def test_a_duplicate_in_a_later_batch_is_counted_once() -> None:
    state = FoldState(sum_meter())
    state.apply(fold(state, [event("1", data=tokens(5))], now=NOW))
    later = fold(
        state,
        [event("1", data=tokens(5)), event("2", data=tokens(1))],
        now=NOW + timedelta(hours=2),
    )
    state.apply(later)
    assert later.counts == FoldCounts(counted=1, duplicates=1)
    assert list(results(state).values()) == [Decimal(6)]


def test_a_boolean_value_is_rejected_with_the_path_and_the_reason() -> None:
    result = fold(FoldState(sum_meter()), [event("1", data=tokens(True))], now=NOW)
    (reject,) = result.rejects
    assert reject.position == 0
    assert reject.reason == "$.usage.tokens: expected a number or numeric string, got true"
    assert result.counts == FoldCounts(rejected=1)


def test_a_group_by_value_that_is_an_object_is_rejected() -> None:
    (reject,) = fold(FoldState(sum_meter()), [event(data=tokens(1, {"a": 1}))], now=NOW).rejects
    assert reject.reason == '$.model: expected a string, number or boolean, got {"a":1}'


def test_a_missing_group_by_value_is_the_null_group() -> None:
    state = FoldState(sum_meter())
    state.apply(fold(state, [event("1", data={"usage": {"tokens": 3}})], now=NOW))
    (((subject, labels, _), value),) = results(state).items()
    assert (subject, labels, value) == ("c1", (None,), 3)
    (total,) = state.totals()
    assert total.group == {"model": None}


def test_an_event_older_than_retention_goes_to_the_dead_letters() -> None:
    old = event("1", data=tokens(1), at=NOW - timedelta(days=3))
    result = fold(FoldState(sum_meter()), [old], now=NOW, retention=timedelta(days=2))
    (reject,) = result.rejects
    assert reject.reason.startswith("time: 2024-05-07T12:00:00Z is older than the retention")


def test_an_event_exactly_at_the_retention_horizon_is_still_counted() -> None:
    horizon = NOW - timedelta(days=2)
    batch = [
        event("1", data=tokens(1), at=horizon),
        event("2", data=tokens(1), at=horizon - timedelta(microseconds=1)),
    ]
    result = fold(FoldState(sum_meter()), batch, now=NOW, retention=timedelta(days=2))
    assert [reject.position for reject in result.rejects] == [1]
    assert result.counts.counted == 1


def test_a_rejected_event_resent_corrected_with_the_same_id_is_counted() -> None:
    state = FoldState(sum_meter())
    state.apply(fold(state, [event("1", data=tokens("oops"))], now=NOW))
    state.apply(fold(state, [event("1", data=tokens(4))], now=NOW))
    assert list(results(state).values()) == [Decimal(4)]


def test_fold_does_not_modify_the_state_until_applied() -> None:
    state = FoldState(sum_meter(aggregation="UNIQUE_COUNT", value_property="$.user"))
    state.apply(fold(state, [event("1", data={"user": "u1", "model": "m"})], now=NOW))
    before = [(total.subject, total.group, total.state.copy()) for total in state.totals()]
    dedup_before = list(state.dedup.entries())
    fold(state, [event("2", data={"user": "u2", "model": "m"})], now=NOW + timedelta(hours=1))
    assert [(t.subject, t.group, t.state) for t in state.totals()] == before
    assert list(state.dedup.entries()) == dedup_before


def test_an_aborted_batch_folded_again_counts_once() -> None:
    batch = [event(str(n), data=tokens(n)) for n in range(10)]
    state = FoldState(sum_meter())
    fold(state, batch, now=NOW)  # the transaction aborted: the result is never applied
    state.apply(fold(state, batch, now=NOW))
    assert list(results(state).values()) == [Decimal(45)]


def test_output_keys_are_deterministic_and_readable() -> None:
    result = fold(FoldState(sum_meter()), [event(data=tokens(1))], now=NOW)
    (record,) = result.records
    start = (NOW - timedelta(minutes=5)).replace(second=0)
    assert record.key == record_key("c1", {"model": "gpt"}, start)
    assert orjson.loads(record.key) == {
        "group": {"model": "gpt"},
        "subject": "c1",
        "windowStart": "2024-05-10T11:55:00Z",
    }
    assert orjson.loads(record.value) == {
        "aggregation": "SUM",
        "group": {"model": "gpt"},
        "state": {"sum": "1"},
        "subject": "c1",
        "value": "1",
        "windowEnd": "2024-05-10T11:56:00Z",
        "windowSize": "MINUTE",
        "windowStart": "2024-05-10T11:55:00Z",
    }


def test_record_key_does_not_depend_on_group_order() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert record_key("c", {"a": "1", "b": None}, start) == record_key(
        "c", {"b": None, "a": "1"}, start
    )


def test_decode_total_refuses_what_is_not_a_window_total() -> None:
    for bad in (b"[]", b"{}", b"nope", b'{"subject": 1}'):
        with pytest.raises(ValueError, match="not a window total"):
            decode_total(bad)


def test_a_restarted_worker_loads_its_state_from_the_output_topic_and_continues() -> None:
    meter = sum_meter(aggregation="AVG")
    first = [event(str(n), data=tokens(n)) for n in range(5)]
    second = [event(str(n), data=tokens(n)) for n in range(3, 9)]  # 3 and 4 are retries
    uninterrupted = FoldState(meter)
    topic: dict[bytes, bytes] = {}
    result = fold(uninterrupted, first, now=NOW)
    uninterrupted.apply(result)
    topic.update(result.records)
    # A new worker: windows from the compacted topic, dedup rebuilt from the remembered pairs.
    restarted = FoldState(meter, dedup=Deduplicator.restore(uninterrupted.dedup.entries(), NOW))
    assert restarted.load(decode_total(value) for value in topic.values()) == 1
    for state in (uninterrupted, restarted):
        state.apply(fold(state, second, now=NOW + timedelta(minutes=1)))
    assert (
        results(restarted)
        == results(uninterrupted)
        == {("c1", ("gpt",), (NOW - timedelta(minutes=5)).replace(second=0)): Decimal(4)}
    )


def test_loading_totals_of_another_meter_is_refused() -> None:
    total = WindowTotal("c1", {"model": "x"}, NOW, WindowSize.MINUTE, Aggregation.MAX, Decimal(1))
    with pytest.raises(ValueError, match="does not belong to this SUM meter"):
        FoldState(sum_meter()).load([total])


def test_prune_drops_windows_that_ended_before_the_horizon() -> None:
    state = FoldState(sum_meter(window_size="HOUR"))
    batch = [event("1", data=tokens(1), at=NOW - timedelta(hours=30)), event("2", data=tokens(1))]
    state.apply(fold(state, batch, now=NOW))
    assert state.prune(NOW - timedelta(days=1)) == 1
    assert [total.window_start for total in state.totals()] == [NOW - timedelta(hours=1)]


def test_a_count_meter_needs_no_value_and_refuses_one() -> None:
    meter = MeterSpec.create(event_type="llm", aggregation="COUNT")
    state = FoldState(meter)
    state.apply(fold(state, [event("1"), event("2", data={"x": True})], now=NOW))
    assert list(results(state).values()) == [Decimal(2)]
    with pytest.raises(ValueError, match="COUNT counts events; remove valueProperty"):
        MeterSpec.create(event_type="llm", aggregation="COUNT", value_property="$.x")


def test_a_meter_spec_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="SUM needs a valueProperty"):
        MeterSpec.create(event_type="llm", aggregation="SUM")
    with pytest.raises(ValueError, match="windowSize MONTH cannot be stored"):
        sum_meter(window_size="MONTH")
    with pytest.raises(ValueError, match="not a supported JSONPath"):
        sum_meter(value_property="$..tokens")
    with pytest.raises(ValueError, match="eventType"):
        sum_meter(event_type="")


def test_a_hundred_thousand_events_of_0_1_fold_to_exactly_10000_quickly() -> None:
    raw = encode_event(event(data={"usage": {"tokens": 0.1}, "model": "gpt"}))
    template = decode_event(raw, ingest_time=NOW)
    batch = [template._replace(id=str(n)) for n in range(100_000)]
    state = FoldState(sum_meter())
    started = time.perf_counter()
    for offset in range(0, len(batch), 10_000):
        state.apply(fold(state, batch[offset : offset + 10_000], now=NOW))
    elapsed = time.perf_counter() - started
    assert list(results(state).values()) == [Decimal(10000)]
    assert elapsed < 5  # ~0.3 s on a 2-core machine; generous for a loaded CI runner


def test_fold_works_on_events_decoded_from_bytes_end_to_end() -> None:
    raws = [
        b'{"specversion":"1.0","id":"%d","source":"gw","type":"llm","subject":"c1",'
        b'"time":"2024-05-10T11:55:30Z","data":{"usage":{"tokens":"0.10000000000000000001"},'
        b'"model":"gpt"}}' % n
        for n in range(3)
    ]
    events = [decode_event(raw, ingest_time=NOW) for raw in raws]
    result = fold(FoldState(sum_meter()), events, now=NOW)
    assert result.rejects[0].reason.startswith("$.usage.tokens: 0.10000000000000000001 is out of")


# --- property: against a naive dict-of-lists computation --------------------------------------

NUMERIC = re.compile(r"-?[0-9]+(\.[0-9]+)?")
decimals = st.decimals(min_value=-(10**9), max_value=10**9, places=4, allow_nan=False)
token_values = st.one_of(
    st.integers(-1000, 10**12),
    decimals.map(lambda d: float(str(d))),
    decimals.map(str),
    st.sampled_from([True, False, None, "abc", "", "1_000", " 5", "NaN", [1], {"n": 1}]),
)
label_values = st.sampled_from(["gpt", "mini", "", 3, 2.5, True, None, {"x": 1}, [1]])


@st.composite
def data_objects(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 20)) == 0:
        return None
    data: dict[str, Any] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        data["usage"] = {"tokens": draw(token_values)} if draw(st.integers(0, 9)) else 7
    for name, value in (
        ("model", label_values),
        ("user", st.sampled_from(["u1", "u2", "u3", 4, None, True, {"u": 1}])),
    ):
        if draw(st.integers(0, 5)):
            data[name] = draw(value)
    if draw(st.booleans()):
        data["meta"] = {"region": draw(label_values)}
    return data


events = st.builds(
    UsageEvent,
    id=st.sampled_from(["1", "2", "3", "4", "5", "6"]),
    source=st.sampled_from(["a", "b"]),
    type=st.sampled_from(["llm", "llm", "llm", "other"]),
    subject=st.sampled_from(["c1", "c2"]),
    time=st.integers(0, 3 * 24 * 3600).map(lambda s: NOW - timedelta(seconds=s, microseconds=1)),
    data=data_objects(),
)


def naive_number(data: Any) -> Decimal | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    raw = usage.get("tokens") if isinstance(usage, dict) else None
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, float):
        return Decimal(repr(raw))
    if isinstance(raw, str) and NUMERIC.fullmatch(raw):
        return Decimal(raw)
    return None


def naive_label(raw: Any) -> tuple[bool, str | None]:
    if raw is None or isinstance(raw, str):
        return True, raw
    if isinstance(raw, bool):
        return True, "true" if raw else "false"
    if isinstance(raw, int):
        return True, str(raw)
    if isinstance(raw, float):
        return True, str(Decimal(repr(raw)).normalize())
    return False, None


def naive_labels(data: Any, names: list[str]) -> tuple[bool, tuple[str | None, ...]]:
    data = data if isinstance(data, dict) else {}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    raws = {"model": data.get("model"), "region": meta.get("region")}
    labels = []
    for name in names:
        ok, label = naive_label(raws[name])
        if not ok:
            return False, ()
        labels.append(label)
    return True, tuple(labels)


def naive_result(aggregation: Aggregation, items: list[tuple[Any, UsageEvent]]) -> Any:
    values = [value for value, _ in items]
    formulas: dict[Aggregation, Callable[[], Any]] = {
        Aggregation.SUM: lambda: sum(values, Decimal(0)),
        Aggregation.COUNT: lambda: Decimal(len(values)),
        Aggregation.UNIQUE_COUNT: lambda: Decimal(len(set(values))),
        Aggregation.AVG: lambda: (sum(values, Decimal(0)) / len(values)).quantize(Decimal("1e-18")),
        Aggregation.MIN: lambda: min(values),
        Aggregation.MAX: lambda: max(values),
        Aggregation.LATEST: lambda: max(
            items, key=lambda item: (item[1].time, item[1].source, item[1].id, item[0])
        )[0],
    }
    with localcontext() as wide:
        wide.prec = 100
        return formulas[aggregation]()


def naive_start(moment: datetime, size: WindowSize) -> datetime:
    if size is WindowSize.MINUTE:
        return moment.replace(second=0, microsecond=0)
    if size is WindowSize.HOUR:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def naive_fold(
    aggregation: Aggregation,
    size: WindowSize,
    names: list[str],
    batches: list[list[UsageEvent]],
    retention: timedelta | None,
) -> tuple[dict[Any, Any], list[tuple[int, int]]]:
    """Group every counted event's value in lists, then aggregate each list at the end."""
    seen: set[tuple[str, str]] = set()
    cells: dict[Any, list[tuple[Any, UsageEvent]]] = defaultdict(list)
    rejected: list[tuple[int, int]] = []
    for number, batch in enumerate(batches):
        for position, item in enumerate(batch):
            if item.type != "llm":
                continue
            if retention is not None and item.time < NOW - retention:
                rejected.append((number, position))
                continue
            if (item.source, item.id) in seen:
                continue
            value: Any = None
            if aggregation is Aggregation.UNIQUE_COUNT:
                raw = item.data.get("user") if isinstance(item.data, dict) else None
                ok, value = naive_label(raw)
                if not ok or value is None:
                    rejected.append((number, position))
                    continue
            elif aggregation is not Aggregation.COUNT:
                value = naive_number(item.data)
                if value is None:
                    rejected.append((number, position))
                    continue
            ok, labels = naive_labels(item.data, names)
            if not ok:
                rejected.append((number, position))
                continue
            seen.add((item.source, item.id))
            cells[(item.subject, labels, naive_start(item.time, size))].append((value, item))
    return {key: naive_result(aggregation, items) for key, items in cells.items()}, rejected


@settings(max_examples=250, deadline=None)
@given(
    aggregation=st.sampled_from(list(Aggregation)),
    size=st.sampled_from([WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY]),
    group_names=st.sampled_from([[], ["model"], ["model", "region"]]),
    batches=st.lists(st.lists(events, max_size=12), min_size=1, max_size=4),
    retention=st.sampled_from([None, timedelta(days=2)]),
)
def test_folding_batches_matches_the_naive_computation(
    aggregation: Aggregation,
    size: WindowSize,
    group_names: list[str],
    batches: list[list[UsageEvent]],
    retention: timedelta | None,
) -> None:
    paths = {"model": "$.model", "region": "$.meta.region"}
    value_property = {
        Aggregation.COUNT: None,
        Aggregation.UNIQUE_COUNT: "$.user",
    }.get(aggregation, "$.usage.tokens")
    meter = MeterSpec.create(
        event_type="llm",
        aggregation=aggregation,
        window_size=size,
        value_property=value_property,
        group_by={name: paths[name] for name in group_names},
    )
    state = FoldState(meter)
    topic: dict[bytes, bytes] = {}  # the compacted output topic: the latest value per key
    rejected = []
    for number, batch in enumerate(batches):
        result = fold(state, batch, now=NOW, retention=retention)
        state.apply(result)
        topic.update(result.records)
        rejected += [(number, reject.position) for reject in result.rejects]
        counts = result.counts
        assert counts.counted + counts.duplicates + counts.other_type + counts.rejected == len(
            batch
        )

    expected, expected_rejects = naive_fold(aggregation, size, group_names, batches, retention)
    assert results(state) == expected
    assert rejected == expected_rejects
    materialized = {
        (total.subject, tuple(total.group.values()), total.window_start): total.value
        for total in map(decode_total, topic.values())
    }
    assert materialized == expected
