"""Quota evaluation: periods, usage per subject, limits, blocking and thresholds, against plain
computations over the raw events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmeter.core.aggregation import Aggregation
from kmeter.core.events import UsageEvent
from kmeter.core.fold import FoldState, MeterSpec, fold
from kmeter.core.quota import (
    Enforcement,
    PeriodUsage,
    QuotaRule,
    evaluate,
    period_at,
)
from kmeter.core.windows import Window, WindowSize

ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe"]
BASES = [
    datetime(2024, 3, 10, 7, tzinfo=UTC),  # New York springs forward
    datetime(2024, 11, 3, 6, tzinfo=UTC),  # New York falls back
    datetime(2024, 4, 6, 15, tzinfo=UTC),  # Lord Howe moves back 30 minutes
    datetime(2024, 1, 31, 20, tzinfo=UTC),  # a month end
]
LIMITABLE = [
    Aggregation.SUM,
    Aggregation.COUNT,
    Aggregation.UNIQUE_COUNT,
    Aggregation.MAX,
    Aggregation.LATEST,
]
PERIODS = [WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH]
SUBJECTS = ["c1", "c2", "c3"]


def local_key(instant: datetime, every: WindowSize, zone: ZoneInfo) -> tuple[int, ...]:
    wall = instant.astimezone(zone)
    if every is WindowSize.HOUR:
        # An hour is identified by its wall hour and the UTC offset (two 01:00 hours in autumn).
        return (wall.year, wall.month, wall.day, wall.hour, int(wall.utcoffset().total_seconds()))  # type: ignore[union-attr]
    if every is WindowSize.DAY:
        return (wall.year, wall.month, wall.day)
    return (wall.year, wall.month)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(BASES),
    offset=st.integers(-40 * 86400, 40 * 86400),
    every=st.sampled_from(PERIODS),
    zone_name=st.sampled_from(ZONES),
)
def test_a_period_is_the_calendar_hour_day_or_month_of_the_zone_holding_the_instant(
    base: datetime, offset: int, every: WindowSize, zone_name: str
) -> None:
    zone = ZoneInfo(zone_name)
    instant = base + timedelta(seconds=offset)
    period = period_at(instant, every, zone)
    assert period.start <= instant < period.end
    # Lord Howe's clock goes back 30 minutes: its hour from 01:00 is one 90-minute window
    # (kmeter.core.windows), which the wall-clock key below cannot express.
    assume(every is not WindowSize.HOUR or zone_name != "Australia/Lord_Howe")
    # Every offset since 1972 is whole minutes: the minute before the start and the minute at
    # the end are in other periods, the first and last minutes in this one.
    minute = timedelta(minutes=1)
    inside = local_key(instant, every, zone)
    assert local_key(period.start, every, zone) == inside
    assert local_key(period.end - minute, every, zone) == inside
    assert local_key(period.start - minute, every, zone) != inside
    assert local_key(period.end, every, zone) != inside


def test_a_new_york_day_is_23_hours_when_the_clock_springs_forward() -> None:
    day = period_at(
        datetime(2024, 3, 10, 12, tzinfo=UTC), WindowSize.DAY, ZoneInfo("America/New_York")
    )
    assert day == Window(datetime(2024, 3, 10, 5, tzinfo=UTC), datetime(2024, 3, 11, 4, tzinfo=UTC))


def meter(aggregation: Aggregation) -> MeterSpec:
    return MeterSpec.create(
        event_type="llm",
        aggregation=aggregation,
        window_size=WindowSize.MINUTE,
        value_property=None if aggregation is Aggregation.COUNT else "$.v",
        group_by={"model": "$.model"},
    )


def rule(aggregation: Aggregation, every: WindowSize, zone: str, **extra: Any) -> QuotaRule:
    return QuotaRule(
        name="q",
        generation=1,
        aggregation=aggregation,
        limit=Decimal(10),
        every=every,
        zone_name=zone,
        group_names=("model",),
        **extra,
    )


@st.composite
def streams(draw: st.DrawFn) -> list[UsageEvent]:
    base = draw(st.sampled_from(BASES))
    events = []
    for index in range(draw(st.integers(0, 40))):
        data: dict[str, Any] = {"v": draw(st.sampled_from(["1", "2.5", "0.1", "-3", "7", "10"]))}
        model = draw(st.sampled_from(["gpt", "mini", None]))
        if model is not None:
            data["model"] = model
        events.append(
            UsageEvent(
                str(index),
                "src",
                "llm",
                draw(st.sampled_from(SUBJECTS)),
                base
                + timedelta(
                    seconds=draw(st.integers(-2 * 86400, 2 * 86400)),
                    microseconds=draw(st.integers(0, 999_999)),
                ),
                data,
            )
        )
    return events


def oracle(events: list[UsageEvent], quota: QuotaRule, period: Window) -> dict[str, Decimal | None]:
    """Each subject's usage, straight from the events of the period that pass the filter."""
    chosen: dict[str, list[UsageEvent]] = {}
    for event in events:
        assert event.data is not None
        if not period.start <= event.time < period.end or not quota.applies_to(event.subject):
            continue
        if any(event.data.get(k) != v for k, v in quota.filter_group_by.items()):
            continue
        chosen.setdefault(event.subject, []).append(event)
    usage: dict[str, Decimal | None] = {}
    for subject, mine in chosen.items():
        values = [Decimal(event.data["v"]) for event in mine]  # type: ignore[index]
        if quota.aggregation is Aggregation.SUM:
            usage[subject] = sum(values, Decimal(0))
        elif quota.aggregation is Aggregation.COUNT:
            usage[subject] = Decimal(len(mine))
        elif quota.aggregation is Aggregation.UNIQUE_COUNT:
            usage[subject] = Decimal(len({event.data["v"] for event in mine}))  # type: ignore[index]
        elif quota.aggregation is Aggregation.MAX:
            usage[subject] = max(values)
        else:
            latest = max(mine, key=lambda event: (event.time, event.source, event.id))
            usage[subject] = Decimal(latest.data["v"])  # type: ignore[index]
    return usage


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=streams(),
    aggregation=st.sampled_from(LIMITABLE),
    every=st.sampled_from(PERIODS),
    zone=st.sampled_from(ZONES),
    filtered=st.booleans(),
    names=st.one_of(st.none(), st.sets(st.sampled_from(SUBJECTS), min_size=1)),
    cuts=st.lists(st.integers(0, 40), max_size=4),
    at=st.integers(-86400, 86400),
)
def test_period_usage_built_or_advanced_batch_by_batch_equals_the_events_of_the_period(  # noqa: PLR0917 - hypothesis arguments
    events: list[UsageEvent],
    aggregation: Aggregation,
    every: WindowSize,
    zone: str,
    filtered: bool,
    names: set[str] | None,
    cuts: list[int],
    at: int,
) -> None:
    quota = rule(
        aggregation,
        every,
        zone,
        filter_group_by={"model": "gpt"} if filtered else {},
        all_subjects=names is None,
        names=frozenset(names or ()),
    )
    now = (events[0].time if events else BASES[0]) + timedelta(seconds=at)
    period = quota.period_at(now)
    state = FoldState(meter(aggregation))
    incremental = PeriodUsage(quota, period)
    previous = 0
    for cut in [*sorted(cut % (len(events) + 1) for cut in cuts), len(events)]:
        result = fold(state, events[previous:cut], now=datetime(2025, 1, 1, tzinfo=UTC))
        for key, after in result.changed.items():
            incremental.advance(key, state.windows.get(key), after)
        state.apply(result)
        previous = max(previous, cut)
    built = PeriodUsage.build(quota, period, state.windows.items())
    expected = oracle(events, quota, period)
    assert {s: built.used(s) for s in built.subjects()} == expected
    assert {s: incremental.used(s) for s in incremental.subjects()} == expected


