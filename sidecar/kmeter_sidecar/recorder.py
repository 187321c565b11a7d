"""Finished exchanges to usage events, built a batch at a time rather than one per request.

The proxy hands every finished exchange to :meth:`EventRecorder.finished` together with the
values read from its response; the event is built (:class:`~kmeter_sidecar.usage.EventFactory`),
encoded and given to the sink later, with those of every exchange that finished meanwhile: the
:class:`~kmeter_sidecar.emitter.Emitter` calls :meth:`EventRecorder.build` just before it takes
each batch for Kafka. The event is the same either way: what it says is copied from the exchange
when it finishes (its ``duration_ms`` ends then), and the exchange itself is not kept; only the
``id`` (a counter, still in the order the exchanges finished) is drawn later.

Why: at ~1,000 requests/s each request finds the process idle and its caches cold, and building
and encoding one event right after its response cost ~20 µs; twenty in a row cost about half
that each. Measured side by side with the previous code (docs/benchmarks.md, 2026-12-06,
together with the producer's linger of 0): about 5 to 7 % less CPU at 1,000 requests/s, the added
p99 unchanged or a little lower.

Bounds and exceptions:

* at most ``limit`` exchanges wait (``--batch-max``): while the sender is busy with a slow Kafka,
  the exchange that reaches it builds the oldest :data:`OVERFLOW_STEP` at once (a short pause of
  the request path, not one of a whole batch), so memory stays bounded; from there the
  emitter's queue and spool bound it, as before;
* while a summing quota is enforced, every event is built as its exchange finishes: the quota
  table counts the event's values from then on (:meth:`QuotaTable.record`), and the next
  request's verdict must see them;
* a sink that does not build before its batches (``kmeter dev``'s; no ``wake`` given) gets
  each event at once;
* the window in which a crash (SIGKILL) loses events is unchanged: they wait here instead of in
  the emitter's queue, for the same linger;
* an event that cannot be built or handed over (a bug, a full disk under the spool) is logged
  with its traceback and counted in ``kmeter_sidecar_events_dropped_total``; the others of its
  batch still go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kmeter_sidecar.metrics import Metrics
    from kmeter_sidecar.proxy import Exchange
    from kmeter_sidecar.quotas import QuotaTable
    from kmeter_sidecar.sink import EventSink
    from kmeter_sidecar.usage import EventFactory

__all__ = ["OVERFLOW_STEP", "EventRecorder"]

log = logging.getLogger("kmeter_sidecar.recorder")

OVERFLOW_STEP: Final = 16
"""Events built on the request path when ``limit`` exchanges wait (~0.3 ms of work)."""

# subject, started (wall clock), method, route, status, duration (s), request bytes, response
# bytes, values read from the response, aborted
_Finished = tuple[str, float, str, str, int, float, int, int, dict[str, Any] | None, bool]


class EventRecorder:
    """Builds the usage events of finished exchanges; see the module docstring."""

    def __init__(
        self,
        events: EventFactory,
        sink: EventSink,
        quotas: QuotaTable,
        metrics: Metrics,
        now: Callable[[], float],
        *,
        limit: int,
        wake: Callable[[], None] | None = None,
    ) -> None:
        """``now``: the clock of ``Exchange.started``, in seconds (the sidecar's is
        ``time.perf_counter``: the event loop's clock moves in 1 ms steps). ``wake``: tells the
        sink that events wait to be built (its sender sleeps until then); None when the sink
        does not build before its batches — events are then built at once."""
        self._events = events
        self._sink = sink
        self._quotas = quotas
        self._metrics = metrics
        self._now = now
        self._limit = limit
        self._wake = wake
        self._waiting: list[_Finished] = []

    def __len__(self) -> int:
        """Exchanges whose event is not built yet."""
        return len(self._waiting)

    def finished(self, exchange: Exchange, values: dict[str, Any] | None, aborted: bool) -> None:
        """Note a finished exchange; its event is built with the next batch (or at once)."""
        waiting = self._waiting
        if not waiting and self._wake is not None:
            self._wake()
        waiting.append(
            (
                exchange.subject,
                exchange.started_wall,
                exchange.method,
                exchange.route,
                exchange.status,
                self._now() - exchange.started,
                exchange.request_bytes,
                exchange.response_bytes,
                values,
                aborted,
            )
        )
        if self._wake is None or self._quotas.summing:
            self.build()
        elif len(waiting) >= self._limit:
            self.build(OVERFLOW_STEP)

    def build(self, most: int | None = None) -> None:
        """Build, encode and emit the events of the exchanges waiting (the ``most`` that
        finished first, or all), in the order they finished."""
        if most is None or most >= len(self._waiting):
            waiting, self._waiting = self._waiting, []
        else:
            waiting = self._waiting[:most]
            del self._waiting[:most]
        events, emit, quotas = self._events, self._sink.emit, self._quotas
        for subject, started, method, route, status, duration, sent, got, values, cut in waiting:
            try:
                event = events.build(
                    subject=subject,
                    started=started,
                    method=method,
                    route=route,
                    status=status,
                    duration=duration,
                    request_bytes=sent,
                    response_bytes=got,
                    values=values,
                    aborted=cut,
                )
                key, value = events.encode(event)
                emit(key, value)
            except Exception:  # one event, not the batch nor the sender's loop
                log.exception(
                    "the usage event of %s %s (subject %r) is lost", method, route, subject
                )
                self._metrics.events_dropped.inc()
                continue
            if quotas.summing and event.data is not None:  # counts until the next decision
                quotas.record(event.subject, event.data)
