"""The running sidecar: wires the proxy, the app pool, the emitter and the admin port together.

Start, in order: the admin port (``/readyz`` 503 "loading quota decisions"), the emitter, the
quota decisions (:mod:`.decisions`: loaded, or given up on after ``--decisions-timeout``), and
only then the proxy port, with ``/readyz`` 200.

Shutdown (SIGTERM or SIGINT), in order:

1. ``/readyz`` turns 503 and the listening socket closes: no new connections.
2. Idle keep-alive connections are closed; a connection in the middle of an exchange finishes
   it (its response carries ``Connection: close``) and is closed after it — for at most
   ``--drain-timeout``; connections still busy then are cut, and their exchanges are recorded
   as ``aborted``.
3. The emitter flushes: queued events (and spooled ones, while Kafka answers) are sent within
   ``--flush-timeout``; what is left goes to the spool, which is fsynced.
4. The process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from kmeter_sidecar.config import Config
from kmeter_sidecar.decisions import DecisionsFollower
from kmeter_sidecar.emitter import Emitter
from kmeter_sidecar.health import AdminConnection
from kmeter_sidecar.metrics import Metrics
from kmeter_sidecar.proxy import ClientConnection
from kmeter_sidecar.quotas import QuotaTable
from kmeter_sidecar.recorder import EventRecorder
from kmeter_sidecar.sink import EventSink
from kmeter_sidecar.spool import Spool
from kmeter_sidecar.subject import SubjectResolver
from kmeter_sidecar.upstream import UpstreamPool
from kmeter_sidecar.usage import EventFactory

__all__ = ["Sidecar"]

log = logging.getLogger("kmeter_sidecar")


class Sidecar:
    """Shared state of all connections, and the process's lifecycle."""

    def __init__(self, config: Config, sink: EventSink | None = None) -> None:
        """``sink``: where events go; default the Kafka :class:`Emitter` with its spool."""
        self.config = config
        self.metrics = Metrics()
        self.now = asyncio.get_running_loop().time
        verifier = None
        if config.jwt.verifies:
            from kmeter_sidecar.jwt import load_verifier  # noqa: PLC0415

            verifier = load_verifier(config.jwt)
        self.subjects = SubjectResolver(
            config.subject_from, verifier=verifier, missing=config.missing_subject
        )
        self.pool = UpstreamPool(
            config.upstream_host,
            config.upstream_port,
            connect_timeout=config.upstream_connect_timeout,
        )
        self.upstream_host_header = config.upstream.encode()
        self.emitter: EventSink
        emitter: Emitter | None = None
        if sink is not None:
            self.emitter = sink
        else:
            self.spool = Spool(config.spool_dir, config.spool_max_bytes)
            self.emitter = emitter = Emitter(
                kafka=config.kafka("kmeter-sidecar"),
                namespace=config.namespace,
                spool=self.spool,
                metrics=self.metrics,
                queue_max=config.queue_max,
                batch_max=config.batch_max,
                linger=config.linger_ms / 1000,
                retry_interval=config.kafka_retry_interval,
            )
        offset = config.clock_offset_seconds
        self.quotas = QuotaTable(
            config.event_type,
            wall=(lambda: time.time() + offset) if offset else time.time,
            mono_ns=time.monotonic_ns,
            max_subjects=config.quota_max_subjects,
            fail_closed=config.decisions_fail == "closed",
        )
        self.recorder = EventRecorder(
            EventFactory(source=config.source, event_type=config.event_type),
            self.emitter,
            self.quotas,
            self.metrics,
            time.perf_counter,  # durations: Exchange.started is on this clock
            limit=config.batch_max,
            wake=emitter.wake if emitter is not None else None,
        )
        if emitter is not None:
            emitter.waiting = self.recorder  # built before each of its batches
        # In a pod, decisions come from Kafka; a caller with a sink of its own (`kmeter dev`)
        # may feed `quotas` itself (QuotaTable.apply).
        self.decisions: DecisionsFollower | None = None
        if sink is None:
            self.decisions = DecisionsFollower(
                kafka=config.kafka("kmeter-sidecar-decisions"),
                namespace=config.namespace,
                table=self.quotas,
                metrics=self.metrics,
                start_timeout=config.decisions_timeout,
                retry_interval=config.kafka_retry_interval,
            )
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.listening = False  # the proxy port is open (ready only then)
        self.all_closed = asyncio.Event()  # set when the last connection closes while draining
        self.metrics.watch(self.metrics.connections, lambda: len(self.connections))

    # --- lifecycle ------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why ``/readyz`` is 503, or None when the sidecar is ready."""
        if self.draining:
            return "draining"
        if self.decisions is not None and not self.decisions.settled:
            return "loading quota decisions"
        if not self.listening:  # decisions loaded, the proxy port about to open
            return "starting"
        return None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT — or until ``stop`` is set, when the caller owns the
        signals (``kmeter dev``) — then shut down as the module docstring says."""
        loop = asyncio.get_running_loop()
        if stop is None:
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
        config = self.config
        admin = await loop.create_server(
            lambda: AdminConnection(self.metrics.render, self.not_ready),
            config.admin_host,
            config.admin_port,
            reuse_address=True,
        )
        await self.emitter.start()
        if self.decisions is not None:
            await self.decisions.start()
        server = await loop.create_server(
            lambda: ClientConnection(self),
            config.listen_host,
            config.port,
            backlog=2048,
            reuse_address=True,
        )
        self.listening = True
        sweeper = asyncio.create_task(self._sweeper())
        log.info(
            "kmeter-sidecar listening on %s:%d, proxying to %s; events to %s (%s); admin on :%d",
            config.listen_host,
            config.port,
            config.upstream,
            self.emitter.topic,
            config.kafka_bootstrap,
            config.admin_port,
        )
        await stop.wait()
        log.info("shutting down: draining connections (at most %.1f s)", config.drain_timeout)
        self.draining = True
        server.close()
        await self._drain(config.drain_timeout)
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        self.pool.close()
        await self.emitter.close(config.flush_timeout)
        if self.decisions is not None:
            await self.decisions.close()
        admin.close()
        log.info("stopped")

    async def _drain(self, budget: float) -> None:
        for connection in list(self.connections):
            connection.sweep(self.now())  # closes the idle ones now
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), budget)
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)  # let connection_lost run: aborted exchanges get their events

    async def _sweeper(self) -> None:
        config = self.config
        interval = min(config.header_timeout, config.keepalive_timeout, config.upstream_timeout)
        interval = min(1.0, max(0.05, interval / 4))
        while True:
            await asyncio.sleep(interval)
            now = self.now()
            for connection in list(self.connections):
                connection.sweep(now)
