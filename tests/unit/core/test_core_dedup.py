"""Deduplication by (source, id) within a horizon, with a memory bound."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.core.dedup import DEFAULT_HORIZON, Deduplicator

T0 = datetime(2024, 5, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_retry_within_24_hours_is_a_duplicate() -> None:
    dedup = Deduplicator()
    dedup.advance(T0)
    assert dedup.add("gateway", "evt-1") is True
    dedup.advance(T0 + timedelta(hours=23, minutes=59))
    assert dedup.add("gateway", "evt-1") is False
    assert dedup.stats.duplicates == 1


def test_the_default_horizon_is_24_hours() -> None:
    assert DEFAULT_HORIZON.total_seconds() == 24 * 3600
    assert Deduplicator().horizon == DEFAULT_HORIZON


def test_the_same_id_from_another_source_is_not_a_duplicate() -> None:
    dedup = Deduplicator()
    dedup.advance(T0)
    assert dedup.add("gateway", "evt-1")
    assert dedup.add("billing", "evt-1")


def test_pairs_that_concatenate_to_the_same_text_are_distinct() -> None:
    dedup = Deduplicator()
    dedup.advance(T0)
    assert dedup.add("ab", "c")
    assert dedup.add("a", "bc")
    assert dedup.add("a:b", "c")
    assert dedup.add("1:a", "bc")


def test_a_pair_is_forgotten_once_the_horizon_has_passed() -> None:
    dedup = Deduplicator(horizon=HOUR)
    dedup.advance(T0)
    dedup.add("s", "1")
    assert dedup.advance(T0 + HOUR) == 1
    assert len(dedup) == 0
    assert dedup.add("s", "1") is True
    assert dedup.stats.expired == 1


def test_the_clock_never_goes_backwards() -> None:
    dedup = Deduplicator(horizon=HOUR)
    dedup.advance(T0 + HOUR)
    dedup.add("s", "1")
    dedup.advance(T0)  # ignored
    assert dedup.clock == T0 + HOUR
    dedup.advance(T0 + 2 * HOUR - timedelta(seconds=1))
    assert ("s", "1") in dedup


def test_contains_is_read_only_and_can_look_ahead() -> None:
    dedup = Deduplicator(horizon=HOUR)
    dedup.advance(T0)
    dedup.add("s", "1")
    assert dedup.contains("s", "1")
    assert not dedup.contains("s", "1", now=T0 + HOUR)
    assert dedup.contains("s", "1")  # nothing was forgotten
    assert dedup.view(T0 + timedelta(minutes=59))("s", "1")
    assert not dedup.view(T0 + HOUR)("s", "1")
    assert len(dedup) == 1


def test_adding_before_the_clock_is_set_is_refused() -> None:
    with pytest.raises(RuntimeError, match="advance"):
        Deduplicator().add("s", "1")


def test_a_horizon_must_be_positive_and_the_bound_at_least_one() -> None:
    with pytest.raises(ValueError, match="horizon must be positive"):
        Deduplicator(horizon=timedelta(0))
    with pytest.raises(ValueError, match="max_entries"):
        Deduplicator(max_entries=0)


def test_exceeding_max_entries_evicts_the_oldest_and_says_so() -> None:
    dedup = Deduplicator(horizon=HOUR, max_entries=3)
    for minute in range(5):
        dedup.advance(T0 + timedelta(minutes=minute))
        dedup.add("s", str(minute))
    assert len(dedup) == 3
    assert dedup.stats.evicted == 2
    # The effective horizon is what the kept pairs (minutes 2, 3, 4) cover, not the hour...
    assert dedup.coverage() == timedelta(minutes=2)
    # ...and a retry of an evicted pair is no longer caught.
    assert dedup.add("s", "0") is True
    # Once the evicted pairs would have expired anyway, the full horizon is back.
    dedup.advance(T0 + timedelta(minutes=62))
    assert dedup.coverage() == HOUR


def test_coverage_is_the_horizon_while_nothing_was_evicted() -> None:
    dedup = Deduplicator(horizon=HOUR)
    dedup.advance(T0)
    dedup.add("s", "1")
    assert dedup.coverage() == HOUR


def test_memory_bytes_tracks_the_real_memory_held() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dedup = Deduplicator()
        dedup.advance(T0)
        for number in range(20_000):
            dedup.add("gateway-7", f"5c10fade-1c9e-4d6a-8275-{number:012d}")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    estimate = dedup.memory_bytes()
    assert 0.8 * held <= estimate <= 1.25 * held
    assert 120 <= estimate / len(dedup) <= 200  # ~100 bytes + a 46-character key


def test_entries_restore_a_deduplicator_that_answers_the_same() -> None:
    dedup = Deduplicator(horizon=HOUR)
    for minute in range(0, 120, 7):
        dedup.advance(T0 + timedelta(minutes=minute))
        dedup.add(f"s{minute % 3}", f"id:{minute}")
    now = T0 + timedelta(minutes=125)
    dedup.advance(now)
    restored = Deduplicator.restore(dedup.entries(), now, horizon=HOUR)
    assert list(restored.entries()) == list(dedup.entries())
    for minute in range(0, 120, 7):
        pair = (f"s{minute % 3}", f"id:{minute}")
        assert restored.contains(*pair) == dedup.contains(*pair)


# --- property: against a plain history of acceptances -----------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(-30, 90)),  # minutes, may go back
        st.tuples(st.just("add"), st.tuples(st.sampled_from("ab"), st.sampled_from("123"))),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(operations, st.integers(10, 120))
def test_a_pair_is_a_duplicate_exactly_when_accepted_within_the_horizon(
    ops: list[tuple[str, object]], horizon_minutes: int
) -> None:
    horizon = timedelta(minutes=horizon_minutes)
    dedup = Deduplicator(horizon=horizon)
    clock = T0
    dedup.advance(clock)
    accepted: list[tuple[tuple[str, str], datetime]] = []  # the oracle: every acceptance
    for kind, argument in ops:
        if kind == "advance":
            assert isinstance(argument, int)
            clock = max(clock, clock + timedelta(minutes=argument))
            dedup.advance(clock)
        else:
            assert isinstance(argument, tuple)
            pair = (argument[0], argument[1])
            live = [when for seen, when in accepted if seen == pair and when + horizon > clock]
            assert dedup.add(*pair) is (not live)
            if not live:
                accepted.append((pair, clock))
        live_pairs = {seen for seen, when in accepted if when + horizon > clock}
        assert len(dedup) == len(live_pairs)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 15), max_size=80), st.integers(1, 8))
def test_with_a_bound_no_new_event_is_ever_called_a_duplicate(
    ids: list[int], max_entries: int
) -> None:
    """The bound may let duplicates through, but never drops a first sighting; and a retry of
    one of the last ``max_entries`` acceptances is always caught."""
    dedup = Deduplicator(max_entries=max_entries)
    dedup.advance(T0)
    accepted: list[int] = []
    for number in ids:
        new = dedup.add("s", str(number))
        if number not in accepted:
            assert new
        if number in accepted[-max_entries:]:
            assert not new
        if new:
            accepted.append(number)
        assert len(dedup) <= max_entries
    assert dedup.stats.evicted == max(0, len(accepted) - max_entries)


def test_lookup_answers_as_contains_for_the_fold() -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    dedup = Deduplicator(timedelta(hours=1))
    dedup.advance(start)
    dedup.add("gw", "1")
    dedup.add("g", "w1")
    dedup.advance(start + timedelta(minutes=30))
    dedup.add("gw", "2")
    for now in (start, start + timedelta(minutes=59), start + timedelta(minutes=61)):
        expiry_of, moment = dedup.lookup(now)
        for source, event_id in [("gw", "1"), ("g", "w1"), ("gw", "2"), ("gw", "3"), ("g", "w2")]:
            expiry = expiry_of(f"{len(source)}:{source}{event_id}")
            found = expiry is not None and expiry > moment
            assert found == dedup.contains(source, event_id, now), (now, source, event_id)
