"""``kmeter events send FILE|-``: a JSON Lines file of usage events into the usage API.

Lines are validated as they are read (:mod:`kmeter.client.event_lines`), the valid ones sent in
batches (:mod:`kmeter.client.sender`), and at the end one summary line says how many events
were sent; each rejected line is listed on standard error as ``line N: reason``. The exit code
is 0 when every line was sent, 1 when some were rejected or sending stopped (the summary still
says what was sent), 2 for bad usage (no such file). A progress bar (on standard error) shows
for large files and standard input when standard error is a terminal.

The file is read in the event loop's thread, a batch at a time, between requests: the command
does nothing else meanwhile, and local reads are short next to a request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from kmeter.client.event_lines import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_EVENTS, MAX_BODY_BYTES
from kmeter.commands.common import DEFAULT_URL, ApiUrl, Namespace, Token, api_path, fail, run

if TYPE_CHECKING:
    from rich.console import Console

    from kmeter.client.event_lines import Line, Rejected
    from kmeter.client.sender import Sender, SendReport, SendStopped

COMMAND = "events send"
PROGRESS_FROM_BYTES = 1024 * 1024
"""Inputs at least this large (and standard input) get a progress bar on a terminal."""

app = typer.Typer(help="Send usage events to the usage API.", no_args_is_help=True)


class CountedLines:
    """The lines of a stream, counted as they pass; a read error fails the command."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.stream = stream
        self.name = name
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for line in self.stream:
                self.count += 1
                yield line
        except OSError as error:
            fail(COMMAND, f"cannot read {self.name}: {error.strerror or error}", 2)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def summary(report: SendReport, lines_read: int) -> str:
    """The one-line outcome, e.g. ``sent 998 events in 2 requests; 2 of 1,000 lines rejected``."""
    text = f"sent {_count(report.sent, 'event')} in {_count(report.requests, 'request')}"
    if report.retries:
        text += f" ({report.retries:,} retried)"
    if report.rejected:
        text += (
            f"; {len(report.rejected):,} of {lines_read:,} lines rejected "
            "(listed on standard error)"
        )
    return text


@contextmanager
def progress_bar(
    console: Console, total: int | None, show: bool
) -> Iterator[Callable[[int], None]]:
    """A function taking the bytes read so far, drawing a bar on ``console`` when ``show``; where
    a bar cannot be drawn (not a terminal, or TERM=dumb, with ``--progress``), a line a second."""
    if not show:
        yield lambda _: None
        return
    if not console.is_terminal or console.is_dumb_terminal:
        lines = _ProgressLines(total)
        yield lines
        lines.finish()
        return
    from rich.progress import (  # noqa: PLC0415 - only on a terminal
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("sending"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("send", total=total)
        yield lambda done: bar.update(task, completed=done)


class _ProgressLines:
    """Progress as plain lines on standard error, which a log keeps: at most one a second, and
    the last."""

    def __init__(self, total: int | None) -> None:
        self.of = f" of {total:,}" if total is not None else ""
        self.printed_at = float("-inf")
        self.pending: int | None = None

    def __call__(self, done: int) -> None:
        if time.monotonic() - self.printed_at >= 1.0:
            self._line(done)
        else:
            self.pending = done

    def finish(self) -> None:
        if self.pending is not None:
            self._line(self.pending)

    def _line(self, done: int) -> None:
        sys.stderr.write(f"sending: {done:,}{self.of} bytes read\n")
        self.printed_at, self.pending = time.monotonic(), None


@app.command("send")
def send(  # noqa: PLR0917 - one parameter per flag, as typer wants
    file: Annotated[
        str,
        typer.Argument(
            help="A JSON Lines file, one CloudEvents JSON object per line; - for standard input.",
            show_default=False,
        ),
    ],
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=10_000, help="Events per request.")
    ] = DEFAULT_BATCH_EVENTS,
    batch_bytes: Annotated[
        int,
        typer.Option(
            "--batch-bytes", min=1024, max=MAX_BODY_BYTES, help="Largest request body, in bytes."
        ),
    ] = DEFAULT_BATCH_BYTES,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            min=1,
            max=16,
            help="Requests in flight at once; 1 sends in the file's order.",
        ),
    ] = 4,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Show a progress bar; default: on a terminal, for inputs over 1 MiB or stdin.",
            show_default=False,
        ),
    ] = None,
    namespace: Namespace = None,
    api_url: ApiUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Send usage events from a JSON Lines file (or -) to the usage API, in batches."""
    from kmeter.client.event_lines import parse_lines  # noqa: PLC0415 - light --help
    from kmeter.client.sender import Sender  # noqa: PLC0415
    from kmeter.client.usage_api import UsageApi  # noqa: PLC0415
    from kmeter.commands.render import console  # noqa: PLC0415

    with ExitStack() as stack:
        stream: IO[bytes]
        if file == "-":
            stream, size, name = sys.stdin.buffer, None, "standard input"
        else:
            try:
                stream = stack.enter_context(Path(file).open("rb"))
                size = Path(file).stat().st_size
            except OSError as error:
                fail(COMMAND, f"cannot read {file}: {error.strerror or error}", 2)
            name = file
        err = console(stderr=True)
        show = err.is_terminal and (size is None or size >= PROGRESS_FROM_BYTES)
        lines = CountedLines(stream, name)
        items = parse_lines(lines, ingest_time=datetime.now(UTC))
        with progress_bar(err, size, show if progress is None else progress) as advance:
            sender = Sender(
                UsageApi(api_url, token),
                max_events=batch_size,
                max_bytes=batch_bytes,
                progress=advance,
                path=api_path(namespace, "events"),
                concurrency=concurrency,
            )
            report, stopped = run(COMMAND, _send(sender, items))
    for reject in report.sorted_rejects():
        typer.echo(f"line {reject.number}: {reject.reason}", err=True)
    typer.echo(summary(report, lines.count))
    if stopped is not None:
        fail(COMMAND, str(stopped), stopped.exit_code)
    if report.rejected:
        raise typer.Exit(1)


async def _send(
    sender: Sender, items: Iterable[Line | Rejected]
) -> tuple[SendReport, SendStopped | None]:
    from kmeter.client.sender import SendStopped  # noqa: PLC0415

    try:
        async with sender.api:
            return await sender.send(items), None
    except SendStopped as stopped:
        return stopped.report, stopped
