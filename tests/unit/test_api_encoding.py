"""Response encodings: exact decimals in JSON, OpenMeter's CSV columns."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from kmeter.api.encoding import dumps, row_objects, rows_csv
from kmeter.core.rollup import Row

AT = datetime(2024, 5, 1, tzinfo=UTC)
decimals = st.decimals(
    allow_nan=False, allow_infinity=False, min_value=-(10**30), max_value=10**30, places=18
)


@given(decimals)
def test_json_numbers_are_the_exact_decimal(value: Decimal) -> None:
    body = dumps([value])
    assert json.loads(body, parse_float=Decimal, parse_int=Decimal) == [value]
    assert b"E" not in body
    assert b"e" not in body


def test_a_million_tenths_read_exactly() -> None:
    assert dumps({"value": sum([Decimal("0.1")] * 1000)}) == b'{"value":100}'
    assert dumps([Decimal("0.10000000000000000001")]) == b"[0.10000000000000000001]"


def test_rows_have_openmeter_shape_with_utc_times() -> None:
    end = AT.replace(day=2)
    rows = [
        Row(AT, end, None, {"model": None}, Decimal("1.50")),
        Row(AT, end, "acme", {"model": "m"}, Decimal("2")),  # the same window, another value
        Row(end, AT.replace(day=3), "acme", {"model": "m"}, Decimal("1.5")),
    ]
    assert json.loads(dumps(row_objects(rows))) == [
        {
            "value": 1.5,
            "windowStart": "2024-05-01T00:00:00Z",
            "windowEnd": "2024-05-02T00:00:00Z",
            "subject": None,
            "groupBy": {"model": None},
        },
        {
            "value": 2,
            "windowStart": "2024-05-01T00:00:00Z",
            "windowEnd": "2024-05-02T00:00:00Z",
            "subject": "acme",
            "groupBy": {"model": "m"},
        },
        {
            "value": 1.5,
            "windowStart": "2024-05-02T00:00:00Z",
            "windowEnd": "2024-05-03T00:00:00Z",
            "subject": "acme",
            "groupBy": {"model": "m"},
        },
    ]


@given(
    st.lists(st.tuples(st.text(min_size=1), st.none() | st.text(min_size=1), decimals), max_size=20)
)
def test_csv_round_trips_subjects_labels_and_values(
    items: list[tuple[str, str | None, Decimal]],
) -> None:
    rows = [Row(AT, AT, subject, {"model": label}, value) for subject, label, value in items]
    text = rows_csv(rows, by_subject=True, group_names=["model"]).decode()
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == ["window_start", "window_end", "subject", "model", "value"]
    for line, (subject, label, value) in zip(parsed[1:], items, strict=True):
        assert line[2] == subject
        assert line[3] == (label or "")
        assert Decimal(line[4]) == value
