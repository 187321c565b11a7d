"""The decisions follower: the namespace's quota decisions topic, read into the quota table.

One ``AIOKafkaConsumer`` per sidecar, **without a consumer group**: every sidecar needs every
record, so it assigns itself all partitions of :func:`kmeter.topics.quota_decisions_topic`,
reads them from the beginning (the topic is compacted: the latest record of each key is the
state) and keeps following. ``isolation_level=read_committed``: the worker writes decisions in
the transactions that also commit its input offsets, and an aborted decision never counted.
Partitions added to the topic later are noticed (the metadata is checked every
:data:`PARTITION_CHECK_SECONDS`) and read from their beginning.

**At start** the sidecar waits for the *initial load* — every record up to the end offsets seen
at start, applied to the :class:`~kmeter_sidecar.quotas.QuotaTable` — before its proxy port
listens and ``/readyz`` turns 200, so a new pod never serves a subject it should refuse. It waits
at most ``--decisions-timeout``.

**When decisions are unavailable** — Kafka unreachable for longer than ``--decisions-timeout``
at start, or the topic missing — the sidecar logs one line that says so and what it does, sets
``kmeter_sidecar_decisions_available`` to 0 and, by default, *fails open*: it serves, with no
quota enforcement, until the decisions load (it keeps trying every ``--kafka-retry-interval``).
With ``--decisions-fail closed`` it refuses every request with 503 ``problem+json`` saying why.
Either way it reports ready after the timeout: readiness that waited on Kafka would take every
pod of the namespace out of its Service during a Kafka outage.

**After the initial load** a Kafka outage leaves the table as it was — subjects blocked stay
blocked until their period ends, and periods still roll over — while the consumer reconnects
by itself; decisions made meanwhile arrive when Kafka is back. The table is not dropped: a
stale table enforces more than an empty one would.

**Bad records** (unknown key, not JSON, missing fields, key and value naming different quotas, a
policy that cannot be enforced) are skipped and counted in
``kmeter_sidecar_decisions_malformed_total``; the first :data:`MALFORMED_LOGGED` are logged
with the reason. No record stops the follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kmeter.decisions import DecisionFormatError
from kmeter.kafka.settings import KafkaCredentialsMissing, KafkaSettings
from kmeter.topics import quota_decisions_topic
from kmeter_sidecar.metrics import Metrics
from kmeter_sidecar.quotas import QuotaTable

__all__ = ["DecisionsFollower"]

log = logging.getLogger("kmeter_sidecar.decisions")

PARTITION_CHECK_SECONDS: Final = 30.0
MISSING_GRACE_SECONDS: Final = 1.0
"""A topic missing for this long at start is taken as missing (not as metadata in transit)."""
SWEEP_SECONDS: Final = 10.0
CLOSE_TIMEOUT_SECONDS: Final = 10.0
MALFORMED_LOGGED: Final = 20


class _TopicMissing(Exception):
    """The decisions topic does not exist (yet)."""


class DecisionsFollower:
    """Loads and follows the decisions topic into ``table``; see the module docstring."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        namespace: str,
        table: QuotaTable,
        metrics: Metrics,
        start_timeout: float = 10.0,
        retry_interval: float = 2.0,
    ) -> None:
        self.topic = quota_decisions_topic(namespace)
        self.table = table
        self._kafka = kafka
        self._metrics = metrics
        self._start_timeout = start_timeout
        self._retry_interval = retry_interval
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # the loops end on it too: a swallowed cancellation cannot hang
        self._loaded = asyncio.Event()
        self._known = asyncio.Event()  # loaded, or known to be missing: no need to wait longer
        self.settled = False
        """True once the initial load finished or its timeout passed: the sidecar may serve."""
        self.unavailable: str | None = None
        """Why decisions are unavailable; None while they are (or before the first attempt)."""
        self._malformed = 0
        self._missing_since: float | None = None
        self._last_sweep = time.monotonic()
        metrics.watch(metrics.decisions_available, lambda: 1.0 if self.available else 0.0)
        metrics.watch(metrics.quota_policies, lambda: float(table.policies))
        metrics.watch(metrics.quota_subjects, lambda: float(table.subjects))
        metrics.watch(metrics.rate_limit_buckets, lambda: float(table.buckets))

    @property
    def available(self) -> bool:
        return self._loaded.is_set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following, and wait for the initial load for at most the start timeout."""
        self._task = asyncio.create_task(self._run(), name="kmeter-decisions-follower")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._known.wait(), self._start_timeout)
        self.settled = True
        if not self.available:
            self._give_up_waiting()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # Bounded: on Python 3.11, asyncio.wait_for can swallow a cancellation that races
            # its inner call; the loops then stop at their next turn on ``_closing``.
            done, _ = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_SECONDS)
            if not done:
                log.warning(
                    "the decisions follower did not stop within %s s", CLOSE_TIMEOUT_SECONDS
                )

    def _give_up_waiting(self) -> None:
        reason = (
            self.unavailable or f"Kafka at {self._kafka.bootstrap_servers} did not answer in time"
        )
        self.unavailable = reason
        self.table.set_unavailable(reason)
        if self.table.fail_closed:
            log.error(
                "quota decisions are unavailable (%s): failing CLOSED (--decisions-fail "
                "closed): every request gets 503 until they load",
                reason,
            )
        else:
            log.error(
                "quota decisions are unavailable (%s): failing OPEN (--decisions-fail open): "
                "requests are served WITHOUT quota enforcement until they load",
                reason,
            )

    # --- the background task --------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                consumer = self._consumer()
            except KafkaCredentialsMissing as error:
                self._not_available(str(error))
                await asyncio.sleep(self._retry_interval)
                continue
            try:
                await asyncio.wait_for(consumer.start(), self._kafka.request_timeout_s)
                partitions = await self._partitions(consumer)
                await self._load(consumer, partitions)
                await self._follow(consumer, partitions)
            except _TopicMissing:
                self._not_available(f"the topic {self.topic} does not exist")
                now = time.monotonic()
                if self._missing_since is None:
                    self._missing_since = now
                if now - self._missing_since >= MISSING_GRACE_SECONDS:
                    self._known.set()
                else:
                    await asyncio.sleep(MISSING_GRACE_SECONDS / 4)
                    continue
            except (KafkaError, OSError, TimeoutError) as error:
                where = self._kafka.bootstrap_servers
                self._not_available(f"Kafka at {where}: {error or type(error).__name__}")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)
            await asyncio.sleep(self._retry_interval)

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self._kafka.client_options(),  # re-reads mounted credentials
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=200,
        )

    async def _partition_ids(self, consumer: AIOKafkaConsumer) -> set[int]:
        """The topic's partitions, from fresh metadata (``consumer.topics()`` fetches it but
        keeps only the names; the consumer's own metadata tracks only assigned topics)."""
        cluster = await consumer._client.fetch_all_metadata()
        return set(cluster.partitions_for_topic(self.topic) or ())

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        found = await self._partition_ids(consumer)
        if not found:
            raise _TopicMissing
        return [TopicPartition(self.topic, partition) for partition in sorted(found)]

    async def _load(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Every record up to the end offsets seen now; then the table is current."""
        started = time.monotonic()
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records = 0
        while True:
            behind = [p for p in partitions if await consumer.position(p) < ends[p]]
            if not behind:
                break
            batch = await consumer.getmany(*behind, timeout_ms=500)
            records += self._apply(batch.values())
        was_unavailable = self.unavailable
        self.unavailable = None
        self.table.set_unavailable(None)
        self._loaded.set()
        self._known.set()
        log.info(
            "quota decisions loaded from %s: %d records in %.2f s; enforcing %d quotas for "
            "event type %s",
            self.topic,
            records,
            time.monotonic() - started,
            self.table.policies,
            self.table.event_type,
        )
        if was_unavailable and self.settled:
            log.warning("quota decisions are available again: enforcement resumes")

    async def _follow(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        checked = time.monotonic()
        while not self._closing:
            batch = await consumer.getmany(timeout_ms=1000)
            self._apply(batch.values())
            now = time.monotonic()
            if now - self._last_sweep >= SWEEP_SECONDS:
                self._last_sweep = now
                self.table.sweep()
            if now - checked >= PARTITION_CHECK_SECONDS:
                checked = now
                partitions = await self._grow(consumer, partitions)

    async def _grow(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        """Partitions added to the topic since: assigned and read from their beginning."""
        found = await self._partition_ids(consumer)
        new = [TopicPartition(self.topic, p) for p in sorted(found) if p >= len(partitions)]
        if not new:
            return partitions
        positions = {p: await consumer.position(p) for p in partitions}
        consumer.assign([*partitions, *new])
        for partition, offset in positions.items():
            consumer.seek(partition, offset)
        await consumer.seek_to_beginning(*new)
        log.info("the topic %s grew to %d partitions", self.topic, len(partitions) + len(new))
        return [*partitions, *new]

    def _apply(self, batches: Iterable[list[Any]]) -> int:
        """Apply records to the table; malformed ones are counted and skipped."""
        applied = 0
        table = self.table
        for records in batches:
            for record in records:
                try:
                    table.apply(record.key, record.value)
                except (DecisionFormatError, ValueError) as error:
                    self._metrics.decisions_malformed.inc()
                    self._malformed += 1
                    if self._malformed <= MALFORMED_LOGGED:
                        log.warning(
                            "skipping a malformed record at %s-%d offset %d (key %r): %s%s",
                            record.topic,
                            record.partition,
                            record.offset,
                            record.key,
                            error,
                            "; further ones are counted, not logged"
                            if self._malformed == MALFORMED_LOGGED
                            else "",
                        )
                    continue
                applied += 1
        if applied:
            self._metrics.decisions_applied.inc(applied)
        return applied

    def _not_available(self, reason: str) -> None:
        """The last attempt failed. Before the initial load this is what makes decisions
        unavailable; after it, the table stays as it was (see the module docstring)."""
        if self.available:
            log.warning(
                "following %s stopped (%s); the last decisions stay in force", self.topic, reason
            )
            return
        first = self.unavailable is None
        self.unavailable = reason
        if self.settled:
            self.table.set_unavailable(reason)
        if first:
            log.warning("cannot load quota decisions yet: %s; retrying", reason)
        else:
            log.debug("cannot load quota decisions yet: %s", reason)
