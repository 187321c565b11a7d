"""What the worker reads and writes, as Kafka record bytes (pure: no I/O).

**Ingest records** hold one CloudEvents JSON object each (the usage API writes them so, keyed by
subject). A record holding a JSON array of events is accepted too: each element is an event.
An event without ``time`` gets the record's timestamp (the log's time, the same on every
replay). A record that cannot be decoded — not JSON, not an object or array, an invalid
event, a tombstone — becomes a :class:`DeadLetter`; the worker never stops on input.

**Dead letters** go to the namespace's dead-letter topic. The value is the original record
value, byte for byte (so it can be fixed and replayed), the key the original key; the headers
say why and where from:

* ``kmeter-reason``: every problem, ``; ``-separated (``subject: must be a non-empty ...``);
* ``kmeter-meter``: the Meter whose worker refused it (the topic is shared by the namespace);
* ``kmeter-topic``, ``kmeter-partition``, ``kmeter-offset``: where the record was read;
* ``kmeter-index``: for a record holding an array, the position of the refused event in it.

An undecodable record is refused by the worker of *every* Meter of the namespace (none can tell
its type), so it appears once per Meter, each with its ``kmeter-meter``.

**The dedup changelog** (``kmeter.<ns>.dedup.<meter>``, partition *p* for ingest partition *p*)
holds the (source, id) pairs the fold counted, written in the same transaction as the window
totals: ``{"at": "<the deduplicator's clock>", "pairs": [[source, id], ...]}`` in records of at
most :data:`DEDUP_CHUNK_BYTES` of pairs, unkeyed. A restarted worker replays the pairs within
the horizon into a :class:`~kmeter.core.dedup.Deduplicator`. One record per batch rather than
one per event keeps the changelog's cost to a few percent of the worker's produce bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import orjson

from kmeter import topics
from kmeter.core.events import (
    Batch,
    InvalidEventError,
    UsageEvent,
    decode_event,
    decode_events,
    format_timestamp,
    parse_timestamp,
)

DEDUP_CHUNK_BYTES = 256 * 1024
"""The most bytes of (source, id) text in one dedup changelog record (Kafka's default limit on
a record is 1 MiB)."""

Headers = list[tuple[str, bytes]]


class IngestRecord(Protocol):
    """The part of aiokafka's ``ConsumerRecord`` the worker reads."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class DeadLetter(NamedTuple):
    """A record for the dead-letter topic."""

    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def reason(self) -> str:
        """The ``kmeter-reason`` header, decoded."""
        return dict(self.headers)["kmeter-reason"].decode()


class Origin(NamedTuple):
    """Where a decoded event came from: its record and, for an array record, its index."""

    record: IngestRecord
    element: int | None


class Decoded(NamedTuple):
    """The events of a batch of ingest records, in log order, and the records refused."""

    events: list[UsageEvent]
    origins: list[Origin]
    """``origins[i]`` is where ``events[i]`` came from."""
    dead_letters: list[DeadLetter]


def transactional_id(namespace: str, meter: str, partition: int) -> str:
    """The transactional id of the producer writing what ingest ``partition`` gives ``meter``.

    Stable across processes and pods: whoever takes partition *p* over fences the previous
    owner's producer (see docs/guarantees.md). Unambiguous although Meter names may contain
    dots: the part after the last dot is always the partition.
    """
    return f"{topics.meter_consumer_group(namespace, meter)}.{partition}"


def record_time(timestamp_ms: int) -> datetime:
    """A Kafka record timestamp (milliseconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def dead_letter(
    meter: str, record: IngestRecord, reason: str, index: int | None = None
) -> DeadLetter:
    """A dead letter for ``record`` (or its event at ``index``), refused for ``reason``."""
    headers: Headers = [
        ("kmeter-reason", reason.encode()),
        ("kmeter-meter", meter.encode()),
        ("kmeter-topic", record.topic.encode()),
        ("kmeter-partition", str(record.partition).encode()),
        ("kmeter-offset", str(record.offset).encode()),
    ]
    if index is not None:
        headers.append(("kmeter-index", str(index).encode()))
    return DeadLetter(record.key, record.value or b"", headers)


def _is_array(value: bytes) -> bool:
    first = value[:1]
    if first in (b" ", b"\t", b"\n", b"\r"):
        first = value.lstrip()[:1]
    return first == b"["


def decode_records(meter: str, records: Sequence[IngestRecord]) -> Decoded:
    """Decode ingest records into events; whatever cannot be decoded becomes a dead letter."""
    events: list[UsageEvent] = []
    origins: list[Origin] = []
    dead: list[DeadLetter] = []
    append_event = events.append
    append_origin = origins.append
    times: dict[int, datetime] = {}
    for record in records:
        value = record.value
        if value is None:
            dead.append(dead_letter(meter, record, "body: the record has no value (a tombstone)"))
            continue
        stamp = record.timestamp
        ingest_time = times.get(stamp)
        if ingest_time is None:
            ingest_time = times[stamp] = record_time(stamp)
        try:
            if value[:1] == b"{" or not _is_array(value):
                append_event(decode_event(value, ingest_time=ingest_time))
                append_origin(Origin(record, None))
                continue
            batch: Batch = decode_events(value, ingest_time=ingest_time)
        except InvalidEventError as error:
            dead.append(dead_letter(meter, record, str(error)))
            continue
        except Exception as error:
            dead.append(dead_letter(meter, record, f"body: cannot be decoded: {error!r}"))
            continue
        for index, event in zip(batch.indices, batch.events, strict=True):
            append_event(event)
            append_origin(Origin(record, index))
        for index, problems in sorted(batch.problems.items()):
            reason = "; ".join(str(problem) for problem in problems)
            dead.append(dead_letter(meter, record, reason, index))
    return Decoded(events, origins, dead)


def encode_dedup(at: datetime, pairs: Sequence[tuple[str, str]]) -> list[bytes]:
    """Dedup changelog values for ``pairs`` accepted at clock ``at``, in chunks."""
    stamp = format_timestamp(at)
    values = []
    start = size = 0
    for position, (source, event_id) in enumerate(pairs):
        size += len(source) + len(event_id) + 8
        if size > DEDUP_CHUNK_BYTES:
            values.append(_dedup_value(stamp, pairs[start:position]))
            start, size = position, len(source) + len(event_id) + 8
    if start < len(pairs):
        values.append(_dedup_value(stamp, pairs[start:]))
    return values


def _dedup_value(stamp: str, pairs: Sequence[tuple[str, str]]) -> bytes:
    return orjson.dumps({"at": stamp, "pairs": pairs})


def decode_dedup(value: bytes) -> tuple[datetime, list[tuple[str, str]]]:
    """Read a dedup changelog value back; raises ValueError when it is not one."""
    try:
        obj: Any = orjson.loads(value)
        at = parse_timestamp(obj["at"])
        pairs = [(str(source), str(event_id)) for source, event_id in obj["pairs"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a dedup changelog record: {error!r}") from None
    return at, pairs


def dedup_entries(values: Iterable[bytes]) -> Iterator[tuple[str, str, datetime]]:
    """The (source, id, accepted at) entries of changelog values, in order, for
    :meth:`~kmeter.core.dedup.Deduplicator.restore`."""
    for value in values:
        at, pairs = decode_dedup(value)
        for source, event_id in pairs:
            yield source, event_id, at
