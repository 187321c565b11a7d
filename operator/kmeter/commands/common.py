"""What the usage-API commands share: ``--api-url``, ``--token``, ``--namespace``, ``--output``,
and failing with one line on standard error.

Errors are one line, ``kmeter <command>: <reason>``, with exit code 2 for bad usage (a flag, an
argument, an unreadable file: nothing was sent) and 1 for a failure (the API unreachable or
refusing). Typer's own usage errors (a missing argument, an unknown option) keep Typer's format
and exit code 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import quote

import typer

from kmeter.client import DEFAULT_URL

T = TypeVar("T")

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url",
        envvar="KMETER_API_URL",
        help="The usage API (kmeter api listens on port 8888).",
        show_default=True,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="KMETER_API_TOKEN",
        help="Bearer token of the usage API (a kmeter.io/api-token Secret's token).",
        show_default=False,
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="The namespace, for a token valid for several; default: the token's namespace.",
        show_default=False,
    ),
]

__all__ = ["DEFAULT_URL", "ApiUrl", "Namespace", "Output", "Token", "api_path", "fail", "run"]


class Output(StrEnum):
    """How a command prints its answer."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def api_path(namespace: str | None, tail: str) -> str:
    """``/api/v1/<tail>``, or ``/api/v1/namespaces/<namespace>/<tail>``."""
    if namespace is None:
        return f"/api/v1/{tail}"
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/{tail}"


def fail(command: str, message: str, code: int = 1) -> NoReturn:
    """Print ``kmeter <command>: <message>`` on standard error and exit with ``code``."""
    typer.echo(f"kmeter {command}: {message}", err=True)
    raise typer.Exit(code)


def run(command: str, work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a :class:`ClientError` becomes one line and its exit code."""
    from kmeter.client.usage_api import ClientError  # noqa: PLC0415 - aiohttp only when it runs

    try:
        return asyncio.run(work)
    except ClientError as error:
        fail(command, str(error), error.exit_code)
