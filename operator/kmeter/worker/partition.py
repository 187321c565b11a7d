"""One ingest partition's state, and the work of one batch of it (pure: no I/O).

The worker keeps a :class:`PartitionState` per ingest partition it owns: a
:class:`~kmeter.core.fold.FoldState` (window states and deduplicator) that holds exactly what
partition *p* of the output and dedup topics say, plus nothing uncommitted. :func:`plan_batch`
turns a batch of records into a :class:`BatchWork` — the records to write and the offset to
commit — *without* touching the state; :meth:`PartitionState.commit` applies it. The worker
applies a batch as soon as it is planned, so that the next batch can be planned while the
transaction holding this one commits (see "Pipelining" in :mod:`.runner`); the state may thus
run one batch ahead of Kafka, and after a failed transaction the worker drops it and rebuilds
it from Kafka, never trusting memory after an error.

**Time.** A batch's ``now`` is the newest record timestamp of the batch (the log's time, which
replays alike), capped at the wall clock so that a producer's clock far in the future cannot
expire dedup entries or reject valid events early. It is the dedup clock and the reference of
the retention check. Since batch boundaries can differ between a run and its replay, an event
within milliseconds of the retention boundary may be decided either way; it is decided once.

**No input stops the worker.** Undecodable records, events the fold rejects (too old, bad value)
become dead letters. Should :func:`~kmeter.core.fold.fold` itself raise on some event (a bug),
each event is folded alone to find the ones that raise; they become dead letters with the
error, and the rest is folded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kmeter.core.dedup import Deduplicator
from kmeter.core.events import UsageEvent
from kmeter.core.fold import FoldResult, FoldState, MeterSpec, WindowTotal, decode_total, fold
from kmeter.worker.records import (
    DeadLetter,
    IngestRecord,
    Origin,
    dead_letter,
    decode_records,
    dedup_entries,
    encode_dedup,
    record_time,
)

PRUNE_EVERY = timedelta(hours=1)
"""How often (in log time) a partition forgets windows older than the retention."""


@dataclass(frozen=True)
class RestoreCounts:
    """What a restore read."""

    totals: int
    windows: int
    invalid_totals: int
    dedup_entries: int


@dataclass(frozen=True)
class BatchWork:
    """What one batch of one partition writes, in one transaction, and commits."""

    result: FoldResult
    dead_letters: list[DeadLetter]
    dedup_values: list[bytes]
    next_offset: int
    """The offset to commit: one past the batch's last record."""
    records_in: int
    events_in: int
    malformed: int
    """Dead letters for undecodable records (the rest of ``dead_letters`` are fold rejects)."""
    newest_event_time: datetime | None
    """The latest ``time`` of the batch's events of the Meter's type."""

    @property
    def now(self) -> datetime:
        return self.result.now


@dataclass
class PartitionState:
    """The state of one ingest partition: exactly what its committed output says."""

    partition: int
    fold_state: FoldState
    last_prune: datetime | None = None
    last_event_time: datetime | None = field(default=None)

    @classmethod
    def restore(
        cls,
        partition: int,
        meter: MeterSpec,
        totals: Iterable[bytes],
        dedup_values: Iterable[bytes],
        *,
        horizon: timedelta,
        max_entries: int,
    ) -> tuple[PartitionState, RestoreCounts]:
        """Rebuild from partition *p* of the output topic (window totals, in log order, so the
        latest per key wins as in compaction) and of the dedup changelog (in log order)."""
        state = FoldState(meter, dedup=Deduplicator(horizon, max_entries))
        read = invalid = 0
        decoded: list[WindowTotal] = []
        for value in totals:
            read += 1
            try:
                decoded.append(decode_total(value))
            except ValueError:
                invalid += 1  # not ours to judge; a window total we cannot read is not loaded
        state.load(decoded)
        entries = list(dedup_entries(dedup_values))
        if entries:
            state.dedup = Deduplicator.restore(
                entries, max(at for _, _, at in entries), horizon, max_entries
            )
        counts = RestoreCounts(read, len(state.windows), invalid, len(state.dedup))
        return cls(partition, state), counts

    def commit(self, work: BatchWork, retention: timedelta) -> None:
        """Apply a planned batch (its transaction committed, or is in flight: see the module)."""
        state = self.fold_state
        state.apply(work.result)
        newest = work.newest_event_time
        if newest is not None and (self.last_event_time is None or newest > self.last_event_time):
            self.last_event_time = newest
        if self.last_prune is None or work.now - self.last_prune >= PRUNE_EVERY:
            state.prune(work.now - retention)
            self.last_prune = work.now


def batch_now(records: Sequence[IngestRecord], wall_now: datetime) -> datetime:
    """The batch's log time: its newest record timestamp, at most the wall clock."""
    return min(record_time(max(record.timestamp for record in records)), wall_now)


def plan_batch(
    meter_name: str,
    partition: PartitionState,
    records: Sequence[IngestRecord],
    *,
    retention: timedelta,
    wall_now: datetime,
) -> BatchWork:
    """Decode and fold a batch of one partition (non-empty, in offset order) without changing
    ``partition``; see the module's docstring."""
    decoded = decode_records(meter_name, records)
    now = batch_now(records, wall_now)
    state = partition.fold_state
    events, origins = decoded.events, decoded.origins
    dead = list(decoded.dead_letters)
    try:
        result = fold(state, events, now=now, retention=retention)
    except Exception:
        events, origins, failed = _isolate_failures(meter_name, state, events, origins, now)
        dead.extend(failed)
        result = fold(state, events, now=now, retention=retention)
    for reject in result.rejects:
        origin = origins[reject.position]
        dead.append(dead_letter(meter_name, origin.record, reject.reason, origin.element))
    clock = state.dedup.clock
    at = now if clock is None or now > clock else clock
    return BatchWork(
        result=result,
        dead_letters=dead,
        dedup_values=encode_dedup(at, result.accepted) if result.accepted else [],
        next_offset=records[-1].offset + 1,
        records_in=len(records),
        events_in=len(decoded.events),
        malformed=len(decoded.dead_letters),
        newest_event_time=max(
            (event.time for event in decoded.events if event.type == state.meter.event_type),
            default=None,
        ),
    )


def _isolate_failures(
    meter_name: str,
    state: FoldState,
    events: list[UsageEvent],
    origins: list[Origin],
    now: datetime,
) -> tuple[list[UsageEvent], list[Origin], list[DeadLetter]]:
    kept_events: list[UsageEvent] = []
    kept_origins: list[Origin] = []
    failed: list[DeadLetter] = []
    for event, origin in zip(events, origins, strict=True):
        try:
            fold(state, [event], now=now)
        except Exception as error:
            reason = f"the fold failed on this event: {error!r}"
            failed.append(dead_letter(meter_name, origin.record, reason, origin.element))
        else:
            kept_events.append(event)
            kept_origins.append(origin)
    return kept_events, kept_origins, failed
