"""The aggregation worker's pure core: (window state, events) → (changes, output records).

One call of :func:`fold` processes one batch of events for one Meter::

    state = FoldState(MeterSpec.create(event_type="llm.completion", aggregation="SUM",
                                       value_property="$.usage.total_tokens"))
    result = fold(state, events, now=batch_log_time, retention=timedelta(days=400))
    producer.send_all(result.records)          # compacted topic kmeter.<ns>.meter.<name>
    producer.send_all(dead_letters(result.rejects))
    ...commit the Kafka transaction with the consumed offsets...
    state.apply(result)                        # only once the transaction committed

For each event, in order:

1. **type filter** — events of another ``type`` are skipped silently (counted in
   ``other_type``): they belong to other meters of the namespace.
2. **retention** — an event whose ``time`` is before ``now - retention`` is rejected (its window
   may already be gone from the compacted topic, so counting it would corrupt history).
3. **dedup** — an event whose (``source``, ``id``) was accepted before, in an earlier batch
   within the deduplication horizon or earlier in this batch, is skipped (``duplicates``).
4. **extraction** — the value (``valueProperty``) and the ``groupBy`` labels are read from
   ``data``; a missing or malformed value rejects the event with a reason
   (``$.usage.total_tokens: expected a number or numeric string, got true``). A missing or null
   ``groupBy`` value is the ``None`` group, not an error (see :mod:`kmeter.core.jsonpath`).
5. **fold** — the value is added into the state of its storage window, keyed by
   (``subject``, group labels in the order of the sorted ``groupBy`` names, window start in epoch
   seconds): a :data:`WindowKey`.

**Purity and transactions.** :func:`fold` does not modify ``state``: it returns a
:class:`FoldResult` with the new states of the windows it changed (old state merged with the
batch), the output records, the rejects, and the (source, id) pairs it accepted.
:meth:`FoldState.apply` commits these into the state. A worker whose Kafka transaction aborts
simply does not apply the result and refolds the batch: nothing is lost, nothing doubled. ``now``
is the time the caller decides, e.g. the log time of the batch, so a replay gives the same result.

**Output records** are one per changed window: ``key`` is deterministic bytes (JSON with sorted
keys) of subject, group and window start, so Kafka compaction keeps the latest total of each
window; ``value`` is JSON with the window, the aggregation state (:meth:`Aggregator.dump`) and the
result as a decimal string. :func:`decode_total` reads a value back (the usage API materializes
the topic with it; a restarted worker reloads its state with :meth:`FoldState.load`).

**Rejects** carry the event's position in the batch, the event and the reason, for the
dead-letter topic.

**Memory.** :meth:`FoldState.prune` drops windows that ended before the retention horizon (late
events for them are rejected anyway), so the state holds about ``retention / windowSize`` windows
per subject and group.

**Order.** Apply each result before folding the next batch: deduplication across batches reads
the pairs the applied results recorded. Applying the same result twice is harmless.

Speed: the loop does a few dict operations per event and builds no per-event objects besides the
window key and the (source, id) pair; the dedup key is built once per event; a SUM of int values
adds Python ints per window and makes one Decimal per window at the end. Measured on a 2-core
machine: ~2.5 µs per event folded and applied (SUM, one ``groupBy``, 10,000-event batches), plus
~3 µs to decode it (:mod:`kmeter.core.events`), plus ~5 µs per output record (one per changed
window per batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, NamedTuple

from kmeter.core import exactjson
from kmeter.core.aggregation import Aggregation, Aggregator, ValueKind, aggregator_for
from kmeter.core.decimals import MAX_INTEGER_DIGITS, format_decimal
from kmeter.core.dedup import Deduplicator
from kmeter.core.events import UsageEvent, format_timestamp, parse_timestamp
from kmeter.core.jsonpath import (
    ExtractionError,
    Path,
    compile_path,
    distinct_at,
    label_at,
    number_at,
)
from kmeter.core.windows import STORAGE_SIZES, WindowSize, storage_seconds

__all__ = [
    "FoldCounts",
    "FoldResult",
    "FoldState",
    "MeterSpec",
    "OutputRecord",
    "Reject",
    "WindowKey",
    "WindowTotal",
    "decode_total",
    "fold",
    "record_key",
]

WindowKey = tuple[str, tuple[str | None, ...], int]
"""(subject, group labels in sorted ``groupBy`` name order, window start in epoch seconds)."""


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """What the fold needs to know about a Meter. Build it with :meth:`create`."""

    event_type: str
    aggregation: Aggregation
    window_size: WindowSize
    value_property: Path | None
    group_by: tuple[tuple[str, Path], ...]
    """``(name, path)`` pairs, sorted by name: the order of labels in a :data:`WindowKey`."""

    @classmethod
    def create(
        cls,
        *,
        event_type: str,
        aggregation: Aggregation | str,
        window_size: WindowSize | str = WindowSize.MINUTE,
        value_property: str | None = None,
        group_by: Mapping[str, str] | None = None,
    ) -> MeterSpec:
        """Validate and compile a Meter's fields; raises ValueError with a reason.

        ``value_property`` is required for every aggregation except COUNT, and refused for COUNT
        (it counts events; a value would be ignored, which hides mistakes).
        """
        if not isinstance(event_type, str) or not event_type:
            raise ValueError("eventType must be a non-empty string")
        kind = aggregator_for(aggregation)
        size = WindowSize(window_size)
        if size not in STORAGE_SIZES:
            raise ValueError(f"windowSize {size} cannot be stored; use MINUTE, HOUR or DAY")
        path = None
        if kind.value_kind is ValueKind.NONE:
            if value_property is not None:
                raise ValueError(f"{kind.aggregation} counts events; remove valueProperty")
        elif value_property is None:
            raise ValueError(f"{kind.aggregation} needs a valueProperty, e.g. $.tokens")
        else:
            path = compile_path(value_property)
        groups = []
        for name, expression in sorted((group_by or {}).items()):
            if not isinstance(name, str) or not name:
                raise ValueError("groupBy names must be non-empty strings")
            groups.append((name, compile_path(expression)))
        return cls(event_type, kind.aggregation, size, path, tuple(groups))

    @property
    def group_names(self) -> tuple[str, ...]:
        """The ``groupBy`` names in key order."""
        return tuple(name for name, _ in self.group_by)


class OutputRecord(NamedTuple):
    """A record for the compacted output topic."""

    key: bytes
    value: bytes


class Reject(NamedTuple):
    """An event the fold refused, for the dead-letter topic: its input position and why."""

    position: int
    event: UsageEvent
    reason: str


@dataclass(frozen=True, slots=True)
class FoldCounts:
    """What happened to the events of a batch; the four numbers add up to the batch size."""

    counted: int = 0
    duplicates: int = 0
    other_type: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class FoldResult:
    """The outcome of :func:`fold`; apply it with :meth:`FoldState.apply` once it is durable."""

    now: datetime
    changed: Mapping[WindowKey, Any]
    """The new (merged) state of every window the batch changed."""
    records: tuple[OutputRecord, ...]
    rejects: tuple[Reject, ...]
    accepted: tuple[tuple[str, str], ...]
    """The (source, id) pairs counted, for deduplication."""
    counts: FoldCounts


@dataclass(frozen=True, slots=True)
class WindowTotal:
    """The total of one storage window, as written to (and read from) the output topic."""

    subject: str
    group: Mapping[str, str | None]
    window_start: datetime
    window_size: WindowSize
    aggregation: Aggregation
    state: Any

    @property
    def window_end(self) -> datetime:
        """The end (exclusive) of the window."""
        return self.window_start + timedelta(seconds=storage_seconds(self.window_size))

    @property
    def value(self) -> Decimal | None:
        """The aggregation's result for the window."""
        return aggregator_for(self.aggregation).result(self.state)


