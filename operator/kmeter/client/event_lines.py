"""``kmeter events send``'s input: a JSON Lines file of CloudEvents, validated and batched.

The file holds one CloudEvents JSON object per line (JSON Lines / NDJSON); blank lines are
skipped. Each line is validated by the same codec the usage API uses
(:func:`kmeter.core.events.decode_event`), so a line the API would refuse is known — with its
line number and reason — before anything is sent, and never takes valid events down with it
(the API refuses a whole batch when one event of it is invalid). A line that passes is sent as
its **original bytes**, so numbers keep their exact text.

Batches (:func:`batches`) keep the lines' order, lose none, and respect two limits: a number of
events, and a body size in bytes (the API's body limit is 4 MiB). A single line larger than the
byte limit can never be sent and is rejected here (:func:`check_size`).

This module does no I/O: it takes lines as bytes (the command reads the file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from kmeter.core.events import InvalidEventError, Problem, decode_event

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The usage API's default request body limit (``kmeter api``, docs/api.md)."""

DEFAULT_BATCH_EVENTS = 500
DEFAULT_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Line:
    """A valid event: its 1-based line number, its bytes (no line end), and where it ends in the
    input (bytes read so far, for progress)."""

    number: int
    raw: bytes
    end: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that was not sent, and why."""

    number: int
    reason: str
    end: int = 0


def describe_problems(problems: Iterable[Problem]) -> str:
    """``"subject: must be ...; time: ..."``; a whole-line problem without the field ``body``."""
    return "; ".join(p.reason if p.field == "body" else str(p) for p in problems)


def parse_lines(lines: Iterable[bytes], *, ingest_time: datetime) -> Iterator[Line | Rejected]:
    """Number, strip and validate the lines; blank lines give nothing.

    ``ingest_time`` stands in for an absent ``time`` while validating (the API fills in its own).
    """
    end = 0
    for number, line in enumerate(lines, start=1):
        end += len(line)
        raw = line.strip()
        if not raw:
            continue
        if raw[:1] != b"{":
            reason = (
                "a JSON array: put one event per line"
                if raw[:1] == b"["
                else "not a JSON object: expected one CloudEvents JSON object per line"
            )
            yield Rejected(number, reason, end)
            continue
        try:
            decode_event(raw, ingest_time=ingest_time)
        except InvalidEventError as error:
            yield Rejected(number, describe_problems(error.problems), end)
        else:
            yield Line(number, raw, end)


def body_size(count: int, raw_bytes: int) -> int:
    """The size of a JSON array body of ``count`` events of ``raw_bytes`` bytes in all."""
    return 2 + raw_bytes + max(0, count - 1)


def check_size(item: Line | Rejected, max_bytes: int) -> Line | Rejected:
    """Reject a line too large to be sent even alone."""
    if isinstance(item, Line) and body_size(1, len(item.raw)) > max_bytes:
        return Rejected(
            item.number,
            f"the event is {len(item.raw):,} bytes, more than the {max_bytes:,} bytes a request "
            "may carry",
            item.end,
        )
    return item


def batches(lines: Iterable[Line], *, max_events: int, max_bytes: int) -> Iterator[list[Line]]:
    """Consecutive runs of ``lines``, each at most ``max_events`` long and, as a JSON array body,
    at most ``max_bytes`` — except a single line larger than that, which is a batch of its own."""
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    batch: list[Line] = []
    size = 0
    for line in lines:
        if batch and (
            len(batch) == max_events or body_size(len(batch) + 1, size + len(line.raw)) > max_bytes
        ):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line.raw)
    if batch:
        yield batch


def batch_body(lines: Iterable[Line]) -> bytes:
    """The JSON array of the lines' events, as sent (``application/cloudevents-batch+json``)."""
    return b"[" + b",".join(line.raw for line in lines) + b"]"
