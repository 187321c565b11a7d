"""Windows: UTC storage windows, local query windows in any zone, exact roll-up."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.core.windows import (
    RollupError,
    Window,
    WindowIndex,
    WindowSize,
    local_window,
    query_window_of,
    query_windows,
    rollup_problem,
    storage_window,
    time_zone,
    window_start,
    window_start_seconds,
)

MINUTE, HOUR, DAY, MONTH = WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
KOLKATA = ZoneInfo("Asia/Kolkata")
ADELAIDE = ZoneInfo("Australia/Adelaide")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
APIA = ZoneInfo("Pacific/Apia")

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "Pacific/Chatham",
    "America/Santiago",
    "America/Havana",
    "Africa/Casablanca",
    "Pacific/Apia",
    "Asia/Tehran",
    "Antarctica/Troll",
    "Europe/Moscow",
]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, *, minute: int = 0
) -> datetime:
    """The UTC instant of a local wall time (the first one, when the wall time repeats)."""
    return datetime(year, month, day, hour, minute, tzinfo=zone).astimezone(UTC)


def hours(window: Window) -> float:
    return window.duration / timedelta(hours=1)


# --- the plain oracle: walk the timeline minute by minute ------------------------------------


def truncated(wall: datetime, size: WindowSize) -> datetime:
    """The start of the local calendar unit holding a wall time, written the obvious way."""
    if size is MINUTE:
        return datetime(wall.year, wall.month, wall.day, wall.hour, wall.minute)
    if size is HOUR:
        return datetime(wall.year, wall.month, wall.day, wall.hour)
    if size is DAY:
        return datetime(wall.year, wall.month, wall.day)
    return datetime(wall.year, wall.month, 1)


def oracle_boundaries(
    start: datetime, end: datetime, size: WindowSize, zone: ZoneInfo
) -> list[datetime]:
    """Every minute where the local wall clock reaches a new unit of ``size`` (or lands exactly
    on the start of one, as when the clock falls back to 01:00)."""
    boundaries = []
    moment = start.replace(second=0, microsecond=0)
    previous_wall = (moment - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    previous = truncated(previous_wall, size)
    while moment <= end:
        wall = moment.astimezone(zone).replace(tzinfo=None)
        unit = truncated(wall, size)
        if unit > previous or wall == unit:
            boundaries.append(moment)
        previous = unit
        moment += timedelta(minutes=1)
    return boundaries


PAD = {MINUTE: timedelta(minutes=2), HOUR: timedelta(hours=3), DAY: timedelta(days=2)}


def oracle_windows(
    start: datetime, end: datetime, size: WindowSize, zone: ZoneInfo
) -> list[Window]:
    pad = PAD.get(size, timedelta(days=32))
    marks = oracle_boundaries(start - pad, end + pad, size, zone)
    pairs = itertools.pairwise(marks)
    return [Window(a, b) for a, b in pairs if b > start and a < end]


instants = st.datetimes(
    min_value=datetime(1975, 1, 1),
    max_value=datetime(2045, 12, 31),
    timezones=st.just(UTC),
)
SPANS = {
    MINUTE: st.integers(1, 180).map(lambda n: timedelta(minutes=n)),
    HOUR: st.integers(1, 60 * 72).map(lambda n: timedelta(minutes=n)),
    DAY: st.integers(1, 60 * 24 * 6).map(lambda n: timedelta(minutes=n)),
    MONTH: st.integers(1, 24 * 50).map(lambda n: timedelta(hours=n)),
}


@pytest.mark.parametrize("size", [MINUTE, HOUR, DAY])
@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), start=instants, data=st.data())
def test_query_windows_match_a_minute_by_minute_walk(
    size: WindowSize, zone: str, start: datetime, data: st.DataObject
) -> None:
    tz = ZoneInfo(zone)
    end = start + data.draw(SPANS[size])
    assert query_windows(start, end, size, tz) == oracle_windows(start, end, size, tz)


@settings(max_examples=12, deadline=None)
@given(zone=st.sampled_from(ZONES), start=instants, data=st.data())
def test_month_windows_match_a_minute_by_minute_walk(
    zone: str, start: datetime, data: st.DataObject
) -> None:
    tz = ZoneInfo(zone)
    end = start + data.draw(SPANS[MONTH])
    assert query_windows(start, end, MONTH, tz) == oracle_windows(start, end, MONTH, tz)


# Transition days, where the oracle matters most, are rare among random instants: aim at them.
TRANSITIONS = [
    ("America/New_York", utc(2024, 3, 10, 7)),
    ("America/New_York", utc(2024, 11, 3, 6)),
    ("Europe/London", utc(2024, 10, 27, 1)),
    ("Australia/Adelaide", utc(2024, 4, 6, 16, 30)),
    ("Australia/Adelaide", utc(2024, 10, 5, 16, 30)),
    ("Australia/Lord_Howe", utc(2024, 4, 6, 15)),
    ("Australia/Lord_Howe", utc(2024, 10, 5, 15, 30)),
    ("America/Santiago", utc(2024, 4, 7, 3)),
    ("America/Santiago", utc(2024, 9, 8, 4)),
    ("America/Havana", utc(2024, 3, 10, 5)),
    ("Pacific/Apia", utc(2011, 12, 30, 10)),
    ("Pacific/Chatham", utc(2024, 4, 6, 14)),
    ("Pacific/Chatham", utc(2024, 9, 28, 14)),
    ("Antarctica/Troll", utc(2024, 3, 31, 1)),
    ("Africa/Casablanca", utc(2024, 3, 10, 2)),
]


@pytest.mark.parametrize("size", [MINUTE, HOUR, DAY])
@pytest.mark.parametrize(("zone", "transition"), TRANSITIONS)
@settings(max_examples=8, deadline=None)
@given(offset=st.integers(-36 * 60, 36 * 60), span=st.integers(1, 48 * 60))
def test_query_windows_around_clock_changes_match_the_walk(
    size: WindowSize, zone: str, transition: datetime, offset: int, span: int
) -> None:
    tz = ZoneInfo(zone)
    start = transition + timedelta(minutes=offset)
    end = start + timedelta(minutes=span)
    assert query_windows(start, end, size, tz) == oracle_windows(start, end, size, tz)


@settings(max_examples=100, deadline=None)
@given(zone=st.sampled_from(ZONES), instant=instants, size=st.sampled_from([MINUTE, HOUR, DAY]))
def test_the_local_window_of_an_instant_holds_it_and_is_the_walk_s_window(
    zone: str, instant: datetime, size: WindowSize
) -> None:
    tz = ZoneInfo(zone)
    window = local_window(instant, size, tz)
    assert window.start <= instant < window.end
    (expected,) = oracle_windows(instant, instant + timedelta(microseconds=1), size, tz)
    assert window == expected


@pytest.mark.parametrize(("zone", "transition"), TRANSITIONS)
@settings(max_examples=20, deadline=None)
@given(offset=st.integers(-3 * 3600, 3 * 3600), size=st.sampled_from([MINUTE, HOUR]))
def test_the_local_window_of_an_instant_near_a_clock_change_is_the_walk_s_window(
    zone: str, transition: datetime, offset: int, size: WindowSize
) -> None:
    tz = ZoneInfo(zone)
    instant = transition + timedelta(seconds=offset)
    (expected,) = oracle_windows(instant, instant + timedelta(microseconds=1), size, tz)
    assert local_window(instant, size, tz) == expected


def test_a_minute_query_inside_new_york_s_repeated_hour_has_every_minute() -> None:
    # 01:40 EDT to 01:30 EST: the end's wall time is earlier than the start's
    windows = query_windows(utc(2024, 11, 3, 5, 40), utc(2024, 11, 3, 6, 30), MINUTE, NEW_YORK)
    assert len(windows) == 50
    assert windows[0].start == utc(2024, 11, 3, 5, 40)
    assert windows[-1].end == utc(2024, 11, 3, 6, 30)


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    start=instants,
    span=st.integers(1, 60 * 24 * 40).map(lambda n: timedelta(minutes=n)),
    size=st.sampled_from([HOUR, DAY, MONTH]),
)
def test_query_windows_are_contiguous_and_cover_the_range(
    zone: str, start: datetime, span: timedelta, size: WindowSize
) -> None:
    windows = query_windows(start, start + span, size, ZoneInfo(zone))
    assert windows[0].start <= start
    assert windows[-1].end >= start + span
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    assert all(window.start < window.end for window in windows)
    assert all(window.start.tzinfo is UTC for window in windows)


# --- storage windows ------------------------------------------------------------------------


@given(instants, st.sampled_from([MINUTE, HOUR, DAY]))
def test_storage_windows_are_utc_minutes_hours_and_days(
    instant: datetime, size: WindowSize
) -> None:
    expected = {
        MINUTE: instant.replace(second=0, microsecond=0),
        HOUR: instant.replace(minute=0, second=0, microsecond=0),
        DAY: instant.replace(hour=0, minute=0, second=0, microsecond=0),
    }[size]
    assert window_start(instant, size) == expected
    assert window_start_seconds(int(instant.timestamp()), size) == int(expected.timestamp())
    window = storage_window(instant, size)
    assert window.start == expected
    assert (
        window.end - window.start
        == {MINUTE: timedelta(minutes=1), HOUR: timedelta(hours=1), DAY: timedelta(days=1)}[size]
    )


def test_the_last_microsecond_of_a_minute_stays_in_that_minute_even_far_in_the_future() -> None:
    last = datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert window_start(last, MINUTE) == datetime(8999, 12, 31, 23, 59, tzinfo=UTC)


def test_month_is_not_a_storage_size() -> None:
    with pytest.raises(ValueError, match="not a storage window size"):
        window_start(utc(2024, 1, 1), MONTH)


def test_storage_windows_need_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_start(datetime(2024, 1, 1), MINUTE)


# --- the cases a user checks ------------------------------------------------------------------


def test_a_local_day_in_new_york_is_25_hours_when_dst_ends() -> None:
    window = local_window(local(NEW_YORK, 2024, 11, 3, 12), DAY, NEW_YORK)
    assert window == Window(local(NEW_YORK, 2024, 11, 3), local(NEW_YORK, 2024, 11, 4))
    assert hours(window) == 25


def test_a_local_day_in_new_york_is_23_hours_when_dst_starts() -> None:
    window = local_window(local(NEW_YORK, 2024, 3, 10, 12), DAY, NEW_YORK)
    assert window.start == utc(2024, 3, 10, 5)
    assert hours(window) == 23


def test_a_local_day_in_london_is_25_hours_in_late_october() -> None:
    (window,) = query_windows(local(LONDON, 2024, 10, 27), local(LONDON, 2024, 10, 28), DAY, LONDON)
    assert window.start == utc(2024, 10, 26, 23)
    assert hours(window) == 25


def test_the_fall_back_hour_in_new_york_is_two_windows_of_one_hour() -> None:
    windows = query_windows(utc(2024, 11, 3, 4), utc(2024, 11, 3, 8), HOUR, NEW_YORK)
    walls = [window.start.astimezone(NEW_YORK).strftime("%H:%M%z") for window in windows]
    assert walls == ["00:00-0400", "01:00-0400", "01:00-0500", "02:00-0500"]
    assert all(hours(window) == 1 for window in windows)


def test_the_spring_forward_hour_in_new_york_ends_at_three() -> None:
    window = local_window(local(NEW_YORK, 2024, 3, 10, 1, minute=30), HOUR, NEW_YORK)
    assert window.end.astimezone(NEW_YORK).hour == 3
    assert hours(window) == 1


def test_hours_in_kathmandu_start_at_a_quarter_past_the_utc_hour() -> None:
    windows = query_windows(utc(2024, 1, 1), utc(2024, 1, 1, 3), HOUR, KATHMANDU)
    assert {window.start.minute for window in windows} == {15}
    assert all(hours(window) == 1 for window in windows)


def test_days_in_kolkata_start_at_half_past_six_in_the_evening_utc() -> None:
    window = local_window(utc(2024, 5, 1, 12), DAY, KOLKATA)
    assert window == Window(utc(2024, 4, 30, 18, 30), utc(2024, 5, 1, 18, 30))


def test_adelaide_days_start_at_half_past_the_utc_hour_summer_and_winter() -> None:
    winter = local_window(utc(2024, 7, 1, 12), DAY, ADELAIDE)  # +09:30
    summer = local_window(utc(2024, 1, 1, 12), DAY, ADELAIDE)  # +10:30
    assert winter.start == utc(2024, 6, 30, 14, 30)
    assert summer.start == utc(2023, 12, 31, 13, 30)


def test_lord_howe_half_hour_fall_back_makes_a_90_minute_hour() -> None:
    window = local_window(utc(2024, 4, 6, 14, 45), HOUR, LORD_HOWE)
    assert window.duration == timedelta(minutes=90)
    assert window.start.astimezone(LORD_HOWE).strftime("%H:%M%z") == "01:00+1100"


def test_chatham_springs_forward_over_three_o_clock_leaving_a_15_minute_hour() -> None:
    # 02:45 +12:45 becomes 03:45 +13:45: the clock skips 03:00, so the hour from 02:00 ends at
    # the jump and the next one, labelled 03:00, lasts only until 04:00.
    chatham = ZoneInfo("Pacific/Chatham")
    windows = query_windows(utc(2024, 9, 28, 13), utc(2024, 9, 28, 15), HOUR, chatham)
    assert [(w.start.astimezone(chatham).strftime("%H:%M%z"), w.duration) for w in windows] == [
        ("01:00+1245", timedelta(hours=1)),
        ("02:00+1245", timedelta(minutes=45)),
        ("03:45+1345", timedelta(minutes=15)),
        ("04:00+1345", timedelta(hours=1)),
    ]


def test_apia_has_no_window_for_the_day_it_skipped() -> None:
    windows = query_windows(local(APIA, 2011, 12, 29), local(APIA, 2012, 1, 1), DAY, APIA)
    dates = [window.start.astimezone(APIA).date().isoformat() for window in windows]
    assert dates == ["2011-12-29", "2011-12-31"]
    assert all(hours(window) == 24 for window in windows)


def test_months_have_their_real_lengths_in_local_time() -> None:
    windows = query_windows(
        local(NEW_YORK, 2024, 1, 15), local(NEW_YORK, 2024, 4, 15), MONTH, NEW_YORK
    )
    assert [window.duration for window in windows] == [
        timedelta(days=31),
        timedelta(days=29),
        timedelta(days=31, hours=-1),
        timedelta(days=30),
    ]


def test_query_windows_are_whole_windows_overlapping_the_range() -> None:
    windows = query_windows(utc(2024, 1, 1, 10, 30), utc(2024, 1, 1, 12, 1), HOUR)
    assert windows == [
        Window(utc(2024, 1, 1, 10), utc(2024, 1, 1, 11)),
        Window(utc(2024, 1, 1, 11), utc(2024, 1, 1, 12)),
        Window(utc(2024, 1, 1, 12), utc(2024, 1, 1, 13)),
    ]


def test_a_query_with_too_many_windows_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 100,000 are allowed"):
        query_windows(utc(2000, 1, 1), utc(2024, 1, 1), MINUTE)


def test_an_empty_or_reversed_range_is_refused() -> None:
    with pytest.raises(ValueError, match="after its start"):
        query_windows(utc(2024, 1, 1), utc(2024, 1, 1), HOUR)


def test_unknown_time_zone_names_are_refused_with_a_reason() -> None:
    assert time_zone("Asia/Kathmandu") == KATHMANDU
    for name in ("Mars/Olympus_Mons", "", "../../etc/passwd", "America"):
        with pytest.raises(ValueError, match="is not an IANA time zone name"):
            time_zone(name)


# --- roll-up exactness --------------------------------------------------------------------------


def test_day_storage_cannot_roll_up_to_kolkata_days_and_says_why() -> None:
    windows = query_windows(utc(2024, 5, 1), utc(2024, 5, 3), DAY, KOLKATA)
    problem = rollup_problem(DAY, DAY, windows, KOLKATA)
    assert problem is not None
    assert "DAY windows in Asia/Kolkata begin or end at 2024-05-01T00:00:00+05:30" in problem
    assert "Query in UTC, or use a meter with a smaller windowSize." in problem
    with pytest.raises(RollupError):
        WindowIndex(windows, DAY, DAY, KOLKATA)
    with pytest.raises(RollupError):
        query_window_of(utc(2024, 5, 1), DAY, DAY, KOLKATA)


def test_hour_storage_rolls_up_to_berlin_days_but_not_adelaide_days() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    year = (utc(2024, 1, 1), utc(2025, 1, 1))
    assert rollup_problem(HOUR, DAY, query_windows(*year, DAY, berlin), berlin) is None
    assert rollup_problem(HOUR, MONTH, query_windows(*year, MONTH, berlin), berlin) is None
    problem = rollup_problem(HOUR, DAY, query_windows(*year, DAY, ADELAIDE), ADELAIDE)
    assert problem is not None
    assert "whole number of hours" in problem


def test_day_storage_rolls_up_to_utc_days_and_months() -> None:
    year = (utc(2024, 1, 1), utc(2025, 1, 1))
    assert rollup_problem(DAY, DAY, query_windows(*year, DAY), UTC) is None
    assert rollup_problem(DAY, MONTH, query_windows(*year, MONTH), UTC) is None


def test_day_storage_cannot_roll_up_to_london_days_in_summer() -> None:
    summer = query_windows(utc(2024, 7, 1), utc(2024, 7, 3), DAY, LONDON)
    assert rollup_problem(DAY, DAY, summer, LONDON) is not None


def test_a_query_finer_than_the_storage_is_refused() -> None:
    windows = query_windows(utc(2024, 1, 1), utc(2024, 1, 2), HOUR)
    assert rollup_problem(DAY, HOUR, windows, UTC) == (
        "this meter stores DAY windows; it cannot answer by HOUR. Use windowSize DAY or larger."
    )


@pytest.mark.parametrize("zone", ZONES)
def test_minute_storage_rolls_up_exactly_in_every_zone_we_test(zone: str) -> None:
    tz = ZoneInfo(zone)
    for size in (HOUR, DAY):
        windows = query_windows(utc(2024, 1, 1), utc(2025, 1, 1), size, tz)
        assert rollup_problem(MINUTE, size, windows, tz) is None


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    start=instants,
    size=st.sampled_from([HOUR, DAY]),
    minutes=st.lists(st.integers(-600, 60 * 24 * 3), min_size=1, max_size=30),
)
def test_the_index_puts_each_stored_minute_in_the_local_window_that_holds_it(
    zone: str, start: datetime, size: WindowSize, minutes: list[int]
) -> None:
    tz = ZoneInfo(zone)
    start = window_start(start, MINUTE)
    end = start + timedelta(days=3)
    windows = query_windows(start, end, size, tz)
    index = WindowIndex(windows, MINUTE, size, tz)
    for offset in minutes:
        minute = start + timedelta(minutes=offset)
        position = index.locate(minute)
        holding = [i for i, window in enumerate(windows) if minute in window]
        assert position == (holding[0] if holding else None)
        if position is not None:
            assert minute + timedelta(minutes=1) <= windows[position].end
            assert query_window_of(minute, MINUTE, size, tz) == windows[position]
