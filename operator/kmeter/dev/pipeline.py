"""The local log folded into window totals, by the worker's own pure core.

For every Meter, ``kmeter dev`` keeps what a worker keeps for one ingest partition — a
:class:`~kmeter.worker.partition.PartitionState` — and feeds it batches of log records through
:func:`~kmeter.worker.partition.plan_batch`, the same function the Kafka worker calls: decoding
(:mod:`kmeter.worker.records`), type filter, retention, deduplication by (``source``, ``id``),
extraction, windows and aggregation (:mod:`kmeter.core.fold`). The local log is to the fold what
partition 0 of ``kmeter.<ns>.events`` is to a worker; the records are the log's, wrapped in the
shape the worker reads (:class:`~kmeter.worker.records.IngestRecord`): the fold does not know
which log it reads.

The output records a batch produces — the compacted window totals a worker writes to
``kmeter.<ns>.meter.<name>`` — go straight into the usage API's
:class:`~kmeter.api.store.MeterStore`, decoded with :func:`~kmeter.core.fold.decode_total` and
keyed as the materializer keys them: queries are then answered by the API's own code.

**Restart: the log is the system of record.** Nothing but the log is kept on disk: at start
the whole log is read again and folded in batches (:meth:`Pipeline.replay`), which rebuilds the
windows and the deduplicator exactly — every record is folded once per run, so nothing is
counted twice, and every fsynced record is there, so nothing is lost. Start-up takes about
20 µs per event and Meter (measured: 200,000 events, two Meters, 8 s on a 2-core machine).
Because a batch's time is its newest record's append time, the replay decides retention and
deduplication horizons like the first run did, except possibly for an event within one
batch's time span of such a boundary.

**Dead letters.** Records that cannot be decoded and events the fold refuses (too old, a bad
value) are appended to the namespace's dead-letter log with the same reason the worker puts in
its ``kmeter-reason`` header (one JSON object per letter: ``meter``, ``reason``, ``offset``,
``index``, ``key``, the original ``value``). Since a replay meets the same records again, each
Meter's letters are written in (offset, index) order and a replay writes only those after the
last one the dead-letter log already holds.

**Quotas** (:attr:`Pipeline.observers`): callables run for every batch a Meter folds, before it
is applied; quota evaluation hooks in there (:mod:`kmeter.dev.quotas`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from kmeter import topics
from kmeter.api.materializer import MeterView, views_in_namespace
from kmeter.api.meters import MeterInfo
from kmeter.api.store import MeterStore
from kmeter.core.dedup import DEFAULT_HORIZON, DEFAULT_MAX_ENTRIES, Deduplicator
from kmeter.core.fold import FoldState, decode_total
from kmeter.dev.log import LogRecord
from kmeter.worker.partition import BatchWork, PartitionState, plan_batch
from kmeter.worker.records import DeadLetter

__all__ = ["REPLAY_BATCH", "LocalMeter", "Pipeline", "dead_letter_record"]

log = logging.getLogger("kmeter.dev")

REPLAY_BATCH = 20_000
"""Records per batch when the log is read again at start (the worker's ``--max-batch``)."""

DeadLetterSink = Callable[[str, list[tuple[bytes | None, bytes]]], None]
"""(namespace, dead-letter records) → appended to that namespace's dead-letter log."""


class _Record(NamedTuple):
    """A local log record in the shape the worker reads (an ``IngestRecord``)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass
class LocalMeter:
    """One Meter's fold state and the store the API reads."""

    info: MeterInfo
    state: PartitionState
    view: MeterView
    retention: timedelta
    counted: int = 0
    dead_lettered: int = 0
    dead_mark: tuple[int, int] = (-1, -1)
    """The (offset, index) of the last dead letter written for this Meter; replays skip up
    to it. ``index`` is -1 for a whole record."""

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def fold_state(self) -> FoldState:
        return self.state.fold_state


def dead_letter_record(meter: str, letter: DeadLetter) -> bytes:
    """The dead-letter log's value for a worker :class:`DeadLetter`."""
    headers = {name: value.decode() for name, value in letter.headers}
    document: dict[str, Any] = {
        "meter": meter,
        "reason": letter.reason,
        "offset": int(headers["kmeter-offset"]),
        "index": int(headers["kmeter-index"]) if "kmeter-index" in headers else None,
        "key": None if letter.key is None else letter.key.decode(errors="replace"),
    }
    try:
        document["value"] = letter.value.decode()
    except UnicodeDecodeError:
        document["valueBase64"] = base64.b64encode(letter.value).decode()
    return orjson.dumps(document)


def _position(letter: DeadLetter) -> tuple[int, int]:
    headers = dict(letter.headers)
    index = headers.get("kmeter-index")
    return int(headers["kmeter-offset"]), -1 if index is None else int(index)


@dataclass
class Pipeline:
    """Every Meter of every namespace, folded from the local logs; the API's
    :class:`~kmeter.api.backends.MeterViews`."""

    meters: list[MeterInfo]
    dead_letters: DeadLetterSink
    dedup_horizon: timedelta = DEFAULT_HORIZON
    dedup_max_entries: int = DEFAULT_MAX_ENTRIES
    observers: list[Callable[[str, LocalMeter, BatchWork], None]] = field(default_factory=list)
    """Called for every batch of every Meter after it is planned, before it is applied:
    ``meter.fold_state.windows`` is the state before the batch, ``work.result.changed`` the
    windows it changed (what quota evaluation needs)."""
    by_namespace: dict[str, list[LocalMeter]] = field(default_factory=dict)
    views: dict[tuple[str, str], MeterView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset(self.meters)

    def reset(self, meters: list[MeterInfo]) -> None:
        """Start again from nothing with ``meters`` (then replay each namespace's log)."""
        self.meters = meters
        self.by_namespace = {}
        self.views = {}
        for info in meters:
            spec = info.spec
            view = MeterView(info, MeterStore(spec.aggregation, spec.window_size, spec.group_names))
            view.caught_up.set()
            state = PartitionState(
                0,
                FoldState(spec, dedup=Deduplicator(self.dedup_horizon, self.dedup_max_entries)),
            )
            meter = LocalMeter(info, state, view, info.resource.spec.topic.retention_period)
            self.by_namespace.setdefault(info.namespace, []).append(meter)
            self.views[info.key] = view

    # --- MeterViews -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return True  # the API starts after the replay

    def get(self, namespace: str, name: str) -> MeterView | None:
        return self.views.get((namespace, name))

    def in_namespace(self, namespace: str) -> list[MeterView]:
        return views_in_namespace(self.views, namespace)

    def meter(self, namespace: str, name: str) -> LocalMeter | None:
        for meter in self.by_namespace.get(namespace, []):
            if meter.name == name:
                return meter
        return None

    # --- folding --------------------------------------------------------------------------

    def restore_marks(self, namespace: str, letters: Iterable[LogRecord]) -> None:
        """Read the namespace's dead-letter log: where each Meter's letters end."""
        meters = {meter.name: meter for meter in self.by_namespace.get(namespace, [])}
        for record in letters:
            try:
                document = orjson.loads(record.value)
                meter = meters.get(document["meter"])
                index = document.get("index")
                mark = (int(document["offset"]), -1 if index is None else int(index))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if meter is not None and mark > meter.dead_mark:
                meter.dead_mark = mark

    def replay(self, namespace: str, records: Iterable[LogRecord]) -> int:
        """Fold the namespace's whole log at start; returns how many records were read."""
        read = 0
        for chunk in _chunks(records, REPLAY_BATCH):
            self.fold(namespace, chunk)
            read += len(chunk)
        return read

    def fold(self, namespace: str, records: Sequence[LogRecord]) -> None:
        """Fold a batch of the namespace's log records (in offset order) into every Meter."""
        meters = self.by_namespace.get(namespace)
        if not meters or not records:
            return
        topic = topics.ingest_topic(namespace)
        batch = [_Record(topic, 0, r.offset, r.timestamp, r.key, r.value) for r in records]
        wall_now = datetime.now(UTC)
        for meter in meters:
            work = plan_batch(
                meter.name, meter.state, batch, retention=meter.retention, wall_now=wall_now
            )
            for observer in self.observers:
                observer(namespace, meter, work)
            meter.state.commit(work, meter.retention)
            self._publish(meter, work)
            self._dead_letters(namespace, meter, work.dead_letters)

    @staticmethod
    def _publish(meter: LocalMeter, work: BatchWork) -> None:
        store = meter.view.store
        for record in work.result.records:
            store.put(b"0:" + record.key, decode_total(record.value))
        meter.counted += work.result.counts.counted

    def _dead_letters(self, namespace: str, meter: LocalMeter, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        fresh: list[tuple[bytes | None, bytes]] = []
        for position, letter in sorted(
            ((_position(letter), letter) for letter in letters), key=lambda item: item[0]
        ):
            if position > meter.dead_mark:
                fresh.append((meter.name.encode(), dead_letter_record(meter.name, letter)))
                meter.dead_mark = position
        meter.dead_lettered += len(letters)
        if fresh:
            self.dead_letters(namespace, fresh)
            log.warning(
                "meter %s/%s: %d events dead-lettered (the first: %s)",
                namespace,
                meter.name,
                len(fresh),
                letters[0].reason,
            )


def _chunks(records: Iterable[LogRecord], size: int) -> Iterator[list[LogRecord]]:
    chunk: list[LogRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
