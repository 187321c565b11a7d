"""The worker process: consume, fold, and write exactly once — one transaction per partition.

**Shape.** One group consumer on the namespace's ingest topic (the Meter's consumer group,
``read_committed``, no auto-commit). Per ingest partition *p* it owns, the worker holds a
:class:`~kmeter.worker.partition.PartitionState` and **one transactional producer with the
stable id** ``kmeter.<ns>.meter.<name>.<p>`` (:func:`~kmeter.worker.records.transactional_id`).
Each ``getmany`` batch is split by partition; for each partition, concurrently, one
transaction carries the changed window totals (to partition *p* of the output topic, keyed by
window), the accepted (source, id) pairs (partition *p* of the dedup changelog), the dead letters
(with their reason) and — exactly once per transaction, aiokafka bug #1098 — the consumed
offset via ``send_offsets_to_transaction``.

**Pipelining.** A transaction waits for the broker several times (add partitions, produce,
add offsets, commit); the worker does not idle meanwhile. Each partition has at most one
transaction in flight, run as a task, while the loop fetches and plans the next batch. The
next batch is planned against the state *with the batch in flight applied* (the state runs one
batch ahead of what Kafka committed), and its transaction begins only after the one in flight
committed. When a transaction fails, the partition's state — which then holds uncommitted
batches — is dropped and rebuilt from Kafka (below), and the batch planned behind it is
discarded without being written: so the output never holds a total built on an uncommitted
batch, and the rebuilt state is exactly what Kafka committed.

**Why a producer per partition (zombie fencing).** aiokafka speaks only v0 of the transaction
requests: no KIP-447, so the broker cannot fence a stale consumer-group member by its
generation. A transactional id per partition fences by the partition instead: whoever takes
*p* over initialises the producer ``...<p>`` first, which bumps its epoch, aborts (or
completes) the previous owner's open transaction, and makes every later write or offset commit
of the previous owner fail with ``ProducerFenced``. Only then does it read *p*'s state and
committed offset. A single producer per worker could not do that: a paused worker that lost
*p* could still commit *p*'s offsets and totals with its own, unfenced id. The cost is one
producer (connection, transaction) per partition owned; transactions of different partitions
commit in parallel.

**Taking a partition over** (:meth:`Worker._recover`), on assignment and after *any* error in
*p*'s transaction: the partition is paused; its new producer is initialised (fencing);
partitions *p* of the output and dedup topics are read to their end, ``read_committed``, and the
state rebuilt from them (:mod:`.restore`); the committed offset of *p* is read *now* — after the
fencing, so it belongs to the same committed transaction as the totals just read — and the
consumer seeks to it and resumes. Memory is never trusted after an error: an aborted or
ambiguous commit ends in the same rebuild, whose result is whatever Kafka committed.

**Rebalances.** aiokafka's protocol is eager: on revoke the worker waits for the transactions
in flight (a lock held while a batch is planned, then the partitions' transaction tasks), stops
the revoked partitions' producers and drops their state; on assignment it pauses the new
partitions and rebuilds each before fetching from it. Records of a partition no longer owned,
or below the offset its state has reached, are never folded.

**Errors.** A failed transaction of *p* aborts and rebuilds *p* (retried with backoff while
Kafka is unreachable; ``/readyz`` says 503 meanwhile); other partitions go on. Fenced means
another owner has *p*: the rebuild then waits until the group takes *p* away. No input stops
the worker (see :mod:`.partition`).

**Quotas** (:mod:`.quotas`). When the quota file lists Quotas, each batch's transaction also
carries the changed quota decisions (to partition *p* of the namespace's decisions topic) and
the threshold crossings (notifications topic); taking *p* over also reads partition *p* of the
decisions topic. Quota edits are re-evaluated in transactions of their own, after the one in
flight. Without the quota topics, counting goes on and quotas wait for them. Webhooks and
Events are delivered by a separate task (:mod:`kmeter.notifications.dispatcher`).

**Shutdown.** SIGTERM or SIGINT: the batch in flight finishes (its transactions commit or
abort), the consumer leaves the group, producers close, exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from kmeter import topics
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.clients import started
from kmeter.kafka.topics import describe_topics
from kmeter.logging_setup import configure_logging
from kmeter.notifications.dispatcher import Dispatcher, kube_client
from kmeter.worker.health import Servers
from kmeter.worker.metrics import WorkerMetrics
from kmeter.worker.partition import BatchWork, PartitionState, plan_batch
from kmeter.worker.quotas import (
    Outgoing,
    PartitionQuotas,
    QuotaFile,
    QuotaMetrics,
    QuotaWork,
    policy_records,
    wall_clock,
)
from kmeter.worker.records import transactional_id
from kmeter.worker.restore import read_to_end
from kmeter.worker.settings import WorkerSettings

log = logging.getLogger("kmeter.worker")

TRANSACTION_TIMEOUT_S = 60.0
RESTORE_TIMEOUT_S = 600.0
CLOSE_TIMEOUT_S = 10.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
QUOTA_TOPICS_CHECK_S = 10.0
POLICY_REFRESH_S = 60.0
"""Policies are written again this often: a stray tombstone (a Quota moved to another Meter,
whose old worker tombstoned it) heals within this time."""


@dataclass
class Owned:
    """An ingest partition this worker owns: ready when it has a producer and a state."""

    partition: int
    producer: AIOKafkaProducer | None = None
    state: PartitionState | None = None
    position: int | None = None
    """The offset the state has reached (records below it are already counted)."""
    failures: int = 0
    retry_at: float = 0.0
    inflight: asyncio.Task[None] | None = None
    """The transaction of the latest batch planned, while it runs."""
    quotas: PartitionQuotas | None = None
    """Quota evaluation of the partition's subjects (rebuilt with ``state``)."""
    reevaluate: bool = False
    """Whether its subjects must be evaluated again (quota file changed, or just rebuilt)."""

    @property
    def ready(self) -> bool:
        return self.state is not None and self.producer is not None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker.assign(assigned)