def test_unique_count_over_a_period_counts_a_value_seen_in_two_minutes_once() -> None:
    quota = rule(Aggregation.UNIQUE_COUNT, WindowSize.DAY, "UTC")
    base = datetime(2024, 5, 1, 10, tzinfo=UTC)
    events = [
        UsageEvent(str(i), "s", "llm", "c1", base + timedelta(minutes=i), {"v": v})
        for i, v in enumerate(["a", "b", "a", "a"])
    ]
    state = FoldState(meter(Aggregation.UNIQUE_COUNT))
    state.apply(fold(state, events, now=base))
    usage = PeriodUsage.build(quota, quota.period_at(base), state.windows.items())
    assert usage.used("c1") == Decimal(2)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.decimals(min_value=0, max_value=30, places=2), min_size=1, max_size=12),
    thresholds=st.sets(st.integers(1, 100), max_size=5),
    limit=st.decimals(min_value=Decimal("0.5"), max_value=20, places=1),
    enforcement=st.sampled_from(list(Enforcement)),
)
def test_each_threshold_fires_once_in_the_evaluation_that_first_crosses_it(
    steps: list[Decimal], thresholds: set[int], limit: Decimal, enforcement: Enforcement
) -> None:
    quota = QuotaRule(
        name="q",
        generation=1,
        aggregation=Aggregation.SUM,
        limit=limit,
        every=WindowSize.DAY,
        enforcement=enforcement,
        notify_at=tuple(thresholds),
    )
    used = Decimal(0)
    notified: tuple[int, ...] = ()
    fired: list[int] = []
    highest = Decimal(0)
    for step in steps:
        used += step
        highest = max(highest, used)
        result = evaluate(quota, "c1", used, notified)
        # Plain: a threshold fires when usage first reaches its share of the limit.
        assert set(result.fired) == {
            t for t in thresholds if used * 100 >= limit * t and t not in fired
        }
        assert result.blocked == (used >= limit and enforcement is Enforcement.BLOCK)
        assert result.over == (used >= limit)
        fired.extend(result.fired)
        notified = result.notified
    assert sorted(fired) == sorted(t for t in thresholds if highest * 100 >= limit * t)
    assert len(fired) == len(set(fired))


