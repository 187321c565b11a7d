"""The window totals of one Meter, in memory, indexed for queries.

A :class:`MeterStore` holds the latest :class:`~kmeter.core.fold.WindowTotal` of every store key
— the output topic's partition and record key (``record_key(subject, group, windowStart)``) —
exactly what compaction keeps: a later record of a key replaces the earlier one, a tombstone
removes it. Entries of one window from several partitions are all yielded; the roll-up merges
them.

For queries it is indexed by subject, then by window start (a sorted list, so a time range is two
binary searches), and it yields ``(WindowKey, state)`` pairs for :func:`kmeter.core.rollup.roll_up`.
Group labels are arranged in the order of the Meter's *current* ``groupBy`` names; a name a
record lacks (``groupBy`` grew since) is the null group. If the Meter's ``groupBy`` changes,
:meth:`regroup` re-arranges everything.

Totals of another aggregation or window size than the Meter's (a Meter deleted with
``deletionPolicy: Retain`` and created again differently over the same topic) are not served;
they are counted in :attr:`foreign`.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kmeter.core.aggregation import Aggregation
from kmeter.core.fold import WindowKey, WindowTotal
from kmeter.core.windows import WindowSize


@dataclass(slots=True)
class _Entry:
    subject: str
    group: Mapping[str, str | None]
    start: int
    labels: tuple[str | None, ...]
    state: Any


@dataclass(slots=True)
class _Subject:
    """One subject's entries by window start, with the starts sorted."""

    starts: list[int] = field(default_factory=list)
    by_start: dict[int, dict[bytes, _Entry]] = field(default_factory=dict)

    def add(self, key: bytes, entry: _Entry) -> None:
        bucket = self.by_start.get(entry.start)
        if bucket is None:
            bucket = self.by_start[entry.start] = {}
            if not self.starts or entry.start > self.starts[-1]:
                self.starts.append(entry.start)
            else:
                insort(self.starts, entry.start)
        bucket[key] = entry

    def remove(self, key: bytes, start: int) -> None:
        bucket = self.by_start.get(start)
        if bucket is None:
            return
        bucket.pop(key, None)
        if not bucket:
            del self.by_start[start]
            index = bisect_left(self.starts, start)
            if index < len(self.starts) and self.starts[index] == start:
                del self.starts[index]

    def between(self, low: int | None, high: int | None) -> Iterator[_Entry]:
        starts = self.starts
        first = 0 if low is None else bisect_left(starts, low)
        last = len(starts) if high is None else bisect_left(starts, high)
        by_start = self.by_start
        for index in range(first, last):
            yield from by_start[starts[index]].values()


class MeterStore:
    """The materialized totals of one Meter."""

    def __init__(
        self, aggregation: Aggregation, window_size: WindowSize, group_names: tuple[str, ...]
    ) -> None:
        self.aggregation = aggregation
        self.window_size = window_size
        self.group_names = group_names
        self._entries: dict[bytes, _Entry] = {}
        self._subjects: dict[str, _Subject] = {}
        self.foreign = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _labels(self, group: Mapping[str, str | None]) -> tuple[str | None, ...]:
        return tuple([group.get(name) for name in self.group_names])

    def put(self, key: bytes, total: WindowTotal) -> None:
        """Keep ``total`` as the latest of ``key``."""
        if total.aggregation != self.aggregation or total.window_size != self.window_size:
            self.foreign += 1
            self.delete(key)
            return
        self.delete(key)
        start = int(total.window_start.timestamp())
        entry = _Entry(total.subject, total.group, start, self._labels(total.group), total.state)
        self._entries[key] = entry
        index = self._subjects.get(total.subject)
        if index is None:
            index = self._subjects[total.subject] = _Subject()
        index.add(key, entry)

    def delete(self, key: bytes) -> None:
        """Forget ``key`` (a tombstone)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        index = self._subjects[entry.subject]
        index.remove(key, entry.start)
        if not index.starts:
            del self._subjects[entry.subject]

    def regroup(self, group_names: tuple[str, ...]) -> None:
        """Re-arrange labels for a changed ``groupBy``."""
        self.group_names = group_names
        for entry in self._entries.values():
            entry.labels = self._labels(entry.group)

    def windows(
        self,
        subjects: Iterable[str] | None = None,
        low: int | None = None,
        high: int | None = None,
    ) -> Iterator[tuple[WindowKey, Any]]:
        """``(WindowKey, state)`` of the subjects asked (all when None) with a start in
        ``[low, high)`` (epoch seconds; None is unbounded)."""
        names = self._subjects.keys() if subjects is None else subjects
        for subject in names:
            index = self._subjects.get(subject)
            if index is None:
                continue
            for entry in index.between(low, high):
                yield (entry.subject, entry.labels, entry.start), entry.state

    def subjects(self, low: int | None = None, high: int | None = None) -> list[str]:
        """The subjects with usage in ``[low, high)``, sorted."""
        found = []
        for subject, index in self._subjects.items():
            starts = index.starts
            first = 0 if low is None else bisect_left(starts, low)
            if first < len(starts) and (high is None or starts[first] < high):
                found.append(subject)
        return sorted(found)
