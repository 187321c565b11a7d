"""Tables of ``kmeter usage``, ``meters`` and ``quotas``: exact values, local windows, no markup."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from kmeter.api.encoding import dumps
from kmeter.commands.render import (
    instant_text,
    meters_table,
    parse_exact,
    quotas_table,
    usage_table,
    value_text,
)


def rendered(table: Table) -> list[list[str]]:
    """The table's lines as lists of cells (cells hold no double spaces in these tests)."""
    console = Console(width=1000, color_system=None)
    with console.capture() as captured:
        console.print(table)
    lines = [line.strip() for line in captured.get().splitlines()]
    return [
        [cell.strip() for cell in line.split("  ") if cell.strip()]
        for line in lines
        if line and set(line) != {"─"}
    ]


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=18, min_value=-(10**20), max_value=10**20
    )
)
def test_a_value_is_shown_as_its_exact_text(value: Decimal) -> None:
    assert Decimal(value_text(parse_exact(dumps([value]))[0])) == value


def test_values_keep_more_digits_than_a_float_has() -> None:
    document = parse_exact(b'{"data":[{"value":0.10000000000000000001}]}')
    assert value_text(document["data"][0]["value"]) == "0.10000000000000000001"
    assert value_text(parse_exact(b"[100000000000000000000001]")[0]) == "100000000000000000000001"
    assert value_text(None) == ""


def test_windows_are_shown_in_the_query_time_zone() -> None:
    assert (
        instant_text("2024-04-30T22:00:00Z", ZoneInfo("Europe/Paris"))
        == "2024-05-01T00:00:00+02:00"
    )
    assert instant_text("2024-04-30T22:00:00Z", UTC) == "2024-04-30T22:00:00Z"
    assert instant_text("2024-04-30T22:00:00Z", ZoneInfo("UTC")) == "2024-04-30T22:00:00Z"


def test_a_usage_table_has_a_column_per_subject_and_group() -> None:
    document = parse_exact(
        b'{"windowSize":"DAY","data":['
        b'{"value":1.5,"windowStart":"2024-04-30T22:00:00Z","windowEnd":"2024-05-01T22:00:00Z",'
        b'"subject":"customer-1","groupBy":{"model":"gpt-4o"}},'
        b'{"value":3,"windowStart":"2024-04-30T22:00:00Z","windowEnd":"2024-05-01T22:00:00Z",'
        b'"subject":"customer-2","groupBy":{"model":null}}]}'
    )
    assert rendered(usage_table(document, ZoneInfo("Europe/Paris"), ["model"])) == [
        ["WINDOW START", "WINDOW END", "SUBJECT", "MODEL", "VALUE"],
        ["2024-05-01T00:00:00+02:00", "2024-05-02T00:00:00+02:00", "customer-1", "gpt-4o", "1.5"],
        ["2024-05-01T00:00:00+02:00", "2024-05-02T00:00:00+02:00", "customer-2", "3"],
    ]


def test_totals_without_subjects_have_no_subject_column() -> None:
    document = parse_exact(
        b'{"data":[{"value":7,"windowStart":"2024-05-01T00:00:00Z",'
        b'"windowEnd":"2024-06-01T00:00:00Z","subject":null,"groupBy":{}}]}'
    )
    assert rendered(usage_table(document, UTC)) == [
        ["WINDOW START", "WINDOW END", "VALUE"],
        ["2024-05-01T00:00:00Z", "2024-06-01T00:00:00Z", "7"],
    ]


def test_cells_are_never_read_as_markup() -> None:
    document = parse_exact(
        b'{"data":[{"value":1,"windowStart":"2024-05-01T00:00:00Z",'
        b'"windowEnd":"2024-05-01T00:01:00Z","subject":"[bold]x[/bold]","groupBy":{}}]}'
    )
    assert rendered(usage_table(document, UTC))[1][2] == "[bold]x[/bold]"


def test_the_meters_table_shows_each_meters_definition() -> None:
    meters = parse_exact(
        b'[{"id":"u1","slug":"llm-tokens","name":"llm-tokens","namespace":"team-a",'
        b'"aggregation":"SUM","eventType":"llm.completion","valueProperty":"$.usage.total_tokens",'
        b'"groupBy":{"model":"$.model"},"windowSize":"MINUTE","createdAt":"2024-05-01T10:00:00Z"},'
        b'{"id":"u2","slug":"calls","name":"calls","namespace":"team-a","aggregation":"COUNT",'
        b'"eventType":"api.call","groupBy":{},"windowSize":"HOUR"}]'
    )
    assert rendered(meters_table(meters)) == [
        ["NAMESPACE", "NAME", "EVENT TYPE", "AGGREGATION", "VALUE", "GROUP BY", "WINDOW",
         "CREATED"],
        ["team-a", "llm-tokens", "llm.completion", "SUM", "$.usage.total_tokens", "model=$.model",
         "MINUTE", "2024-05-01T10:00:00Z"],
        ["team-a", "calls", "api.call", "COUNT", "HOUR"],
    ]  # fmt: skip


def test_the_quotas_table_counts_subjects_over_and_near_their_limit() -> None:
    quotas = parse_exact(
        b'{"items":[{"name":"free-tier","meter":"llm-tokens","limit":100000,"period":"MONTH",'
        b'"timeZone":"Europe/Paris","enforcement":"Block","subjectsOver":["a","b"],'
        b'"subjectsNear":["c"]},'
        b'{"name":"pro","meter":"llm-tokens","limit":0.5,"period":"DAY","timeZone":"UTC",'
        b'"enforcement":"Notify","subjectsOver":0,"subjectsNear":3}]}'
    )["items"]
    assert rendered(quotas_table(quotas)) == [
        ["NAME", "METER", "LIMIT", "PERIOD", "TIME ZONE", "ENFORCEMENT", "OVER", "NEAR"],
        ["free-tier", "llm-tokens", "100000", "MONTH", "Europe/Paris", "Block", "2", "1"],
        ["pro", "llm-tokens", "0.5", "DAY", "UTC", "Notify", "0", "3"],
    ]
