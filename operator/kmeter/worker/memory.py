"""How many (source, id) pairs a Meter's worker may remember, from its memory limit (pure).

The worker's deduplicator (:mod:`kmeter.core.dedup`) keeps up to ``KMETER_DEDUP_MAX_ENTRIES``
pairs *per ingest partition* it owns. Its own default (2,000,000, about 300 MB per partition)
suits a worker sized for it, not the default 512Mi container: a worker that owns three
partitions would fill 900 MB and be OOM-killed, restart, restore the same pairs, and be killed
again. So, unless ``KMETER_DEDUP_MAX_ENTRIES`` is set, the worker derives the bound from its
container's memory limit (``KMETER_MEMORY_LIMIT``, which the operator fills from the downward
API's ``limits.memory``) and the ingest topic's partition count:

* the process itself and the batches in flight take :data:`BASE_BYTES` (measured 2026-11-25:
  55 MB RSS at rest; 200 MB peak while folding 500,000 events over 3 partitions with
  ``bench/worker.py``, of which about 75 MB were those events' dedup pairs);
* of the rest, :data:`DEDUP_SHARE` goes to the deduplicator (headroom for fragmentation and the
  window state), at :data:`BYTES_PER_ENTRY` a pair (143 bytes measured for a UUID id and a
  short source, rounded up);
* divided by the Meter's partition count, not by partitions per replica: after a rebalance (a
  replica lost) one worker may own every partition, and must not then be killed for it.

Without a memory limit the worker keeps its own default (the downward API then gives the
node's allocatable memory, and :data:`~kmeter.core.dedup.DEFAULT_MAX_ENTRIES` caps the bound).
A bound of fewer pairs than the producers send in the horizon makes dedup forget the oldest
pairs early — counted, and exported
as ``kmeter_worker_dedup_evicted``; raise the memory limit (``spec.workers.resources``)
to cover the rate (docs/operator.md).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

from kmeter.core.dedup import DEFAULT_MAX_ENTRIES

BASE_BYTES: Final = 192 * 2**20
DEDUP_SHARE: Final = Decimal("0.8")
BYTES_PER_ENTRY: Final = 160
MIN_ENTRIES: Final = 10_000

_SUFFIXES: Final = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY: Final = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]?)")


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (``512Mi``, ``1G``, ``1e9``, ``536870912``) in bytes."""
    if isinstance(quantity, int):
        return quantity
    match = _QUANTITY.fullmatch(quantity.strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity") from None
    return int(number * _SUFFIXES[match.group(2)])


def dedup_max_entries(memory_limit: str | int | None, partitions: int) -> int | None:
    """The ``KMETER_DEDUP_MAX_ENTRIES`` for a worker with this limit, or None (no limit)."""
    if memory_limit is None:
        return None
    spare = max(quantity_bytes(memory_limit) - BASE_BYTES, 0)
    entries = int(spare * DEDUP_SHARE) // BYTES_PER_ENTRY // max(partitions, 1)
    return max(MIN_ENTRIES, min(entries, DEFAULT_MAX_ENTRIES))
