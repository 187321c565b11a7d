"""``kmeter meters`` and ``kmeter quotas``: the namespace's Meters and Quotas at a glance.

Both read the usage API (``GET /api/v1/meters``, ``GET /api/v1/quotas``) with the token's
namespace, so they show what that token may see — the same view billing code has. ``--output
json`` prints the API's answer unchanged.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

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

OutputOption = Annotated[
    Output,
    typer.Option(
        "--output", "-o", case_sensitive=False, help="table or json (csv: not for this command)."
    ),
]


async def _get(api_url: str, token: str | None, path: str) -> bytes:
    from kmeter.client.usage_api import UsageApi  # noqa: PLC0415 - aiohttp only when it runs

    async with UsageApi(api_url, token) as api:
        return (await api.get(path, accept="application/json")).body


def _print_json(body: bytes) -> None:
    sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
    sys.stdout.flush()


def _items(document: Any, key: str | None) -> list[dict[str, Any]]:
    items = document.get(key) if key is not None and isinstance(document, dict) else document
    return [item for item in items or [] if isinstance(item, dict)]


def _show(
    resource: str,
    key: str | None,
    output: Output,
    *,
    namespace: str | None,
    api_url: str,
    token: str | None,
) -> None:
    """``kmeter <resource>``: GET it from the usage API, print it as JSON or as a table."""
    if output is Output.CSV:
        fail(resource, "--output: choose table or json", 2)
    body = run(resource, _get(api_url, token, api_path(namespace, resource)))
    if output is Output.JSON:
        _print_json(body)
        return
    from kmeter.commands import render  # noqa: PLC0415 - rich only when a table is printed

    found = _items(render.parse_exact(body), key)
    out = render.console()
    if not found:
        out.print(f"No {resource.capitalize()}.")
        return
    table = render.meters_table if resource == "meters" else render.quotas_table
    out.print(table(found))


def meters(
    output: OutputOption = Output.TABLE,
    namespace: Namespace = None,
    api_url: ApiUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List the Meters: event type, aggregation, value, groups, window."""
    _show("meters", None, output, namespace=namespace, api_url=api_url, token=token)


def quotas(
    output: OutputOption = Output.TABLE,
    namespace: Namespace = None,
    api_url: ApiUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List the Quotas: limit, period, enforcement, and how many subjects are over or near."""
    _show("quotas", "items", output, namespace=namespace, api_url=api_url, token=token)
