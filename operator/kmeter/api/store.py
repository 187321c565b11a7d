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

**Coarser levels.** Over a MINUTE meter, a month of one subject is 43,200 stored windows, and a
query that merged them one by one took hundreds of milliseconds. So each subject also keeps
*levels*: the merged state per group label of every UTC hour and UTC day with data
(:data:`LEVELS`; only the levels coarser than the Meter's storage). A level's merged states are a
cache, computed on demand from the level below (an hour from its minutes, a day from its hours)
and dropped when a window inside it changes, so a replaced total (compaction's "latest wins",
which no merge can subtract) is never served stale. :meth:`MeterStore.windows` yields the stored
windows or one level's buckets; the caller uses a level only where its buckets fit inside the
query's windows (see :mod:`.query`), so the answer is the same as from the stored windows.

Totals of another aggregation or window size than the Meter's (a Meter deleted with
``deletionPolicy: Retain`` and created again differently over the same topic) are not served;
they are counted in :attr:`foreign`.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kmeter.core.aggregation import Aggregation, aggregator_for
from kmeter.core.fold import WindowKey, WindowTotal
from kmeter.core.windows import WindowSize, storage_seconds

LEVELS: tuple[WindowSize, ...] = (WindowSize.HOUR, WindowSize.DAY)
"""The coarser UTC buckets kept per subject, finest first."""

Labels = tuple[str | None, ...]
Merge = Callable[[Any, Any], Any]


@dataclass(slots=True)
class _Entry:
    subject: str
    group: Mapping[str, str | None]
    start: int
    labels: tuple[str | None, ...]
    state: Any


def _insert(starts: list[int], start: int) -> None:
    if not starts or start > starts[-1]:
        starts.append(start)  # the usual case: windows arrive in time order
    else:
        insort(starts, start)


def _discard(starts: list[int], start: int) -> None:
    index = bisect_left(starts, start)
    if index < len(starts) and starts[index] == start:
        del starts[index]


def _span(starts: list[int], low: int | None, high: int | None) -> range:
    """The indexes of ``starts`` (sorted) within ``[low, high)``."""
    first = 0 if low is None else bisect_left(starts, low)
    last = len(starts) if high is None else bisect_left(starts, high)
    return range(first, last)


@dataclass(slots=True)
class _Level:
    """One subject's buckets of ``size`` seconds: which have data, and their cached merges."""

    size: int
    starts: list[int] = field(default_factory=list)
    children: dict[int, int] = field(default_factory=dict)  # bucket -> windows below it
    merged: dict[int, dict[Labels, Any]] = field(default_factory=dict)

    def bucket(self, start: int) -> int:
        return start - start % self.size

    def added(self, start: int) -> None:
        bucket = self.bucket(start)
        count = self.children.get(bucket, 0)
        if not count:
            _insert(self.starts, bucket)
        self.children[bucket] = count + 1

    def removed(self, start: int) -> None:
        bucket = self.bucket(start)
        count = self.children[bucket] - 1
        if count:
            self.children[bucket] = count
        else:
            del self.children[bucket]
            _discard(self.starts, bucket)


@dataclass(slots=True)
class _Subject:
    """One subject's entries by window start, with the starts sorted, and its levels."""

    levels: list[_Level]
    starts: list[int] = field(default_factory=list)
    by_start: dict[int, dict[bytes, _Entry]] = field(default_factory=dict)

    def add(self, key: bytes, entry: _Entry) -> None:
        start = entry.start
        bucket = self.by_start.get(start)
        if bucket is None:
            bucket = self.by_start[start] = {}
            _insert(self.starts, start)
            child = start
            for level in self.levels:  # a new window, a new child of its hour; maybe a new hour
                new_parent = level.bucket(child) not in level.children
                level.added(child)
                if not new_parent:
                    break
                child = level.bucket(child)
        bucket[key] = entry
        self.invalidate(start)

    def remove(self, key: bytes, start: int) -> None:
        bucket = self.by_start.get(start)
        if bucket is None:
            return
        bucket.pop(key, None)
        self.invalidate(start)
        if not bucket:
            del self.by_start[start]
            _discard(self.starts, start)
            child = start
            for level in self.levels:
                level.removed(child)
                if level.bucket(child) in level.children:
                    break
                child = level.bucket(child)

    def invalidate(self, start: int) -> None:
        for level in self.levels:
            level.merged.pop(level.bucket(start), None)

    def between(self, low: int | None, high: int | None) -> Iterator[_Entry]:
        starts, by_start = self.starts, self.by_start
        for index in _span(starts, low, high):
            yield from by_start[starts[index]].values()

    def merged(self, depth: int, bucket: int, merge: Merge) -> dict[Labels, Any]:
        """The merged state per labels of ``bucket`` at level ``depth`` (cached)."""
        level = self.levels[depth]
        found = level.merged.get(bucket)
        if found is not None:
            return found
        found = {}
        if depth == 0:
            parts: Iterable[tuple[Labels, Any]] = (
                (entry.labels, entry.state) for entry in self.between(bucket, bucket + level.size)
            )
        else:
            below = self.levels[depth - 1]
            parts = (
                item
                for index in _span(below.starts, bucket, bucket + level.size)
                for item in self.merged(depth - 1, below.starts[index], merge).items()
            )
        for labels, state in parts:
            current = found.get(labels)
            found[labels] = state if current is None else merge(current, state)
        level.merged[bucket] = found
        return found


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
        self._merge: Merge = aggregator_for(aggregation).merge
        stored = storage_seconds(window_size)
        self.levels = tuple(
            level for level in LEVELS if storage_seconds(level) > stored
        )  # the sizes of the _Subject levels, finest first
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
            index = self._subjects[total.subject] = _Subject(
                [_Level(storage_seconds(level)) for level in self.levels]
            )
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
        for index in self._subjects.values():
            for level in index.levels:
                level.merged.clear()

    def windows(
        self,
        subjects: Iterable[str] | None = None,
        low: int | None = None,
        high: int | None = None,
        level: WindowSize | None = None,
    ) -> Iterator[tuple[WindowKey, Any]]:
        """``(WindowKey, state)`` of the subjects asked (all when None) with a start in
        ``[low, high)`` (epoch seconds; None is unbounded).

        With ``level`` (one of :attr:`levels`), the merged UTC buckets of that size instead of
        the stored windows: for a query window made of whole buckets, the same answer from fewer
        items. ``low`` and ``high`` must then lie on the level's boundaries.
        """
        names = self._subjects.keys() if subjects is None else subjects
        depth = None if level is None else self.levels.index(level)
        merge = self._merge
        for subject in names:
            index = self._subjects.get(subject)
            if index is None:
                continue
            if depth is None:
                for entry in index.between(low, high):
                    yield (subject, entry.labels, entry.start), entry.state
                continue
            buckets = index.levels[depth].starts
            for position in _span(buckets, low, high):
                bucket = buckets[position]
                for labels, state in index.merged(depth, bucket, merge).items():
                    yield (subject, labels, bucket), state

    def subjects(self, low: int | None = None, high: int | None = None) -> list[str]:
        """The subjects with usage in ``[low, high)``, sorted."""
        found = []
        for subject, index in self._subjects.items():
            starts = index.starts
            first = 0 if low is None else bisect_left(starts, low)
            if first < len(starts) and (high is None or starts[first] < high):
                found.append(subject)
        return sorted(found)
