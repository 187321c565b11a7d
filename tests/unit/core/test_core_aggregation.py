"""Aggregations as mergeable states, against a plain oracle over the list of all values."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.core.aggregation import (
    AGGREGATORS,
    Aggregation,
    Aggregator,
    Latest,
    ValueKind,
    aggregator_for,
)
from kmeter.core.decimals import to_decimal
from kmeter.core.events import UsageEvent

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def event(time: datetime = T0, source: str = "s", event_id: str = "e") -> UsageEvent:
    return UsageEvent(event_id, source, "t", "c", time)


# An input: (value, event). Values as numbers and, for UNIQUE_COUNT, as text.
numbers = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=6, allow_nan=False
)
inputs = st.tuples(
    numbers,
    st.builds(
        event,
        time=st.integers(0, 5).map(lambda n: T0 + timedelta(seconds=n)),
        source=st.sampled_from(["a", "b"]),
        event_id=st.sampled_from(["1", "2", "3"]),
    ),
)


def value_for(aggregator: Aggregator[Any, Any], number: Decimal) -> Any:
    if aggregator.value_kind is ValueKind.TEXT:
        return str(int(number) % 7)  # few distinct values, so duplicates happen
    if aggregator.value_kind is ValueKind.NONE:
        return None
    return number


def oracle(aggregation: Aggregation, items: list[tuple[Decimal, UsageEvent]]) -> Decimal | None:
    """The result computed the obvious way from all values at once."""
    values = [number for number, _ in items]
    if not values and aggregation not in (
        Aggregation.SUM,
        Aggregation.COUNT,
        Aggregation.UNIQUE_COUNT,
    ):
        return None
    formulas: dict[Aggregation, Callable[[], Decimal]] = {
        Aggregation.SUM: lambda: sum(values, Decimal(0)),
        Aggregation.COUNT: lambda: Decimal(len(values)),
        Aggregation.UNIQUE_COUNT: lambda: Decimal(len({str(int(n) % 7) for n in values})),
        Aggregation.AVG: lambda: (sum(values, Decimal(0)) / len(values)).quantize(Decimal("1e-18")),
        Aggregation.MIN: lambda: min(values),
        Aggregation.MAX: lambda: max(values),
        Aggregation.LATEST: lambda: max(
            items, key=lambda item: (item[1].time, item[1].source, item[1].id, item[0])
        )[0],
    }
    with localcontext() as wide:
        wide.prec = 200
        return formulas[aggregation]()


def fold_all(aggregator: Aggregator[Any, Any], items: list[tuple[Decimal, UsageEvent]]) -> Any:
    state = aggregator.empty()
    for number, item_event in items:
        state = aggregator.add(state, value_for(aggregator, number), item_event)
    return state


aggregations = st.sampled_from(list(Aggregation))


@given(aggregations, st.lists(inputs, max_size=30))
def test_folding_values_one_by_one_gives_the_oracle_s_result(
    aggregation: Aggregation, items: list[tuple[Decimal, UsageEvent]]
) -> None:
    aggregator = aggregator_for(aggregation)
    assert aggregator.result(fold_all(aggregator, items)) == oracle(aggregation, items)


@settings(max_examples=200)
@given(aggregations, st.lists(inputs, max_size=30), st.randoms(use_true_random=False))
def test_splitting_into_parts_and_merging_in_any_order_equals_the_whole(
    aggregation: Aggregation, items: list[tuple[Decimal, UsageEvent]], rng: random.Random
) -> None:
    aggregator = aggregator_for(aggregation)
    cuts = sorted(rng.sample(range(len(items) + 1), k=min(len(items) + 1, rng.randint(0, 5))))
    bounds = [0, *cuts, len(items)]
    parts = [fold_all(aggregator, items[a:b]) for a, b in itertools.pairwise(bounds)]
    # Merge in random grouping and order.
    while len(parts) > 1:
        first = parts.pop(rng.randrange(len(parts)))
        second = parts.pop(rng.randrange(len(parts)))
        parts.append(aggregator.merge(first, second))
    assert aggregator.result(parts[0]) == oracle(aggregation, items)
    assert aggregator.dump(parts[0]) == aggregator.dump(fold_all(aggregator, items))


states = st.lists(inputs, max_size=10)


@given(aggregations, states, states, states)
def test_merge_is_associative(aggregation: Aggregation, a: Any, b: Any, c: Any) -> None:
    agg = aggregator_for(aggregation)
    x, y, z = fold_all(agg, a), fold_all(agg, b), fold_all(agg, c)
    assert agg.dump(agg.merge(agg.merge(x, y), z)) == agg.dump(agg.merge(x, agg.merge(y, z)))


@given(aggregations, states, states)
def test_merge_is_commutative_and_empty_is_its_identity(
    aggregation: Aggregation, a: Any, b: Any
) -> None:
    agg = aggregator_for(aggregation)
    x, y = fold_all(agg, a), fold_all(agg, b)
    assert agg.dump(agg.merge(x, y)) == agg.dump(agg.merge(y, x))
    assert agg.dump(agg.merge(agg.empty(), x)) == agg.dump(x)
    assert agg.dump(agg.merge(x, agg.empty())) == agg.dump(x)


@given(aggregations, states, states)
def test_merge_modifies_neither_argument(aggregation: Aggregation, a: Any, b: Any) -> None:
    agg = aggregator_for(aggregation)
    x, y = fold_all(agg, a), fold_all(agg, b)
    before = (agg.dump(x), agg.dump(y))
    merged = agg.merge(x, y)
    agg.add(merged, value_for(agg, Decimal(1)), event())  # may update merged in place
    assert (agg.dump(x), agg.dump(y)) == before


@given(aggregations, states)
def test_states_survive_json_and_back(aggregation: Aggregation, items: Any) -> None:
    agg = aggregator_for(aggregation)
    state = fold_all(agg, items)
    dumped = agg.dump(state)
    wire = orjson.dumps(dumped)  # JSON-able without any custom encoder
    assert all(type(leaf) in (str, int, type(None)) for leaf in _leaves(dumped))  # no floats
    loaded = agg.load(orjson.loads(wire))
    assert agg.dump(loaded) == dumped
    assert agg.result(loaded) == agg.result(state)


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [leaf for value in obj.values() for leaf in _leaves(value)]
    if isinstance(obj, list):
        return [leaf for value in obj for leaf in _leaves(value)]
    return [obj]


def test_a_million_events_of_0_1_sum_to_exactly_100000() -> None:
    agg = aggregator_for(Aggregation.SUM)
    value = to_decimal(orjson.loads(b"0.1"))  # how a JSON 0.1 arrives
    add = agg.add
    state = agg.empty()
    any_event = event()
    for _ in range(1_000_000):
        state = add(state, value, any_event)
    assert state == Decimal(100000)
    assert str(agg.result(state)) == "100000.0"
    assert agg.dump(state) == {"sum": "100000"}


def test_avg_of_three_values_is_rounded_to_18_places() -> None:
    agg = aggregator_for(Aggregation.AVG)
    state = agg.empty()
    for number in ("1", "1", "2"):
        state = agg.add(state, Decimal(number), event())
    assert agg.result(state) == Decimal("1.333333333333333333")
    assert agg.dump(state) == {"sum": "4", "count": 3}


def test_latest_breaks_time_ties_by_source_then_id() -> None:
    agg = aggregator_for(Aggregation.LATEST)
    state = agg.empty()
    state = agg.add(state, Decimal(1), event(T0, "b", "1"))
    state = agg.add(state, Decimal(2), event(T0, "a", "9"))
    state = agg.add(state, Decimal(3), event(T0 - timedelta(seconds=1), "z", "z"))
    assert agg.result(state) == Decimal(1)
    state = agg.add(state, Decimal(4), event(T0, "b", "2"))
    assert agg.result(state) == Decimal(4)
    assert state == Latest(T0, "b", "2", Decimal(4))


def test_unique_count_counts_distinct_values_exactly() -> None:
    agg = aggregator_for(Aggregation.UNIQUE_COUNT)
    state = agg.empty()
    for user in ["u1", "u2", "u1", "u3", "u2"] * 1000:
        state = agg.add(state, user, event())
    assert agg.result(state) == 3
    assert agg.dump(state) == {"values": ["u1", "u2", "u3"]}


@pytest.mark.parametrize(
    ("aggregation", "empty_result"),
    [
        (Aggregation.SUM, Decimal(0)),
        (Aggregation.COUNT, Decimal(0)),
        (Aggregation.UNIQUE_COUNT, Decimal(0)),
        (Aggregation.AVG, None),
        (Aggregation.MIN, None),
        (Aggregation.MAX, None),
        (Aggregation.LATEST, None),
    ],
)
def test_the_result_of_no_events(aggregation: Aggregation, empty_result: Decimal | None) -> None:
    agg = aggregator_for(aggregation)
    assert agg.result(agg.empty()) == empty_result


def test_the_aggregation_enum_has_exactly_the_seven_names() -> None:
    assert [a.value for a in Aggregation] == [
        "SUM",
        "COUNT",
        "UNIQUE_COUNT",
        "AVG",
        "MIN",
        "MAX",
        "LATEST",
    ]
    assert set(AGGREGATORS) == set(Aggregation)
    assert aggregator_for("UNIQUE_COUNT").aggregation is Aggregation.UNIQUE_COUNT


def test_an_unknown_aggregation_name_is_refused() -> None:
    with pytest.raises(ValueError, match="'MEDIAN' is not an aggregation; use one of SUM, COUNT"):
        aggregator_for("MEDIAN")


@pytest.mark.parametrize(
    ("aggregation", "bad"),
    [
        (Aggregation.SUM, {"sum": 1.5}),
        (Aggregation.SUM, {"sum": "NaN"}),
        (Aggregation.SUM, {"sum": "1e999999"}),
        (Aggregation.SUM, {"total": "1"}),
        (Aggregation.COUNT, {"count": -1}),
        (Aggregation.COUNT, {"count": True}),
        (Aggregation.UNIQUE_COUNT, {"values": "abc"}),
        (Aggregation.AVG, {"sum": "3", "count": 0}),
        (Aggregation.MIN, {"min": 3}),
        (Aggregation.LATEST, {"latest": {"time": "now", "source": "s", "id": "i", "value": "1"}}),
        (Aggregation.LATEST, {"latest": {"source": "s", "id": "i", "value": "1"}}),
        (Aggregation.LATEST, []),
    ],
)
def test_load_refuses_what_dump_cannot_have_written(aggregation: Aggregation, bad: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the reasons vary; each names the problem
        aggregator_for(aggregation).load(bad)
