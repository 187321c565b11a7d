"""Where the sidecar's usage events go: the :class:`EventSink` seam.

In a pod the sink is the :class:`~kmeter_sidecar.emitter.Emitter` (batches to Kafka, the spool
when Kafka is away). ``kmeter dev`` runs the same proxy in its own process and passes a sink of
its own that appends to its embedded log (``Sidecar(config, sink=...)``); this package never
imports ``kmeter.dev``.

The contract, which the request path relies on:

* :meth:`EventSink.emit` is called on the event loop for every finished exchange with the
  event's key (the subject) and value (CloudEvents JSON). It must return at once: no awaiting,
  no blocking I/O — a sink queues and writes in the background.
* :meth:`EventSink.start` is awaited before the proxy listens; :meth:`EventSink.close` after
  it stopped, and must deliver (or keep durably) what was emitted, within ``flush_timeout``
  seconds where it can.
* :attr:`EventSink.topic` says where events go, for the start-up log line.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["EventSink"]


class EventSink(Protocol):
    """Takes the usage events of the proxy; see the module docstring."""

    @property
    def topic(self) -> str:
        """Where the events go (a Kafka topic, a local log), for people reading the log."""
        ...

    def emit(self, key: bytes, value: bytes) -> None:
        """Queue one event; never blocks."""
        ...

    async def start(self) -> None:
        """Start background work (before the proxy listens)."""
        ...

    async def close(self, flush_timeout: float) -> None:
        """Deliver or durably keep everything emitted, then stop."""
        ...
