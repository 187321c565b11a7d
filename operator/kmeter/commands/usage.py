"""``kmeter usage METER``: a Meter's usage from the usage API, as a table, JSON or CSV.

The command is a thin client of ``GET /api/v1/meters/{meter}/query`` (docs/api.md): the flags
map one to one onto the query's parameters, are checked here first (an RFC 3339 ``--from``, a
known time zone: a typo fails at once with exit code 2, before any request), and everything the
API decides — window boundaries, exact roll-ups — stays the API's. ``--output json`` and
``--output csv`` print the API's own answer unchanged (exact decimal text, UTC instants);
``--output table`` shows the same rows with the windows in ``--time-zone``.
"""

from __future__ import annotations

import sys
from typing import Annotated
from urllib.parse import quote

import typer

from kmeter.commands.common import (
    DEFAULT_URL,
    ApiUrl,
    Namespace,
    Output,
    Token,
    api_path,
    fail,
    run,
)
from kmeter.core.events import parse_timestamp
from kmeter.core.windows import WindowSize, time_zone

COMMAND = "usage"


def query_params(  # noqa: PLR0917 - one parameter per flag
    subjects: list[str],
    start: str | None,
    end: str | None,
    window: WindowSize | None,
    group_by: list[str],
    filters: list[str],
    zone: str,
) -> list[tuple[str, str]]:
    """The query string of the flags, or ValueError naming the flag that is wrong."""
    instants = {}
    for flag, text in (("--from", start), ("--to", end)):
        if text is not None:
            try:
                instants[flag] = parse_timestamp(text)
            except ValueError as error:
                raise ValueError(f"{flag}: {error}") from None
    if len(instants) == 2 and instants["--from"] >= instants["--to"]:
        raise ValueError(f"--from {start} is not before --to {end}")
    try:
        time_zone(zone)
    except ValueError as error:
        raise ValueError(f"--time-zone: {error}") from None
    params: list[tuple[str, str]] = []
    if start is not None:
        params.append(("from", start))
    if end is not None:
        params.append(("to", end))
    if window is not None:
        params.append(("windowSize", str(window)))
    if zone != "UTC":
        params.append(("windowTimeZone", zone))
    params += [("subject", subject) for subject in subjects]
    params += [("groupBy", name) for name in group_by]
    for item in filters:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ValueError(f"--filter: {item!r} is not KEY=VALUE")
        params.append((f"filterGroupBy[{name}]", value))
    return params


def usage(  # noqa: PLR0917 - one parameter per flag, as typer wants
    meter: Annotated[str, typer.Argument(help="The Meter's name.", show_default=False)],
    subject: Annotated[
        list[str] | None,
        typer.Option("--subject", "-s", help="Only this subject (repeatable); rows per subject."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="Start, RFC 3339, inclusive (e.g. 2024-05-01T00:00:00Z)."),
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="End, RFC 3339, exclusive.")] = None,
    window: Annotated[
        WindowSize | None,
        typer.Option(
            "--window",
            "-w",
            case_sensitive=False,
            help="Rows per window; default: one row for the whole range.",
        ),
    ] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", "-g", help="A groupBy name of the Meter, or subject."),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="KEY=VALUE: only rows of this group value (repeatable)."),
    ] = None,
    zone: Annotated[
        str, typer.Option("--time-zone", "-z", help="IANA time zone of the windows.")
    ] = "UTC",
    output: Annotated[
        Output, typer.Option("--output", "-o", case_sensitive=False, help="How to print.")
    ] = Output.TABLE,
    namespace: Namespace = None,
    api_url: ApiUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show a Meter's usage: per window, subject and group, exact."""
    try:
        params = query_params(
            subject or [], start, end, window, group_by or [], filters or [], zone
        )
    except ValueError as error:
        fail(COMMAND, str(error), 2)
    path = api_path(namespace, f"meters/{quote(meter, safe='')}/query")
    accept = "text/csv" if output is Output.CSV else "application/json"
    body = run(COMMAND, _query(api_url, token, path, params, accept))
    if output is not Output.TABLE:
        sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
        sys.stdout.flush()
        return
    from kmeter.commands import render  # noqa: PLC0415 - rich only when a table is printed

    document = render.parse_exact(body)
    out = render.console()
    if not document.get("data"):
        out.print(f"No usage of {meter} in this range.")
        return
    out.print(render.usage_table(document, time_zone(zone), group_by or []))


async def _query(
    api_url: str, token: str | None, path: str, params: list[tuple[str, str]], accept: str
) -> bytes:
    from kmeter.client.usage_api import UsageApi  # noqa: PLC0415 - aiohttp only when it runs

    async with UsageApi(api_url, token) as api:
        return (await api.get(path, params=params, accept=accept)).body