def record_key(subject: str, group: Mapping[str, str | None], window_start: datetime) -> bytes:
    """The compacted-topic key of a window: JSON with sorted keys, identical for equal windows."""
    return exactjson.dumps(
        {"subject": subject, "group": dict(group), "windowStart": format_timestamp(window_start)},
        sort_keys=True,
    )


def _records(
    meter: MeterSpec, aggregator: Aggregator[Any, Any], changed: Mapping[WindowKey, Any]
) -> tuple[OutputRecord, ...]:
    """Encode the changed windows. Keys are built with their keys already in sorted order (the
    group names are sorted), which gives the same bytes as :func:`record_key`."""
    step = storage_seconds(meter.window_size)
    names = meter.group_names
    size = meter.window_size.value
    aggregation = meter.aggregation.value
    dump = aggregator.dump
    result = aggregator.result
    dumps = exactjson.dumps
    stamps: dict[int, str] = {}
    records = []
    for (subject, labels, start), state in changed.items():
        window_start = stamps.get(start)
        if window_start is None:
            window_start = stamps[start] = format_timestamp(datetime.fromtimestamp(start, UTC))
        window_end = stamps.get(start + step)
        if window_end is None:
            window_end = stamps[start + step] = format_timestamp(
                datetime.fromtimestamp(start + step, UTC)
            )
        group = dict(zip(names, labels, strict=True))
        number = result(state)
        key = dumps({"group": group, "subject": subject, "windowStart": window_start})
        value = dumps(
            {
                "aggregation": aggregation,
                "group": group,
                "state": dump(state),
                "subject": subject,
                "value": None if number is None else format_decimal(number),
                "windowEnd": window_end,
                "windowSize": size,
                "windowStart": window_start,
            },
            sort_keys=True,
        )
        records.append(OutputRecord(key, value))
    return tuple(records)


