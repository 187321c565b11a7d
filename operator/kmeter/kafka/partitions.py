"""Which partition a key's records go to: aiokafka's default partitioner, remembered.

Every kmeter producer of usage events (the usage API, the sidecars) puts a record where
aiokafka's default partitioner does: murmur2 of the key (the subject) modulo the partition
count, as Kafka's Java client. So a subject's events land in one partition whoever sends them,
which the worker's deduplication and a subject's order rely on (docs/guarantees.md).

aiokafka computes murmur2 in Python, byte by byte: a few µs a record; remembering it cut the
usage API's CPU per ingested event by about an eighth (docs/benchmarks.md). A key's partition
depends on nothing but the key and the partition count, and subjects repeat, so
:class:`KeyPartitions` remembers it per partition count (topics of different namespaces may
have different counts). The memory is bounded when a chooser is made: a call adds at most the
keys of one batch beyond :data:`_REMEMBERED`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiokafka.partitioner import DefaultPartitioner

__all__ = ["KeyPartitions"]

_REMEMBERED: Final = 10_000
"""Keys remembered per partition count; past it that memory starts again (about 1 MB)."""


class KeyPartitions:
    """Each key's partition, as the default partitioner chooses it, remembered."""

    def __init__(self, most: int = _REMEMBERED) -> None:
        self._by_count: dict[int, dict[bytes, int]] = {}
        self._most = most

    def chooser(self, count: int) -> Callable[[bytes], int]:
        """``key -> partition`` for a topic of ``count`` partitions (``0 .. count - 1``, as the
        producer's metadata has them), which is what ``send`` would choose for the key."""
        memo = self._by_count.setdefault(count, {})
        if len(memo) > self._most:
            memo.clear()
        partitions = list(range(count))
        partitioner = DefaultPartitioner()

        def choose(key: bytes) -> int:
            partition = memo.get(key)
            if partition is None:
                partition = memo[key] = int(partitioner(key, partitions, partitions))
            return partition

        return choose