def daily(limit: int, **extra: Any) -> QuotaRule:
    """A daily quota on a COUNT meter."""
    return QuotaRule(
        name="q",
        generation=extra.pop("generation", 1),
        aggregation=Aggregation.COUNT,
        limit=Decimal(limit),
        every=WindowSize.DAY,
        **extra,
    )


def test_request_101_is_the_first_blocked_with_a_limit_of_100() -> None:
    quota = daily(100)
    assert not evaluate(quota, "c1", Decimal(99)).blocked
    # 100 requests counted: the subject has used its limit, so the next (101st) is refused.
    assert evaluate(quota, "c1", Decimal(100)).blocked


def test_an_override_gives_its_subject_its_own_limit_and_brings_it_under_the_quota() -> None:
    quota = daily(
        100, all_subjects=False, names=frozenset({"c1"}), overrides={"vip": Decimal(1000)}
    )
    assert [quota.applies_to(s) for s in ("vip", "c1", "c2")] == [True, True, False]
    assert not evaluate(quota, "vip", Decimal(500)).blocked
    assert evaluate(quota, "c1", Decimal(500)).blocked


def test_near_means_a_threshold_below_100_fired_but_not_over() -> None:
    quota = daily(100, notify_at=(80, 100))
    assert evaluate(quota, "c", Decimal(85)).near
    assert not evaluate(quota, "c", Decimal(100)).near
    assert not evaluate(quota, "c", Decimal(50)).near


def test_a_threshold_fired_stays_fired_when_the_limit_is_raised_in_the_period() -> None:
    first = evaluate(daily(100, notify_at=(80,)), "c", Decimal(90))
    assert first.fired == (80,)
    raised = daily(200, generation=2, notify_at=(80,))
    assert evaluate(raised, "c", Decimal(170), first.notified).fired == ()


@pytest.mark.parametrize("aggregation", [Aggregation.AVG, Aggregation.MIN])
def test_averages_and_minimums_cannot_be_limited(aggregation: Aggregation) -> None:
    with pytest.raises(ValueError, match="total or a level"):
        QuotaRule(
            name="q", generation=1, aggregation=aggregation, limit=Decimal(1), every=WindowSize.DAY
        )


def test_an_unknown_filter_group_and_a_bad_zone_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="not a groupBy"):
        QuotaRule(
            name="q",
            generation=1,
            aggregation=Aggregation.SUM,
            limit=Decimal(1),
            every=WindowSize.DAY,
            filter_group_by={"region": "eu"},
        )
    with pytest.raises(ValueError, match="IANA"):
        QuotaRule(
            name="q",
            generation=1,
            aggregation=Aggregation.SUM,
            limit=Decimal(1),
            every=WindowSize.DAY,
            zone_name="Mars/Base",
        )
