"""Events to Kafka off the request path: a bounded queue, batches, the spool when Kafka is away.

The request path calls :meth:`Emitter.emit`, which appends (key, value) to an in-memory deque and
returns: it never awaits, never waits for Kafka. In the sidecar, events are built in batches
(:mod:`kmeter_sidecar.recorder`): the request path notes a finished exchange and calls
:meth:`Emitter.wake`; the sender has the waiting events built (:attr:`Emitter.waiting`) just
before it takes a batch. Two background tasks do the rest:

* the **sender** takes up to ``--batch-max`` events once they have waited ``--linger-ms``, hands
  them to an idempotent ``AIOKafkaProducer`` (``acks=all``, key = subject, topic from
  :func:`kmeter.topics.ingest_topic`) and awaits every acknowledgement. When the producer is
  down, or a batch fails or is not acknowledged within :data:`SEND_TIMEOUT`, the batch goes to
  the spool, the producer is closed and the sidecar switches to spooling;
* the **keeper** reconnects (a fresh producer every ``--kafka-retry-interval``) and, while
  connected, replays the spool oldest first, deleting a file only after Kafka acknowledged all
  of it (see :mod:`kmeter_sidecar.spool`).

Memory is bounded by ``--queue-max`` events queued (past it, :meth:`emit` writes the event to
the spool at once) and ``--batch-max`` waiting to be built (:mod:`kmeter_sidecar.recorder`).
Past the spool's ``--spool-max-bytes``, events are dropped and counted
(``kmeter_sidecar_events_dropped_total``) — the only place the sidecar loses usage by design.

**Delivery is at least once, with stable ids.** A batch that Kafka stored but whose
acknowledgement was lost (the broker died at that moment, the timeout fired) is spooled and
sent again; the copies have the same CloudEvents ``id`` and ``source``, and the aggregation
worker deduplicates on that pair. The idempotent producer removes the duplicates its own
retries would make; a new producer (after an outage) is a new idempotence session.

:meth:`Emitter.close` (SIGTERM) sends what is queued — and what is spooled, when Kafka is up —
within ``--flush-timeout``, spools whatever is left, fsyncs the spool, and returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from kmeter.kafka.partitions import KeyPartitions
from kmeter.kafka.settings import KafkaCredentialsMissing, KafkaSettings
from kmeter.topics import ingest_topic
from kmeter_sidecar.metrics import Metrics
from kmeter_sidecar.spool import Spool

__all__ = ["SEND_TIMEOUT", "Emitter"]

log = logging.getLogger("kmeter_sidecar.emitter")

SEND_TIMEOUT: Final = 15.0
"""Seconds a batch may wait for its acknowledgements before it is spooled."""
_REPLAY_CHUNK: Final = 2_000
_CLOSE_TASKS_TIMEOUT: Final = 10.0
_BUILD_AT_LEAST: Final = 5
_BUILD_STEPS: Final = 4

Record = tuple[bytes, bytes]


class WaitingEvents(Protocol):
    """Events noted but not built yet (:class:`~kmeter_sidecar.recorder.EventRecorder`)."""

    def __len__(self) -> int: ...

    def build(self, most: int | None = None) -> None:
        """Build the ``most`` that wait longest (or all) and :meth:`Emitter.emit` each."""
        ...


class Emitter:
    """Batches events to Kafka, spools them when it cannot; see the module docstring."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        namespace: str,
        spool: Spool,
        metrics: Metrics,
        queue_max: int = 20_000,
        batch_max: int = 1_000,
        linger: float = 0.02,
        retry_interval: float = 2.0,
    ) -> None:
        self.topic = ingest_topic(namespace)
        self._kafka = kafka
        self._spool = spool
        self._metrics = metrics
        self._queue: collections.deque[Record] = collections.deque()
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._linger = linger
        self._retry_interval = retry_interval
        self._producer: AIOKafkaProducer | None = None
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: list[Record] = []
        self._closing = False
        self._credentials_problem = ""  # logged once per distinct problem
        self._sending_lock = asyncio.Lock()
        self._partitions = KeyPartitions()
        self.waiting: WaitingEvents | None = None
        """Built before each batch, and at :meth:`close`; set by the sidecar."""
        metrics.watch(metrics.queue_depth, self._held)
        metrics.watch(metrics.spool_bytes, lambda: self._spool.size_bytes)
        metrics.watch(metrics.kafka_up, lambda: 1.0 if self._producer is not None else 0.0)

    # --- the request path -----------------------------------------------------------------

    def emit(self, key: bytes, value: bytes) -> None:
        """Queue one event (never blocks; spills to the spool when the queue is full)."""
        queue = self._queue
        if len(queue) >= self._queue_max:
            self._spill([(key, value)])
            return
        if not queue:
            self._wakeup.set()
        queue.append((key, value))

    def wake(self) -> None:
        """Events wait to be built (:attr:`waiting`): the sender's next batch is due."""
        self._wakeup.set()

    def _held(self) -> int:
        """Events in memory: waiting to be built, queued, or in the batch being sent."""
        waiting = len(self.waiting) if self.waiting is not None else 0
        return waiting + len(self._queue) + len(self._in_flight)

    async def _build_waiting(self) -> None:
        """Build the events waiting now in a few steps, letting the loop turn in between: at a
        light load a request that arrives meanwhile waits for a few events' building (~50 µs),
        not for the whole batch's; under full load the batch is built in at most
        :data:`_BUILD_STEPS` turns, or the sender falls behind (more events held, more memory).
        Those that finish meanwhile wait for the next batch: under full load they would
        otherwise keep this loop going, and no batch would ever be sent."""
        waiting = self.waiting
        if waiting is None:
            return
        left = len(waiting)
        step = max(_BUILD_AT_LEAST, -(-left // _BUILD_STEPS))
        while left > 0:
            step = min(left, step)
            waiting.build(step)
            left -= step
            if left:
                await asyncio.sleep(0)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Start the background tasks (connecting to Kafka happens in the background)."""
        self._tasks = [
            asyncio.create_task(self._sender(), name="kmeter-emitter-sender"),
            asyncio.create_task(self._keeper(), name="kmeter-emitter-keeper"),
        ]

    async def close(self, flush_timeout: float) -> None:
        """Deliver or spool everything, then stop (see the module docstring)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: on Python 3.11, asyncio.wait_for can swallow a cancellation that races
            # its inner call; the loops then stop at their next turn on ``_closing``.
            _, pending = await asyncio.wait(self._tasks, timeout=_CLOSE_TASKS_TIMEOUT)
            if pending:
                log.warning("%d emitter task(s) did not stop; flushing anyway", len(pending))
        self._queue_everything()
        deadline = time.monotonic() + flush_timeout
        try:
            if self._producer is None and (self._queue or self._spool.records_pending):
                await asyncio.wait_for(self._connect(), max(0.1, deadline - time.monotonic()))
            while self._queue and self._producer is not None:
                batch = self._take()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await self._send(batch, min(remaining, SEND_TIMEOUT)):
                    self._spill(batch)
                    break
                self._metrics.events_emitted.inc(len(batch))
            while self._producer is not None and time.monotonic() < deadline:
                if not await self._replay_once(deadline - time.monotonic()):
                    break
        except (TimeoutError, KafkaError, OSError) as error:
            log.warning("flush at shutdown stopped early: %s", error)
        self._queue_everything()  # exchanges that ended during the flush (aborted by the drain)
        if self._queue:
            self._spill(list(self._queue))
            self._queue.clear()
        self._spool.close()
        await self._disconnect()
        if self._spool.records_pending:
            log.warning(
                "exiting with %d events spooled in %s; they are sent when the sidecar restarts "
                "with this spool directory",
                self._spool.records_pending,
                self._spool.directory,
            )

    def _queue_everything(self) -> None:
        """At close: a batch the sender had in hand when cancelled goes back to the front of
        the queue, and the events waiting to be built are built."""
        if self._in_flight:
            self._queue.extendleft(reversed(self._in_flight))
            self._in_flight = []
        if self.waiting is not None:
            self.waiting.build()

    # --- background tasks -----------------------------------------------------------------

    def _take(self) -> list[Record]:
        queue = self._queue
        count = min(len(queue), self._batch_max)
        return [queue.popleft() for _ in range(count)]

    async def _sender(self) -> None:
        while not self._closing:
            if not self._queue and not (self.waiting is not None and len(self.waiting)):
                self._wakeup.clear()
                await self._wakeup.wait()
            # Every batch lingers, not only the first after a quiet spell: fewer, larger produce
            # requests (one costs the event loop about as much as several requests; see
            # docs/benchmarks.md, 2026-12-06). A full batch goes at once.
            if len(self._queue) < self._batch_max:
                await asyncio.sleep(self._linger)
            await self._build_waiting()
            batch = self._in_flight = self._take()
            if not batch:  # emptied meanwhile by close()
                continue
            if self._producer is None or not await self._send(batch, SEND_TIMEOUT):
                self._spill(batch)
            else:
                self._metrics.events_emitted.inc(len(batch))
            self._in_flight = []

    async def _keeper(self) -> None:
        while not self._closing:
            if self._producer is None:
                try:
                    await self._connect()
                except KafkaCredentialsMissing as error:
                    # Like an outage (events spool), but only a person can end it: say so.
                    if str(error) != self._credentials_problem:
                        log.error("%s; spooling events until they are there", error)
                    self._credentials_problem = str(error)
                    await asyncio.sleep(self._retry_interval)
                    continue
                except (KafkaError, OSError, TimeoutError) as error:
                    log.debug("Kafka not reachable yet: %s", error)
                    await asyncio.sleep(self._retry_interval)
                    continue
                self._credentials_problem = ""
            if self._spool.records_pending and await self._replay_once(SEND_TIMEOUT):
                continue
            await asyncio.sleep(self._retry_interval if self._spool.records_pending else 0.5)

    async def _replay_once(self, budget: float) -> bool:
        """Send one chunk of the oldest spool file; True when it was acknowledged."""
        segment = self._spool.oldest()
        if segment is None:
            return False
        records, offset = self._spool.read(segment, _REPLAY_CHUNK)
        if records and not await self._send(records, budget):
            return False
        self._spool.acknowledge(segment, offset, len(records))
        self._metrics.events_emitted.inc(len(records))
        self._metrics.events_replayed.inc(len(records))
        return True

    # --- Kafka ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        producer = AIOKafkaProducer(
            **self._kafka.client_options(),  # re-reads mounted credentials
            acks="all",
            enable_idempotence=True,
            # The sender lingers already: a second linger in the producer would add a timer
            # wake-up to every batch (0.01-0.02 core per 1,000 requests/s, measured) and 5 ms
            # to every event. The batches of one _produce still leave in one request per leader
            # broker: they reach the producer in one turn of the loop.
            linger_ms=0,
            max_batch_size=1 << 20,
            compression_type=None,
        )
        try:
            await asyncio.wait_for(producer.start(), self._kafka.request_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)
            raise
        self._producer = producer
        log.info(
            "connected to Kafka at %s (%s), producing to %s",
            self._kafka.bootstrap_servers,
            self._kafka.security_protocol,
            self.topic,
        )

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def _send(self, records: Sequence[Record], budget: float) -> bool:
        """Produce records and await every acknowledgement; False (and disconnected) on any
        failure. Sends are serialised so the sender and the replay never interleave batches."""
        producer = self._producer
        if producer is None:
            return False
        async with self._sending_lock:
            try:
                await asyncio.wait_for(self._produce(producer, records), budget)
            except (KafkaError, OSError, TimeoutError) as error:
                log.warning(
                    "Kafka did not acknowledge %d events (%s); spooling until it is back",
                    len(records),
                    error or type(error).__name__,
                )
                if self._producer is producer:
                    await self._disconnect()
                return False
        return True

    async def _produce(self, producer: Any, records: Sequence[Record]) -> None:
        """One record batch per partition instead of a ``send`` per event: the per-event cost
        of ``send`` (a future, the accumulator, a wake-up) was a third of the sidecar's CPU at
        1,000 requests/s. Each key goes where ``send`` would put it (Kafka's default
        partitioner, :mod:`kmeter.kafka.partitions`), where every other producer puts it."""
        topic = self.topic
        partitions = await producer.partitions_for(topic)  # metadata, as send() waits for it
        choose = self._partitions.chooser(len(partitions))
        batches: dict[int, Any] = {}
        futures = []
        for key, value in records:
            partition = choose(key)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    def _spill(self, records: Sequence[Record]) -> None:
        written = self._spool.append(records)
        self._spool.flush()
        if written:
            self._metrics.events_spooled.inc(written)
        lost = len(records) - written
        if lost:
            self._metrics.events_dropped.inc(lost)
            log.error("spool full (%d bytes): dropped %d events", self._spool.max_bytes, lost)
