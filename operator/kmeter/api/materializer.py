"""Kafka → memory: every Meter's output topic materialized into a :class:`MeterStore`.

For each Meter the :class:`MeterSource` reports, a task reads ``kmeter.<ns>.meter.<name>`` —
every partition, assigned (no consumer group), ``isolation_level=read_committed`` so totals of
an aborted worker transaction are never seen — from the beginning, and keeps the latest total
per key (:mod:`.store`).

* **Restart-safe**: nothing is kept on disk; a started API reads the compacted topics again.
  After a Kafka hiccup a task resumes from its positions (never from the beginning again, which
  would briefly replay old totals over newer ones).
* **Bounded start-up**: when a Meter's task starts it reads the end offsets (the last stable
  offsets, under read_committed) and the Meter is *caught up* once its positions reach them; the
  API is ready (``/readyz``) once every Meter known at start is caught up. A query on a Meter not
  yet caught up is answered 503 with ``Retry-After`` rather than with a partial total.
  Start-up time is proportional to the compacted topics' size.
* **Fresh**: fetches wait at most ``fetch_max_wait_ms`` (100 ms) for new records, so a total a
  worker commits is queryable within about that.
* Meters appear, change and disappear as the source says (refreshed every few seconds); a new
  partition of a topic is picked up at the next refresh; a Meter whose topic does not exist
  yet (the operator creates it) counts as caught up and is looked for again at each refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kmeter import topics
from kmeter.api import metrics
from kmeter.api.meters import MeterInfo, MeterSource
from kmeter.api.store import MeterStore
from kmeter.core.fold import decode_total
from kmeter.kafka.clients import running
from kmeter.kafka.settings import KafkaSettings

log = logging.getLogger("kmeter.api.materializer")


@dataclass
class MeterView:
    """A Meter being served: what it is, its totals, and whether they are up to date."""

    info: MeterInfo
    store: MeterStore
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.caught_up.is_set()


def views_in_namespace(
    views: Mapping[tuple[str, str], MeterView], namespace: str
) -> list[MeterView]:
    """The views of ``namespace``'s Meters, by name."""
    return sorted(
        (view for (ns, _), view in views.items() if ns == namespace),
        key=lambda view: view.info.name,
    )


