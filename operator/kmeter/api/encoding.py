"""Response bodies: exact JSON and CSV.

**JSON** is written by orjson; a :class:`~decimal.Decimal` becomes a JSON *number* with its exact
canonical text (``format_decimal``: ``0.3``, never ``0.30000000000000004`` nor ``3E-1``), through
``orjson.Fragment``, so a sum of a million ``0.1`` reads ``100000``. A client parsing numbers as
binary floats rounds them itself; the text on the wire is exact. Datetimes are RFC 3339 in UTC
with ``Z``.

**CSV** (``text/csv``) has OpenMeter's columns: ``window_start,window_end``, ``subject`` when the
rows are per subject, one column per ``groupBy`` name, then ``value``; a null group or value is
an empty cell. Values are the same exact text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from kmeter.core.decimals import format_decimal
from kmeter.core.events import format_timestamp
from kmeter.core.rollup import Row


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"{value} is not a JSON number")
        return orjson.Fragment(format_decimal(value).encode())
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: object) -> bytes:
    """Compact JSON bytes; Decimals as exact numbers, datetimes as RFC 3339 UTC text."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def row_objects(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Query rows as OpenMeter's ``MeterQueryRow`` objects.

    Thousands of rows share a few windows and often values, so each distinct window time and
    value is formatted once.
    """
    stamps: dict[datetime, str] = {}
    numbers: dict[Decimal | None, object] = {None: None}

    def number(value: Decimal | None) -> object:
        found = numbers.get(value)
        if found is None and value is not None:
            found = numbers[value] = _default(value)
        return found

    def stamp(moment: datetime) -> str:
        text = stamps.get(moment)
        if text is None:
            text = stamps[moment] = format_timestamp(moment)
        return text

    return [
        {
            "value": number(row.value),
            "windowStart": stamp(row.window_start),
            "windowEnd": stamp(row.window_end),
            "subject": row.subject,
            "groupBy": row.group_by,
        }
        for row in rows
    ]


def rows_csv(rows: Sequence[Row], *, by_subject: bool, group_names: Sequence[str]) -> bytes:
    """The rows as CSV text (UTF-8, ``\\r\\n`` line ends as RFC 4180 says)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    header = ["window_start", "window_end"]
    if by_subject:
        header.append("subject")
    header.extend(group_names)
    header.append("value")
    writer.writerow(header)
    for row in rows:
        line = [format_timestamp(row.window_start), format_timestamp(row.window_end)]
        if by_subject:
            line.append(row.subject or "")
        line.extend(row.group_by.get(name) or "" for name in group_names)
        line.append("" if row.value is None else format_decimal(row.value))
        writer.writerow(line)
    return out.getvalue().encode()