class Worker:
    """One Meter's aggregation worker."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.meter = settings.fold_meter()
        ns, name = settings.namespace, settings.meter_name
        self.ingest_topic = topics.ingest_topic(ns)
        self.output_topic = topics.meter_topic(ns, name)
        self.dedup_topic = topics.meter_dedup_topic(ns, name)
        self.dead_letter_topic = topics.dead_letter_topic(ns)
        self.group = topics.meter_consumer_group(ns, name)
        self.decisions_topic = topics.quota_decisions_topic(ns)
        self.notifications_topic = topics.notifications_topic(ns)
        self.quota_file = QuotaFile(settings.quotas_file, meter_name=name, meter=self.meter)
        self._policies_due = False
        self._policies_gone: set[str] = set()
        self._policy_producer: AIOKafkaProducer | None = None
        self._next_topics_check = 0.0
        self._policies_refresh_at = 0.0
        self.retention = settings.retention
        self.metrics = WorkerMetrics()
        self.quota_metrics = QuotaMetrics(self.metrics.registry)
        self.owned: dict[int, Owned] = {}
        self.joined = False
        self.stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None

    # --- readiness ------------------------------------------------------------------------

    def ready(self) -> bool:
        """Joined the group, and every partition owned is rebuilt."""
        return self.joined and all(owned.ready for owned in self.owned.values())

    # --- the consumer and its rebalances --------------------------------------------------

    def _consumer_options(self) -> dict[str, Any]:
        options: dict[str, Any] = self.settings.kafka.client_options()
        options["request_timeout_ms"] = max(
            options.get("request_timeout_ms", 0), self.settings.session_timeout_ms + 5000, 40_000
        )
        return options

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None
        return self._consumer

    def assign(self, assigned: set[TopicPartition]) -> None:
        """Rebalance listener: new partitions are paused until rebuilt."""
        mine = [tp for tp in assigned if tp.topic == self.ingest_topic]
        if mine:
            self.consumer.pause(*mine)
        for tp in mine:
            self.owned[tp.partition] = Owned(tp.partition)
        self.joined = True
        self.metrics.assigned.set(len(self.owned))
        log.info("assigned partitions %s", sorted(tp.partition for tp in mine))

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Rebalance listener: wait for the transactions in flight, then let the partitions go."""
        async with self._lock:
            mine = [tp for tp in revoked if tp.topic == self.ingest_topic]
            await _settle([self.owned[tp.partition] for tp in mine if tp.partition in self.owned])
            for tp in mine:
                owned = self.owned.pop(tp.partition, None)
                if owned is not None and owned.producer is not None:
                    await _close(owned.producer)
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(str(tp.partition))
            self.metrics.assigned.set(len(self.owned))
        log.info("revoked partitions %s", sorted(tp.partition for tp in revoked))

    # --- taking a partition over ----------------------------------------------------------

    def _producer(self, partition: int) -> AIOKafkaProducer:
        options: dict[str, Any] = self.settings.kafka.client_options()
        return AIOKafkaProducer(
            **options,
            transactional_id=transactional_id(
                self.settings.namespace, self.settings.meter_name, partition
            ),
            transaction_timeout_ms=int(TRANSACTION_TIMEOUT_S * 1000),
            max_batch_size=1024 * 1024,
            linger_ms=5,
        )

    async def _recover(self, owned: Owned) -> None:
        """Fence the previous owner, rebuild the state from Kafka, seek to the committed offset."""
        started = time.monotonic()
        partition = owned.partition
        tp = TopicPartition(self.ingest_topic, partition)
        producer = self._producer(partition)
        try:
            await asyncio.wait_for(producer.start(), TRANSACTION_TIMEOUT_S)
            # An empty transaction waits for InitProducerId: the fencing happens here.
            await asyncio.wait_for(producer.begin_transaction(), TRANSACTION_TIMEOUT_S)
            await producer.abort_transaction()
            output = TopicPartition(self.output_topic, partition)
            dedup = TopicPartition(self.dedup_topic, partition)
            decided = TopicPartition(self.decisions_topic, partition)
            # Counting never waits for the quota topics: without them, no quota evaluation.
            evaluate = partition < await self._quota_partitions()
            values = await read_to_end(
                self.settings.kafka,
                [output, dedup, decided] if evaluate else [output, dedup],
                timeout_s=RESTORE_TIMEOUT_S,
            )
            state, counts = PartitionState.restore(
                partition,
                self.meter,
                values[output],
                values[dedup],
                horizon=self.settings.dedup_horizon,
                max_entries=self.settings.dedup_bound(self._ingest_partitions(partition)),
            )
            committed = await asyncio.wait_for(self.consumer.committed(tp), TRANSACTION_TIMEOUT_S)
        except BaseException:
            await _close(producer)
            raise
        if committed is None:
            await self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, committed)
        quotas = PartitionQuotas(
            partition,
            namespace=self.settings.namespace,
            meter_name=self.settings.meter_name,
            topic=self.decisions_topic,
            notifications_topic=self.notifications_topic,
        )
        restored = quotas.restore(values[decided]) if evaluate else 0
        if not evaluate:
            log.warning(
                "partition %d: the quota topics %s and %s do not exist (or have fewer "
                "partitions): quotas are not evaluated for it until they do",
                partition,
                self.decisions_topic,
                self.notifications_topic,
            )
        owned.producer, owned.state, owned.position = producer, state, committed
        owned.quotas, owned.reevaluate = (quotas if evaluate else None), True
        owned.failures = 0
        self.consumer.resume(tp)
        elapsed = time.monotonic() - started
        self.metrics.recoveries.inc()
        self.metrics.restore_seconds.observe(elapsed)
        log.info(
            "partition %d rebuilt in %.2f s: %d window totals read (%d windows, %d unreadable), "
            "%d dedup pairs, %d quota decisions; resuming at offset %s",
            partition,
            elapsed,
            counts.totals,
            counts.windows,
            counts.invalid_totals,
            counts.dedup_entries,
            restored,
            committed if committed is not None else "the beginning",
        )

    async def _recover_pending(self) -> None:
        now = time.monotonic()
        due = [
            o
            for o in self.owned.values()
            if not o.ready and o.retry_at <= now and (o.inflight is None or o.inflight.done())
        ]
        if not due:
            return
        async with self._lock:
            due = [o for o in due if self.owned.get(o.partition) is o and not o.ready]
            results = await asyncio.gather(*(self._recover(o) for o in due), return_exceptions=True)
        for owned, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                delay = BACKOFF_S[min(owned.failures, len(BACKOFF_S) - 1)]
                owned.failures += 1
                owned.retry_at = time.monotonic() + delay
                log.warning(
                    "rebuilding partition %d failed (%r); retrying in %.1f s",
                    owned.partition,
                    result,
                    delay,
                )

    async def _break(self, owned: Owned, error: BaseException) -> None:
        """After an error in ``owned``'s transaction: abort, forget, rebuild from Kafka."""
        log.warning(
            "transaction of partition %d failed (%r): aborting and rebuilding it from Kafka",
            owned.partition,
            error,
        )
        self.metrics.transactions.labels("aborted").inc()
        tp = TopicPartition(self.ingest_topic, owned.partition)
        if tp in self.consumer.assignment():
            self.consumer.pause(tp)
        producer, owned.producer, owned.state = owned.producer, None, None
        owned.quotas = None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.abort_transaction(), CLOSE_TIMEOUT_S)
            except Exception:
                log.debug("abort of partition %d failed", owned.partition, exc_info=True)
            await _close(producer)

    # --- one batch --------------------------------------------------------------------------

    def _plan(self, owned: Owned, tp: TopicPartition, records: Sequence[Any]) -> _Planned | None:
        """Plan a batch and apply it to the state at once (see "Pipelining")."""
        if owned.position is not None and records[0].offset < owned.position:
            records = [r for r in records if r.offset >= owned.position]
            if not records:
                return None
        state, producer = owned.state, owned.producer
        assert state is not None
        assert producer is not None
        work = plan_batch(
            self.settings.meter_name,
            state,
            records,
            retention=self.retention,
            wall_now=datetime.now(UTC),
        )
        quota_work = None
        if owned.quotas is not None and self.quota_file.current.quotas:
            # Before the batch is applied: usage advances from each window's previous state.
            quota_work = owned.quotas.plan(
                self.quota_file.current,
                state.fold_state.windows,
                work.result.changed,
                wall_clock(self.settings.clock_offset),
            )
        state.commit(work, self.retention)
        owned.position = work.next_offset
        return _Planned(owned, tp, state, producer, work, len(records), quota_work)

    async def _transact(self, planned: _Planned) -> None:
        """Write one planned batch in one transaction; on failure, drop and rebuild."""
        owned = planned.owned
        try:
            await asyncio.wait_for(
                self._write(planned.producer, planned.tp, planned.work, planned.quota_work),
                TRANSACTION_TIMEOUT_S,
            )
        except Exception as error:
            if owned.producer is planned.producer:
                await self._break(owned, error)
            return
        self._count(planned.work, planned.records, planned.tp, owned)
        if planned.quota_work is not None:
            self.quota_metrics.committed(planned.quota_work)

    async def _write(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        work: BatchWork,
        quota_work: QuotaWork | None = None,
    ) -> None:
        partition = tp.partition
        await producer.begin_transaction()
        futures = []
        send = producer.send
        if quota_work is not None:
            futures.extend(await _send_all(producer, quota_work.records))
        for record in work.result.records:
            futures.append(
                await send(self.output_topic, record.value, key=record.key, partition=partition)
            )
        for value in work.dedup_values:
            futures.append(await send(self.dedup_topic, value, partition=partition))
        for letter in work.dead_letters:
            futures.append(
                await send(
                    self.dead_letter_topic, letter.value, key=letter.key, headers=letter.headers
                )
            )
        # Exactly once per transaction: aiokafka #1098 raises KeyError on a second call.
        await producer.send_offsets_to_transaction({tp: work.next_offset}, self.group)
        if futures:
            await asyncio.gather(*futures)
        await producer.commit_transaction()

    def _count(self, work: BatchWork, records: int, tp: TopicPartition, owned: Owned) -> None:
        m = self.metrics
        counts = work.result.counts
        m.transactions.labels("committed").inc()
        m.records_in.inc(records)
        m.events_in.inc(work.events_in)
        m.events_counted.inc(counts.counted)
        m.events_deduplicated.inc(counts.duplicates)
        m.events_other_type.inc(counts.other_type)
        if work.malformed:
            m.events_dead_lettered.labels("malformed").inc(work.malformed)
        if counts.rejected:
            m.events_dead_lettered.labels("rejected").inc(counts.rejected)
        stable = self.consumer.last_stable_offset(tp)
        if stable is not None:
            m.consumer_lag.labels(str(tp.partition)).set(max(0, stable - work.next_offset))
        if owned.state is not None and owned.state.last_event_time is not None:
            newest = owned.state.last_event_time.timestamp()
            m.last_event_time.set(max(newest, _gauge_value(m.last_event_time)))

    def _update_gauges(self) -> None:
        states = [o.state for o in self.owned.values() if o.state is not None]
        dedups = [s.fold_state.dedup for s in states]
        m = self.metrics
        m.dedup_entries.set(sum(len(d) for d in dedups))
        m.dedup_bytes.set(sum(d.memory_bytes() for d in dedups))
        m.dedup_evicted.set(sum(d.stats.evicted for d in dedups))
        m.dedup_coverage.set(
            min((d.coverage() for d in dedups), default=self.settings.dedup_horizon).total_seconds()
        )
        m.windows.set(sum(len(s.fold_state.windows) for s in states))

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Plan every partition's batch, then start its transaction once the one before it
        (of the same partition) is done."""
        async with self._lock:
            planned = []
            for tp, records in batch.items():
                owned = self.owned.get(tp.partition)
                if records and owned is not None and owned.ready and tp.topic == self.ingest_topic:
                    step = self._plan(owned, tp, records)
                    if step is not None:
                        planned.append(step)
            for step in planned:
                owned = step.owned
                if owned.inflight is not None:
                    await _settle([owned])
                if owned.state is not step.state or owned.producer is not step.producer:
                    continue  # the transaction before it failed: the partition is being rebuilt
                owned.inflight = asyncio.create_task(self._transact(step))

    def _ingest_partitions(self, partition: int) -> int:
        """The ingest topic's partition count, as the consumer's metadata knows it: the dedup
        bound per partition is the memory limit shared by all of them (kmeter.worker.memory)."""
        known = self.consumer.partitions_for_topic(self.ingest_topic) or set()
        return max(len(known), partition + 1)

    # --- quotas ---------------------------------------------------------------------------

    async def _quota_partitions(self) -> int:
        """The decisions topic's partition count if both quota topics exist, else 0."""
        async with KafkaAdmin(self.settings.kafka) as admin:
            found = await describe_topics(admin, [self.decisions_topic, self.notifications_topic])
        return found[self.decisions_topic].partitions if len(found) == 2 else 0

    async def _without_quota_topics(self) -> None:
        """Rebuild the partitions that were taken over before the quota topics existed, once
        they exist (checked every :data:`QUOTA_TOPICS_CHECK_S`)."""
        now = time.monotonic()
        waiting = [o for o in self.owned.values() if o.ready and o.quotas is None]
        if not waiting or not self.quota_file.current.quotas or now < self._next_topics_check:
            return
        self._next_topics_check = now + QUOTA_TOPICS_CHECK_S
        try:
            partitions = await self._quota_partitions()
        except Exception as error:
            log.debug("checking the quota topics failed: %r", error)
            return
        for owned in waiting:
            if owned.partition < partitions:
                log.info("partition %d: the quota topics exist now; rebuilding", owned.partition)
                await self._rebuild(owned)

    async def _rebuild(self, owned: Owned) -> None:
        """Drop ``owned``'s state and producer after its transaction in flight; the loop then
        takes it over again (:meth:`_recover`)."""
        async with self._lock:
            await _settle([owned])
            tp = TopicPartition(self.ingest_topic, owned.partition)
            if tp in self.consumer.assignment():
                self.consumer.pause(tp)
            producer, owned.producer, owned.state, owned.quotas = owned.producer, None, None, None
            if producer is not None:
                await _close(producer)

    async def _quota_changes(self) -> None:
        """Re-read the quota file; publish policies; re-evaluate partitions that need it."""
        await self._without_quota_topics()
        previous = set(self.quota_file.current.quotas)
        changed = self.quota_file.poll()
        if changed is not None:
            self._policies_gone |= previous - set(changed.quotas)
            self._policies_due = True
            for owned in self.owned.values():
                owned.reevaluate = True
        if not self.quota_file.loaded:
            return
        due = [o for o in self.owned.values() if o.ready and o.reevaluate and o.quotas is not None]
        if due:
            await self._reevaluate(due)
        if time.monotonic() >= self._policies_refresh_at:
            self._policies_due = True
        if self._policies_due and any(o.quotas is not None for o in self.owned.values()):
            await self._publish_policies()

    async def _reevaluate(self, due: list[Owned]) -> None:
        """One transaction per partition (after the one in flight) with its new decisions."""
        async with self._lock:
            for owned in due:
                if owned.inflight is not None:
                    await _settle([owned])
                quotas, producer = owned.quotas, owned.producer
                if quotas is None or producer is None or owned.state is None:
                    continue
                owned.reevaluate = False
                work = quotas.reevaluate(
                    self.quota_file.current,
                    owned.state.fold_state.windows,
                    wall_clock(self.settings.clock_offset),
                )
                if work.removed:
                    self._policies_gone |= work.removed
                    self._policies_due = True
                if work.records:
                    owned.inflight = asyncio.create_task(
                        self._transact_quotas(owned, producer, work)
                    )

    async def _transact_quotas(
        self, owned: Owned, producer: AIOKafkaProducer, work: QuotaWork
    ) -> None:
        try:
            await asyncio.wait_for(self._write_quotas(producer, work), TRANSACTION_TIMEOUT_S)
        except Exception as error:
            if owned.producer is producer:
                await self._break(owned, error)
            return
        self.quota_metrics.committed(work)
        log.info(
            "partition %d: %d quota decisions re-evaluated, %d notifications",
            owned.partition,
            work.decisions,
            len(work.notifications),
        )

    async def _write_quotas(self, producer: AIOKafkaProducer, work: QuotaWork) -> None:
        await producer.begin_transaction()
        futures = await _send_all(producer, work.records)
        if futures:
            await asyncio.gather(*futures)
        await producer.commit_transaction()

    async def _publish_policies(self) -> None:
        """Each Quota's policy record, tombstones for Quotas gone (idempotent, not transactional:
        every replica writes the same content)."""
        try:
            if self._policy_producer is None:
                producer = AIOKafkaProducer(
                    **self.settings.kafka.client_options(), acks="all", enable_idempotence=True
                )
                self._policy_producer = await asyncio.wait_for(
                    started(producer), TRANSACTION_TIMEOUT_S
                )
            records = policy_records(
                self.decisions_topic, self.quota_file.current, self._policies_gone
            )
            futures = await _send_all(self._policy_producer, records)
            await asyncio.wait_for(asyncio.gather(*futures), TRANSACTION_TIMEOUT_S)
        except Exception as error:
            log.warning("publishing quota policies failed (%r); retrying", error)
            return
        self._policies_due = False
        self._policies_gone.clear()
        self._policies_refresh_at = time.monotonic() + POLICY_REFRESH_S

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :attr:`stopping` is set; then finish the batch and leave the group."""
        settings = self.settings
        self._consumer = AIOKafkaConsumer(
            **self._consumer_options(),
            group_id=self.group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 4),
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        consumer = self._consumer
        consumer.subscribe([self.ingest_topic], listener=_Listener(self))
        last_gauges = 0.0
        try:
            await consumer.start()  # in the try: a failed start is stopped too (kafka.clients)
            while not self.stopping.is_set():
                await self._recover_pending()
                await self._quota_changes()
                batch = await consumer.getmany(timeout_ms=200, max_records=settings.max_batch)
                if batch:
                    await self._process(batch)
                if time.monotonic() - last_gauges > 1.0:
                    self._update_gauges()
                    last_gauges = time.monotonic()
        finally:
            # Let the transactions in flight commit (or abort). Not under the lock: leaving the
            # group may call the revoke listener, which takes it.
            await _settle(list(self.owned.values()))
            log.info("stopping: leaving the consumer group")
            try:
                await asyncio.wait_for(consumer.stop(), CLOSE_TIMEOUT_S * 3)
            finally:
                owned_now, self.owned = list(self.owned.values()), {}
                await asyncio.gather(
                    *(_close(owned.producer) for owned in owned_now if owned.producer is not None)
                )
                if self._policy_producer is not None:
                    await _close(self._policy_producer)
                log.info("stopped")


@dataclass(frozen=True)
class _Planned:
    """A batch planned (and applied to ``state``) whose transaction is still to run."""

    owned: Owned
    tp: TopicPartition
    state: PartitionState
    producer: AIOKafkaProducer
    work: BatchWork
    records: int
    quota_work: QuotaWork | None = None


async def _send_all(producer: AIOKafkaProducer, records: Sequence[Outgoing]) -> list[Any]:
    """Send quota records (decisions to their partition, the rest by key); their futures."""
    return [
        await producer.send(record.topic, record.value, key=record.key, partition=record.partition)
        for record in records
    ]


async def _settle(owned: Sequence[Owned]) -> None:
    """Wait until the transactions in flight of ``owned`` are done (they handle their errors)."""
    tasks = [o.inflight for o in owned if o.inflight is not None]
    for o in owned:
        o.inflight = None
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _gauge_value(gauge: Any) -> float:
    for family in gauge.collect():
        for sample in family.samples:
            return float(sample.value)
    return 0.0


async def _close(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_S)
    except Exception:
        log.debug("closing a producer failed", exc_info=True)


async def serve(settings: WorkerSettings) -> None:
    """Run the worker with its HTTP servers until SIGTERM or SIGINT."""
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stopping.set)
    servers = Servers(
        worker.metrics.registry,
        worker.ready,
        metrics_port=settings.metrics_port,
        health_port=settings.health_port,
    )
    await servers.start()
    delivery = asyncio.create_task(_deliver_notifications(worker), name="notifications")
    # The fold allocates a few objects per event and keeps long-lived state (windows, dedup
    # keys): with the default thresholds the cyclic GC rescans that state every few thousand
    # events, which measured as half the worker's CPU. Freeze what start-up made, collect less.
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        await worker.run()
    finally:
        delivery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivery
        await servers.stop()


async def _deliver_notifications(worker: Worker) -> None:
    """Webhooks and Events for the Meter's Quotas, off the evaluation path
    (:mod:`kmeter.notifications.dispatcher`)."""
    settings = worker.settings
    kube = await kube_client()
    dispatcher = Dispatcher(
        settings.kafka,
        namespace=settings.namespace,
        meter=settings.meter_name,
        quota_file=worker.quota_file,
        secrets_dir=settings.secrets_dir,
        registry=worker.metrics.registry,
        kube=kube,
    )
    try:
        await dispatcher.run()
    finally:
        if kube is not None:
            await kube.close()


def run(settings: WorkerSettings) -> None:
    """The ``kmeter worker`` command."""
    configure_logging(logging.INFO, quieter=["aiokafka"])
    log.info(
        "worker of meter %s/%s: %s -> %s",
        settings.namespace,
        settings.meter_name,
        topics.ingest_topic(settings.namespace),
        topics.meter_topic(settings.namespace, settings.meter_name),
    )
    asyncio.run(serve(settings))