class Materializer:
    """Keeps one :class:`MeterView` per Meter of the source, fed from Kafka."""

    def __init__(
        self, kafka: KafkaSettings, source: MeterSource, refresh_seconds: float = 5.0
    ) -> None:
        self.kafka = kafka
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.views: dict[tuple[str, str], MeterView] = {}
        self._initial: list[MeterView] | None = None
        self._refreshed = asyncio.Event()

    # --- the set of meters ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the first list of Meters is known and each of them is caught up."""
        return self._initial is not None and all(view.ready for view in self._initial)

    async def refresh(self) -> None:
        """Reconcile the views with the source's Meters; on failure keep the current ones."""
        try:
            infos = await self.source.load()
        except Exception as error:
            log.warning("could not list the Meters (keeping the known ones): %r", error)
            return
        wanted = {info.key: info for info in infos}
        for key in list(self.views):
            if key not in wanted:
                await self._stop(self.views.pop(key))
        for key, info in wanted.items():
            view = self.views.get(key)
            if view is not None and view.info.uid == info.uid and _same_store(view.info, info):
                if view.info.spec.group_names != info.spec.group_names:
                    view.store.regroup(info.spec.group_names)
                view.info = info
                continue
            if view is not None:
                await self._stop(view)
            self.views[key] = self._start(info)
        if self._initial is None:
            self._initial = list(self.views.values())
        self._refreshed.set()

    def _start(self, info: MeterInfo) -> MeterView:
        spec = info.spec
        view = MeterView(info, MeterStore(spec.aggregation, spec.window_size, spec.group_names))
        view.task = asyncio.create_task(self._follow(view), name=f"materialize {info.key}")
        return view

    async def _stop(self, view: MeterView) -> None:
        if view.task is not None:
            view.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view.task
        namespace, name = view.info.key
        for gauge in (metrics.MATERIALIZER_LAG, metrics.MATERIALIZED_WINDOWS):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    async def run(self) -> None:
        """Refresh the Meters forever (the first refresh is :meth:`refresh` at start)."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.refresh()
            metrics.READY.set(1 if self.ready else 0)

    async def close(self) -> None:
        for view in list(self.views.values()):
            await self._stop(view)
        self.views.clear()

    def get(self, namespace: str, name: str) -> MeterView | None:
        return self.views.get((namespace, name))

    def in_namespace(self, namespace: str) -> list[MeterView]:
        return views_in_namespace(self.views, namespace)

    # --- one meter's topic ----------------------------------------------------------------

    async def _follow(self, view: MeterView) -> None:
        """Read the Meter's output topic forever, reconnecting with backoff."""
        positions: dict[TopicPartition, int] = {}
        delay = 0.5
        while True:
            try:
                await self._read(view, positions)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, TimeoutError) as error:
                log.warning(
                    "reading the totals of %s/%s: %r; retrying in %.1f s",
                    *view.info.key,
                    error,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _consumer(self) -> Any:
        options = {**self.kafka.client_options(), "client_id": "kmeter-api"}
        return AIOKafkaConsumer(
            **options,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def _read(self, view: MeterView, positions: dict[TopicPartition, int]) -> None:
        namespace, name = view.info.key
        topic = topics.meter_topic(namespace, name)
        consumer = self._consumer()
        async with running(consumer):
            targets: dict[TopicPartition, int] | None = None
            assigned: set[TopicPartition] = set()
            checked = -1e9
            loop = asyncio.get_running_loop()
            while True:
                if loop.time() - checked >= self.refresh_seconds:
                    checked = loop.time()
                    found = await self._partitions(consumer, topic)
                    if found is None:
                        view.caught_up.set()  # nothing to read yet; look again later
                    elif found != assigned:
                        await self._assign(consumer, found, positions)
                        assigned = found
                        targets = await consumer.end_offsets(list(found))
                if not assigned:
                    await asyncio.sleep(min(self.refresh_seconds, 1.0))
                    continue
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                for partition, records in batch.items():
                    self._apply(view, partition.partition, records)
                    positions[partition] = records[-1].offset + 1
                for partition in assigned:
                    positions[partition] = await consumer.position(partition)
                if (
                    targets is not None
                    and not view.ready
                    and all(positions.get(tp, 0) >= end for tp, end in targets.items())
                ):
                    view.caught_up.set()
                    log.info("%s/%s: %d windows loaded", namespace, name, len(view.store))
                lag = sum(
                    max(0, (consumer.last_stable_offset(tp) or 0) - positions.get(tp, 0))
                    for tp in assigned
                )
                metrics.MATERIALIZER_LAG.labels(namespace, name).set(lag)
                metrics.MATERIALIZED_WINDOWS.labels(namespace, name).set(len(view.store))

    @staticmethod
    async def _partitions(consumer: Any, topic: str) -> set[TopicPartition] | None:
        await consumer._client.force_metadata_update()  # no public refresh
        numbers = consumer._client.cluster.partitions_for_topic(topic)
        if numbers is None:
            consumer._client.add_topic(topic)
            await consumer._client.force_metadata_update()
            numbers = consumer._client.cluster.partitions_for_topic(topic)
        if not numbers:
            return None
        return {TopicPartition(topic, number) for number in numbers}

    @staticmethod
    async def _assign(
        consumer: Any, partitions: set[TopicPartition], positions: dict[TopicPartition, int]
    ) -> None:
        consumer.assign(sorted(partitions))
        for partition in partitions:
            if partition in positions:
                consumer.seek(partition, positions[partition])
            else:
                await consumer.seek_to_beginning(partition)

    @staticmethod
    def _apply(view: MeterView, partition: int, records: list[Any]) -> None:
        """Keep the latest total per (partition, key): after the ingest topic grew, one window
        key can have a partial total in two partitions; queries merge them (docs/guarantees.md).
        """
        namespace, name = view.info.key
        store = view.store
        counts = {"ok": 0, "tombstone": 0, "malformed": 0, "foreign": 0}
        foreign = store.foreign
        prefix = b"%d:" % partition
        for record in records:
            if record.key is None:
                counts["malformed"] += 1
                continue
            key = prefix + record.key
            if record.value is None:
                store.delete(key)
                counts["tombstone"] += 1
                continue
            try:
                total = decode_total(record.value)
            except ValueError:
                counts["malformed"] += 1
                continue
            store.put(key, total)
            counts["ok"] += 1
        counts["foreign"] = store.foreign - foreign
        counts["ok"] -= counts["foreign"]
        for result, count in counts.items():
            if count:
                metrics.MATERIALIZER_RECORDS.labels(namespace, name, result).inc(count)


def _same_store(old: MeterInfo, new: MeterInfo) -> bool:
    return (old.spec.aggregation, old.spec.window_size) == (
        new.spec.aggregation,
        new.spec.window_size,
    )
