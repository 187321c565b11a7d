"""Meter retention is an ISO 8601 duration of exact units."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter.core.durations import parse_iso_duration

UNITS = st.integers(min_value=0, max_value=10_000)


@given(weeks=UNITS, days=UNITS, hours=UNITS, minutes=UNITS, seconds=UNITS)
def test_a_duration_written_with_any_exact_units_parses_to_their_sum(
    weeks: int, days: int, hours: int, minutes: int, seconds: int
) -> None:
    date_part = (f"{weeks}W" if weeks else "") + (f"{days}D" if days else "")
    time_part = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + date_part + (f"T{time_part}" if time_part else "")
    expected = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    if text == "P":
        with pytest.raises(ValueError, match="not an ISO 8601 duration"):
            parse_iso_duration(text)
    else:
        assert parse_iso_duration(text) == expected


@pytest.mark.parametrize("text", ["P1Y", "P1M", "400D", "P", "PT", "P1DT", "p1d", "P-1D", "P1.5D"])
def test_years_months_and_malformed_text_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 duration"):
        parse_iso_duration(text)


def test_the_default_meter_retention_is_400_days() -> None:
    assert parse_iso_duration("P400D") == timedelta(days=400)
    assert parse_iso_duration("PT36H") == timedelta(hours=36)
