"""Which partition a key's records go to: aiokafka's default partitioner, remembered.

Every kmeter producer of usage events (the usage API, the sidecars) puts a record where
aiokafka's default partitioner does: murmur2 of the key (the subject) modulo the partition
count, as Kafka's Java client. So a subject's events land in one partition whoever sends them,
which the worker's deduplication and a subject's order rely on (docs/guarantees.md).

aiokafka computes murmur2 in Python, byte by byte: a few µs a record; remembering it cut the
usage API's CPU per ingested event by about an eighth (docs/benchmarks.md). A key's partition
depends on nothing but the key and the partition count, and subjects repeat, so
:class:`KeyPartitions` remembers it per partition count (topics of different namespaces may
have different counts). The memory is bounded: at most :data:`_REMEMBERED` keys per partition
count, none longer than :data:`_LONGEST` bytes (a longer key's partition is computed each time:
subjects have no length limit, and a client could otherwise fill it with large ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiokafka.partitioner import DefaultPartitioner

__all__ = ["KeyPartitions"]

_REMEMBERED: Final = 10_000
"""Keys remembered per partition count; past it that memory starts again (at most ~4 MB)."""
_LONGEST: Final = 256
"""Bytes of the longest key remembered."""


class KeyPartitions:
    """Each key's partition, as the default partitioner chooses it, remembered."""

    def __init__(self, most: int = _REMEMBERED) -> None:
        self._by_count: dict[int, dict[bytes, int]] = {}
        self._most = most

    def chooser(self, count: int) -> Callable[[bytes], int]:
        """``key -> partition`` for a topic of ``count`` partitions (``0 .. count - 1``, as the
        producer's metadata has them), which is what ``send`` would choose for the key."""
        memo = self._by_count.setdefault(count, {})
        most = self._most
        partitions = list(range(count))
        partitioner = DefaultPartitioner()

        def choose(key: bytes) -> int:
            partition = memo.get(key)
            if partition is None:
                partition = int(partitioner(key, partitions, partitions))
                if len(key) <= _LONGEST:
                    if len(memo) >= most:
                        memo.clear()
                    memo[key] = partition
            return partition

        return choose
