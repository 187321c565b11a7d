"""Rebuilding a partition's state from Kafka: partition *p* of the output and dedup topics.

Called when the worker takes ingest partition *p* over (start, rebalance) and after any error in
a transaction of *p*. It runs only **after** the new owner's transactional producer for *p* has
been initialised, which fences the previous owner and completes (commits or aborts) its last
transaction: the topics read here then hold every committed batch of *p* and nothing else.

Both partitions are read from the beginning to their end as a ``read_committed`` consumer sees
it (the last stable offset), without a consumer group. The output topic is compacted, so this
reads about one record per window within the retention (plus what compaction has not yet
cleaned); the dedup changelog holds the horizon's pairs (its retention is twice the default
horizon). Restore time grows with both: it is measured (``kmeter_worker_restore_seconds``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from kmeter.kafka.clients import running
from kmeter.kafka.settings import KafkaSettings


async def read_to_end(
    settings: KafkaSettings, partitions: list[TopicPartition], *, timeout_s: float
) -> dict[TopicPartition, list[bytes]]:
    """Every committed record value of ``partitions``, in log order (tombstones skipped)."""
    options: dict[str, Any] = settings.client_options()
    options["request_timeout_ms"] = max(options.get("request_timeout_ms", 0), 30_000)
    consumer = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    values: dict[TopicPartition, list[bytes]] = {tp: [] for tp in partitions}
    async with asyncio.timeout(timeout_s), running(consumer):
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                values[tp].extend(r.value for r in records if r.value is not None)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return values