def decode_total(value: bytes) -> WindowTotal:
    """Read an output record's value back; raises ValueError when it is not one."""
    try:
        obj = exactjson.loads(value)
    except exactjson.JSONDecodeError as error:
        raise ValueError(f"not a window total: {error}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a window total: expected a JSON object")
    try:
        subject = obj["subject"]
        group = obj["group"]
        aggregation = Aggregation(obj["aggregation"])
        window_size = WindowSize(obj["windowSize"])
        window_start = parse_timestamp(obj["windowStart"])
        state = aggregator_for(aggregation).load(obj["state"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a window total: {error!r}") from None
    if not isinstance(subject, str) or not isinstance(group, dict):
        raise ValueError("not a window total: subject must be a string and group an object")
    if not all(label is None or isinstance(label, str) for label in group.values()):
        raise ValueError("not a window total: group labels must be strings or null")
    return WindowTotal(subject, group, window_start, window_size, aggregation, state)


@dataclass
class FoldState:
    """The mutable state of one Meter's worker: window states and the deduplicator."""

    meter: MeterSpec
    windows: dict[WindowKey, Any] = field(default_factory=dict)
    dedup: Deduplicator = field(default_factory=Deduplicator)

    def apply(self, result: FoldResult) -> None:
        """Commit a :class:`FoldResult` (call once its records are durably written)."""
        self.windows.update(result.changed)
        self.dedup.advance(result.now)
        self.dedup.add_all(result.accepted)

    def prune(self, before: datetime) -> int:
        """Forget windows that end at or before ``before``; return how many were dropped."""
        step = storage_seconds(self.meter.window_size)
        limit = before.timestamp()
        stale = [key for key in self.windows if key[2] + step <= limit]
        for key in stale:
            del self.windows[key]
        return len(stale)

    def load(self, totals: Iterable[WindowTotal]) -> int:
        """Load window totals read back from the output topic (the latest per key wins, as in
        compaction); totals of another aggregation or window size are refused."""
        names = self.meter.group_names
        loaded = 0
        for total in totals:
            if (total.aggregation, total.window_size) != (
                self.meter.aggregation,
                self.meter.window_size,
            ):
                raise ValueError(
                    f"a {total.aggregation} total of a {total.window_size} window does not "
                    f"belong to this {self.meter.aggregation} meter of {self.meter.window_size}"
                )
            if set(total.group) != set(names):
                raise ValueError(f"group {sorted(total.group)} does not match groupBy {names}")
            labels = tuple(total.group[name] for name in names)
            start = int(total.window_start.timestamp())
            self.windows[(total.subject, labels, start)] = total.state
            loaded += 1
        return loaded

    def totals(self) -> list[WindowTotal]:
        """Every window as a :class:`WindowTotal` (for tests, ``kmeter dev`` and queries)."""
        return [self.total(key) for key in self.windows]

    def total(self, key: WindowKey) -> WindowTotal:
        """The :class:`WindowTotal` of one window key."""
        subject, labels, start = key
        meter = self.meter
        return WindowTotal(
            subject,
            dict(zip(meter.group_names, labels, strict=True)),
            datetime.fromtimestamp(start, UTC),
            meter.window_size,
            meter.aggregation,
            self.windows[key],
        )


_NO_LABELS: Final[tuple[str | None, ...]] = ()
_INT_LIMIT: Final = 10**MAX_INTEGER_DIGITS
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class _Batch:
    """The running outcome of one fold (internal)."""

    partial: dict[WindowKey, Any] = field(default_factory=dict)
    accepted: list[tuple[str, str]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: int = 0
    other_type: int = 0


def _too_old(time: datetime, cutoff: datetime) -> str:
    return (
        f"time: {format_timestamp(time)} is older than the retention horizon "
        f"({format_timestamp(cutoff)}); its window can no longer change"
    )


def _fold_events(  # noqa: PLR0912, PLR0915 - one flat loop is what makes the fold fast
    state: FoldState,
    events: Iterable[UsageEvent],
    now: datetime,
    cutoff: datetime | None,
    batch: _Batch,
) -> None:
    """The per-event loop: everything here runs >100k times a second, hence the local names."""
    meter = state.meter
    aggregator = aggregator_for(meter.aggregation)
    add = aggregator.add
    empty = aggregator.empty
    event_type = meter.event_type
    step = storage_seconds(meter.window_size)
    value_kind = aggregator.value_kind
    value_path = meter.value_property
    group_paths = [path for _, path in meter.group_by]
    single_group = group_paths[0] if len(group_paths) == 1 else None
    expiry_of, moment = state.dedup.lookup(now)
    partial = batch.partial
    partial_get = partial.get
    accepted = batch.accepted
    rejects = batch.rejects
    seen: set[str] = set()
    value: Any = None

    number_get = (
        value_path.get if value_path is not None and value_kind is ValueKind.NUMBER else None
    )
    group_get = single_group.get if single_group is not None else None
    limit = _INT_LIMIT
    to_decimal = Decimal
    epoch = _EPOCH
    # SUM of int values (the common case): summed as Python ints per window, exact, and turned
    # into one Decimal per window after the loop, instead of a Decimal addition per event.
    int_sums: dict[WindowKey, int] | None = {} if meter.aggregation is Aggregation.SUM else None
    int_sums_get = int_sums.get if int_sums is not None else None

    for position, event in enumerate(events):
        if event.type != event_type:
            batch.other_type += 1
            continue
        time = event.time
        if cutoff is not None and time < cutoff:
            rejects.append(Reject(position, event, _too_old(time, cutoff)))
            continue
        source = event.source
        event_id = event.id
        dedup_key = f"{len(source)}:{source}{event_id}"  # Deduplicator's key of the pair
        if dedup_key in seen:
            batch.duplicates += 1
            continue
        expiry = expiry_of(dedup_key)
        if expiry is not None and expiry > moment:
            batch.duplicates += 1
            continue
        data = event.data
        int_value = None
        try:
            # Fast paths inline for the common shapes (an int value, a string label); the
            # jsonpath functions handle everything else, including the reasons for rejects.
            if number_get is not None:
                raw = number_get(data)
                if type(raw) is int and -limit < raw < limit:
                    if int_sums_get is not None:
                        int_value = raw
                    else:
                        value = to_decimal(raw)
                else:
                    value = number_at(value_path, data)  # type: ignore[arg-type]
            elif value_path is not None:
                value = distinct_at(value_path, data)
            if group_get is not None:
                label = group_get(data)
                if type(label) is not str:
                    label = label_at(single_group, data)  # type: ignore[arg-type]
                labels: tuple[str | None, ...] = (label,)
            elif group_paths:
                labels = tuple([label_at(path, data) for path in group_paths])
            else:
                labels = _NO_LABELS
        except ExtractionError as error:
            rejects.append(Reject(position, event, str(error)))
            continue
        elapsed = time - epoch  # exact integer seconds (a float timestamp can round up)
        seconds = elapsed.days * 86400 + elapsed.seconds
        key = (event.subject, labels, seconds - seconds % step)
        if int_value is not None:
            int_sums[key] = int_sums_get(key, 0) + int_value  # type: ignore[index,misc]
        else:
            current = partial_get(key)
            partial[key] = add(empty() if current is None else current, value, event)
        seen.add(dedup_key)
        accepted.append((source, event_id))
    if int_sums:
        merge = aggregator.merge  # SUM: the exact addition, as add
        for key, total in int_sums.items():
            current = partial_get(key)
            partial[key] = merge(empty() if current is None else current, to_decimal(total))


def fold(
    state: FoldState,
    events: Iterable[UsageEvent],
    *,
    now: datetime,
    retention: timedelta | None = None,
) -> FoldResult:
    """Fold a batch of events into the windows of ``state.meter`` without modifying ``state``.

    ``now`` (timezone-aware) is the batch's time: the deduplication clock and the reference of
    ``retention`` (events older than ``now - retention`` are rejected; None keeps all).
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    cutoff = None if retention is None else now - retention
    batch = _Batch()
    _fold_events(state, events, now, cutoff, batch)

    aggregator = aggregator_for(state.meter.aggregation)
    merge = aggregator.merge
    windows = state.windows
    changed: dict[WindowKey, Any] = {}
    for key, batch_state in batch.partial.items():
        previous = windows.get(key)
        changed[key] = batch_state if previous is None else merge(previous, batch_state)

    counts = FoldCounts(len(batch.accepted), batch.duplicates, batch.other_type, len(batch.rejects))
    return FoldResult(
        now,
        changed,
        _records(state.meter, aggregator, changed),
        tuple(batch.rejects),
        tuple(batch.accepted),
        counts,
    )
