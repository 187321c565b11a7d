"""Getting events into the local log from asyncio: group commit, and the two producers' sinks.

:class:`LogWriter` owns one :class:`~kmeter.dev.log.EventLog`. Appends queue up in memory; one
writer task takes everything queued, writes it with a single ``write`` + ``fsync`` in a worker
thread (the event loop never blocks on the disk), then resolves the waiters and hands the
written records, with their offsets, to ``on_written`` — the folds (:mod:`kmeter.dev.pipeline`).
So records reach the folds in offset order, only once they are durable, and one fsync covers
every request that arrived while the previous one ran.

The two producers of ``kmeter dev`` write through it:

* :class:`IngestSink` — the usage API's :class:`~kmeter.api.backends.EventSink`: ``POST
  /api/v1/events`` awaits the fsync, so its 204 means "on disk", as with Kafka it means "in the
  in-sync replicas". Key = subject, value = the event as CloudEvents JSON, like the API's Kafka
  records.
* :class:`ProxySink` — the sidecar's :class:`~kmeter_sidecar.sink.EventSink`: ``emit`` queues
  and returns (the request path never waits for the disk); the events are durable a few
  milliseconds later. At shutdown, :meth:`ProxySink.close` waits for the queue to be written.
  A crash (SIGKILL, power loss) loses the proxy's events of that last moment — the same window
  as the sidecar's in-memory queue in a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kmeter.api.ingest import KafkaUnavailable, NoIngestTopic
from kmeter.core.events import UsageEvent, encode_event
from kmeter.dev.log import EventLog, LogRecord

__all__ = ["IngestSink", "LogWriter", "ProxySink"]

log = logging.getLogger("kmeter.dev")

Written = Callable[[list[LogRecord]], None]


@dataclass
class _Pending:
    records: list[tuple[bytes | None, bytes]]
    done: asyncio.Future[int] | None


@dataclass
class LogWriter:
    """Group commit into one :class:`EventLog`; see the module docstring."""

    log: EventLog
    on_written: Written
    _pending: list[_Pending] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while a batch is written and folded; whoever holds it sees the log standing still
    (``kmeter dev`` takes it to fold the log again after the manifests changed)."""
    failed: BaseException | None = None

    def start(self) -> None:
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name=f"write {self.log.folder}")

    def append_nowait(self, records: list[tuple[bytes | None, bytes]]) -> None:
        """Queue records to be written soon; nobody waits for them."""
        self._queue(_Pending(records, None))

    async def append(self, records: list[tuple[bytes | None, bytes]]) -> int:
        """Write records; returns (the first offset) once they are fsynced. Raises OSError
        when the disk refused them."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(records, done))
        return await done

    def _queue(self, pending: _Pending) -> None:
        if self._task is None or self._task.done():
            raise RuntimeError("the log writer is not running")
        self._pending.append(pending)
        self._idle.clear()
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                async with self.lock:
                    batch, self._pending = self._pending, []
                    await self._write(batch)
            self._idle.set()

    async def _write(self, batch: list[_Pending]) -> None:
        stamp = time.time_ns() // 1_000_000
        rows = [(stamp, key, value) for pending in batch for key, value in pending.records]
        try:
            first = await asyncio.to_thread(self.log.append, rows)
        except Exception as error:  # a full disk, a record over the size limit: refuse it
            log.error("writing %d events to %s failed: %s", len(rows), self.log.folder, error)
            self.failed = error
            for pending in batch:
                if pending.done is not None and not pending.done.done():
                    pending.done.set_exception(error)
            return
        offset = first
        for pending in batch:
            if pending.done is not None and not pending.done.done():
                pending.done.set_result(offset)
            offset += len(pending.records)
        written = [
            LogRecord(first + index, stamp, key, value)
            for index, (_, key, value) in enumerate(rows)
        ]
        try:
            self.on_written(written)
        except Exception:  # the folds isolate bad events; this is a bug, keep the log going
            log.exception("folding records %d..%d failed", first, offset - 1)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        await self._idle.wait()

    async def close(self) -> None:
        """Write what is queued, stop, close the log (flush + fsync)."""
        if self._task is not None:
            await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.log.close)


@dataclass
class IngestSink:
    """``POST /api/v1/events`` → the namespace's local log (durable before the 204)."""

    writers: Mapping[str, LogWriter]

    async def produce(self, namespace: str, events: Sequence[UsageEvent]) -> None:
        writer = self.writers.get(namespace)
        if writer is None:
            raise NoIngestTopic(namespace)
        records: list[tuple[bytes | None, bytes]] = [
            (event.subject.encode(), encode_event(event)) for event in events
        ]
        try:
            await writer.append(records)
        except Exception as error:  # the disk refused them; nothing was acknowledged
            raise KafkaUnavailable(f"the local log could not be written: {error}") from None


@dataclass
class ProxySink:
    """The in-process sidecar's events → the namespace's local log."""

    writer: LogWriter

    @property
    def topic(self) -> str:
        return f"the local log {self.writer.log.folder}"

    def emit(self, key: bytes, value: bytes) -> None:
        try:
            self.writer.append_nowait([(key, value)])
        except RuntimeError:  # the log is closed (shutting down): the request is not affected
            log.error("an event of the proxy was lost: the local log is closed")

    async def start(self) -> None:
        """Nothing to start: the writer runs already."""

    async def close(self, flush_timeout: float) -> None:
        try:
            await asyncio.wait_for(self.writer.flush(), flush_timeout)
        except TimeoutError:
            log.warning("the proxy's events were not all written within %.1f s", flush_timeout)
