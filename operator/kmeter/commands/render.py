"""The API's answers as tables a person reads (``--output table``).

* Values are exact: the JSON is parsed with :class:`~decimal.Decimal` for every non-integer
  number and printed as its canonical text (``0.1`` stays ``0.1``; ``1e3`` would print
  ``1000``), never through a binary float.
* Window bounds are shown in the query's time zone with their offset
  (``2024-05-01T00:00:00+02:00``), or in UTC with ``Z``; JSON and CSV keep the API's UTC text.
* Tables are never cut: when the output is not a terminal they are printed at their full width,
  so ``kmeter usage ... | grep`` sees every cell whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, tzinfo
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kmeter.core.decimals import format_decimal
from kmeter.core.events import format_timestamp, parse_timestamp


def parse_exact(body: bytes | str) -> Any:
    """JSON with every non-integer number as an exact Decimal."""
    return json.loads(body, parse_float=Decimal)


def value_text(value: object) -> str:
    """A JSON value as a cell: numbers exact, null empty, objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, default=str, separators=(",", ":"))


def instant_text(text: object, zone: tzinfo) -> str:
    """An RFC 3339 instant from the API, shown in ``zone`` (UTC with ``Z``)."""
    if not isinstance(text, str):
        return value_text(text)
    try:
        moment = parse_timestamp(text)
    except ValueError:
        return text
    if zone is UTC or getattr(zone, "key", None) in ("UTC", "Etc/UTC"):
        return format_timestamp(moment)
    return moment.astimezone(zone).isoformat()


def console(*, stderr: bool = False) -> Console:
    """A console for tables: full width when the output is not a terminal."""
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal:
        out.width = 100_000
    return out


def _add_row(table: Table, cells: Sequence[str | Text]) -> None:
    """Cells as plain text: a subject or a group value is never read as rich markup."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


def _table(columns: Sequence[str], right: Sequence[str] = ()) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    return table


def usage_table(document: Mapping[str, Any], zone: tzinfo, group_by: Sequence[str] = ()) -> Table:
    """The rows of a query answer: window, subject (when any), each group, value."""
    rows = [row for row in document.get("data") or [] if isinstance(row, dict)]
    with_subject = any(row.get("subject") is not None for row in rows)
    seen: list[str] = [name for name in group_by if name != "subject"]
    for row in rows:
        for name in row.get("groupBy") or {}:
            if name not in seen:
                seen.append(name)
    columns = ["WINDOW START", "WINDOW END", *(["SUBJECT"] if with_subject else [])]
    columns += [name.upper() for name in seen]
    table = _table([*columns, "VALUE"], right=["VALUE"])
    for row in rows:
        groups = row.get("groupBy") or {}
        cells = [
            instant_text(row.get("windowStart"), zone),
            instant_text(row.get("windowEnd"), zone),
        ]
        if with_subject:
            cells.append(value_text(row.get("subject")))
        cells += [value_text(groups.get(name)) for name in seen]
        _add_row(table, [*cells, value_text(row.get("value"))])
    return table


def _group_by_text(group_by: object) -> str:
    if not isinstance(group_by, dict):
        return ""
    return ", ".join(f"{name}={path}" for name, path in group_by.items())


def meters_table(meters: Sequence[Mapping[str, Any]]) -> Table:
    """``GET /api/v1/meters``: one line per Meter."""
    table = _table(
        ["NAMESPACE", "NAME", "EVENT TYPE", "AGGREGATION", "VALUE", "GROUP BY", "WINDOW", "CREATED"]
    )
    for meter in meters:
        _add_row(
            table,
            [
                value_text(meter.get("namespace")),
                value_text(meter.get("slug") or meter.get("name")),
                value_text(meter.get("eventType")),
                value_text(meter.get("aggregation")),
                value_text(meter.get("valueProperty")),
                _group_by_text(meter.get("groupBy")),
                value_text(meter.get("windowSize")),
                value_text(meter.get("createdAt")),
            ],
        )
    return table


def _subjects_cell(value: object, style: str) -> Text:
    """``subjectsOver``/``subjectsNear``: a count, or a list of subjects shown by its length."""
    count = len(value) if isinstance(value, list) else value
    text = value_text(count)
    if isinstance(count, int) and count > 0:
        return Text(text, style=style)
    return Text(text)


def _period_text(quota: Mapping[str, Any]) -> tuple[str, str]:
    period = quota.get("period")
    zone = quota.get("timeZone")
    if isinstance(period, dict):
        return value_text(period.get("every")), value_text(zone or period.get("timeZone"))
    return value_text(period), value_text(zone)


def quotas_table(quotas: Sequence[Mapping[str, Any]]) -> Table:
    """``GET /api/v1/quotas``: one line per Quota, with how many subjects are over or near."""
    table = _table(
        ["NAME", "METER", "LIMIT", "PERIOD", "TIME ZONE", "ENFORCEMENT", "OVER", "NEAR"],
        right=["LIMIT", "OVER", "NEAR"],
    )
    for quota in quotas:
        every, zone = _period_text(quota)
        meter = quota.get("meter")
        if isinstance(meter, dict):
            meter = meter.get("name")
        _add_row(
            table,
            [
                value_text(quota.get("name")),
                value_text(meter),
                value_text(quota.get("limit")),
                every,
                zone,
                value_text(quota.get("enforcement")),
                _subjects_cell(quota.get("subjectsOver"), "bold red"),
                _subjects_cell(quota.get("subjectsNear"), "yellow"),
            ],
        )
    return table
