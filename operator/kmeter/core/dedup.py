"""Deduplication of events by (``source``, ``id``) within a time horizon, in bounded memory.

CloudEvents says (``source``, ``id``) identifies an event: a producer that retries sends the same
pair again. A :class:`Deduplicator` remembers each pair it has accepted for ``horizon``
(default 24 hours) and answers whether a pair is new.

**Time is the caller's.** The deduplicator has a clock that only moves when the caller calls
:meth:`Deduplicator.advance` with ``now``, and never backwards (an earlier ``now`` is ignored).
A pair accepted at clock ``t`` is remembered while the clock is before ``t + horizon``. Use the
*log's* time as ``now`` (the Kafka record timestamp of the batch), not the wall clock: replaying
the same log then reproduces the same decisions. Expiring by the log's time rather than by the
event's own ``time`` is deliberate: a retry of a week-old event is still caught when its first
copy arrived recently, and the memory held depends on the arrival rate only.

**Memory bound.** At most ``max_entries`` pairs are remembered (default
:data:`DEFAULT_MAX_ENTRIES`). When a new pair would exceed it, the *oldest* pair is forgotten
early and :attr:`DedupStats.evicted` counts it: from then on a duplicate of a forgotten pair is
not caught. The guarantee degrades gracefully instead of failing: :meth:`Deduplicator.coverage`
tells how far back the remembered pairs actually reach (the effective horizon). Export both as
metrics and alert when ``evicted`` grows. Each entry costs about ``100 + len(source) + len(id)``
bytes (a key string plus dict and deque slots; measured 143 bytes for a UUID id, and
:meth:`memory_bytes` estimates the total), so the default bound holds roughly 300 MB and covers
24 hours of up to 23 events per second: size ``max_entries`` to the rate of your producers.

Only accepted events should be recorded: the fold records an event after it was counted, so a
rejected event whose corrected version is resent with the same id is counted once.

The structure is a dict (key → expiry) plus a deque of keys in acceptance order; since the
clock is monotonic and the horizon fixed, acceptance order is expiry order, so expiring and
evicting both pop from the front in O(1).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["DEFAULT_HORIZON", "DEFAULT_MAX_ENTRIES", "DedupStats", "Deduplicator"]

DEFAULT_HORIZON: Final = timedelta(hours=24)
DEFAULT_MAX_ENTRIES: Final = 2_000_000


@dataclass(frozen=True, slots=True)
class DedupStats:
    """Counters of a :class:`Deduplicator` since it was created."""

    entries: int
    """Pairs remembered now."""
    accepted: int
    """Pairs accepted as new."""
    duplicates: int
    """Pairs refused as duplicates by :meth:`Deduplicator.add`."""
    expired: int
    """Pairs forgotten because their horizon passed."""
    evicted: int
    """Pairs forgotten *early* to stay within ``max_entries`` (duplicates of these go unseen)."""


def _key(source: str, event_id: str) -> str:
    # Length-prefixed so that no two (source, id) pairs share a key; one string is about
    # 100 bytes lighter than a tuple of two.
    return f"{len(source)}:{source}{event_id}"


def _split(key: str) -> tuple[str, str]:
    length, _, rest = key.partition(":")
    size = int(length)
    return rest[:size], rest[size:]


def _seconds(moment: datetime) -> float:
    if moment.utcoffset() is None:
        raise ValueError("times passed to the deduplicator must be timezone-aware")
    return moment.timestamp()


class Deduplicator:
    """Remembers accepted (source, id) pairs for ``horizon`` of the caller's clock."""

    def __init__(
        self, horizon: timedelta = DEFAULT_HORIZON, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if horizon <= timedelta(0):
            raise ValueError("the deduplication horizon must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.horizon: Final = horizon
        self.max_entries: Final = max_entries
        self._horizon_seconds = horizon.total_seconds()
        self._expiry_by_key: dict[str, float] = {}
        self._order: deque[str] = deque()
        self._clock: float | None = None
        self._expiry = 0.0  # expiry of pairs accepted at the current clock (one shared float)
        self._key_bytes = 0
        self._accepted = 0
        self._duplicates = 0
        self._expired = 0
        self._evicted = 0
        self._last_evicted_expiry: float | None = None

    # --- the clock --------------------------------------------------------------------------

    @property
    def clock(self) -> datetime | None:
        """The latest ``now`` passed to :meth:`advance` (None before the first)."""
        if self._clock is None:
            return None
        return datetime.fromtimestamp(self._clock, UTC)

    def advance(self, now: datetime) -> int:
        """Move the clock to ``now`` (if later) and forget expired pairs; return how many."""
        seconds = _seconds(now)
        if self._clock is not None and seconds <= self._clock:
            return 0
        self._clock = seconds
        self._expiry = seconds + self._horizon_seconds
        expiry_by_key = self._expiry_by_key
        order = self._order
        forgotten = 0
        while order and expiry_by_key[order[0]] <= seconds:
            self._forget(order.popleft())
            forgotten += 1
        self._expired += forgotten
        return forgotten

    # --- queries and updates ----------------------------------------------------------------

    def contains(self, source: str, event_id: str, now: datetime | None = None) -> bool:
        """Whether the pair is remembered and not expired at ``now`` (default: the clock).

        Read-only: it neither records the pair nor moves the clock.
        """
        expiry = self._expiry_by_key.get(_key(source, event_id))
        if expiry is None:
            return False
        if now is None:
            return self._clock is None or expiry > self._clock
        moment = _seconds(now)
        if self._clock is not None:
            moment = max(moment, self._clock)
        return expiry > moment

    def view(self, now: datetime) -> Callable[[str, str], bool]:
        """A fast read-only ``contains(source, id)`` for many lookups at the same ``now``.

        The view reads the live structure: use it before the next :meth:`add` or
        :meth:`advance`.
        """
        moment = _seconds(now)
        if self._clock is not None:
            moment = max(moment, self._clock)
        get = self._expiry_by_key.get

        def remembered(source: str, event_id: str) -> bool:
            expiry = get(f"{len(source)}:{source}{event_id}")
            return expiry is not None and expiry > moment

        return remembered

    def lookup(self, now: datetime) -> tuple[Callable[[str], float | None], float]:
        """The fastest read-only check, for the fold's loop: ``(expiry_of, moment)``; a pair is
        remembered when ``expiry_of(key)`` is not None and greater than ``moment``, where
        ``key`` is ``f"{len(source)}:{source}{event_id}"``. Valid until the next :meth:`add`
        or :meth:`advance`, like :meth:`view`."""
        moment = _seconds(now)
        if self._clock is not None:
            moment = max(moment, self._clock)
        return self._expiry_by_key.get, moment

    def add(self, source: str, event_id: str) -> bool:
        """Record the pair at the current clock; True if it is new, False for a duplicate.

        The clock must be set (:meth:`advance`) first.
        """
        key = _key(source, event_id)
        expiry_by_key = self._expiry_by_key
        if key in expiry_by_key:
            self._duplicates += 1
            return False
        if self._clock is None:
            raise RuntimeError("call advance(now) before add(): the deduplicator has no clock")
        expiry_by_key[key] = self._expiry
        self._order.append(key)
        self._key_bytes += sys.getsizeof(key)
        self._accepted += 1
        if len(expiry_by_key) > self.max_entries:
            self._evict()
        return True

    def add_all(self, pairs: Iterable[tuple[str, str]]) -> int:
        """:meth:`add` every pair (the same, in one tight loop); return how many were new."""
        if self._clock is None:
            raise RuntimeError("call advance(now) before add_all(): the deduplicator has no clock")
        expiry_by_key = self._expiry_by_key
        append = self._order.append
        expiry = self._expiry
        size_of = sys.getsizeof
        added = key_bytes = 0
        for source, event_id in pairs:
            key = f"{len(source)}:{source}{event_id}"
            if key in expiry_by_key:
                continue
            expiry_by_key[key] = expiry
            append(key)
            key_bytes += size_of(key)
            added += 1
        self._key_bytes += key_bytes
        self._accepted += added
        self._evict()
        return added

    def _evict(self) -> None:
        expiry_by_key = self._expiry_by_key
        while len(expiry_by_key) > self.max_entries:
            evicted = self._order.popleft()
            self._last_evicted_expiry = expiry_by_key[evicted]
            self._forget(evicted)
            self._evicted += 1

    def _forget(self, key: str) -> None:
        del self._expiry_by_key[key]
        self._key_bytes -= sys.getsizeof(key)

    # --- measurements -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._expiry_by_key)

    def __contains__(self, pair: object) -> bool:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            return False
        source, event_id = pair
        return isinstance(source, str) and isinstance(event_id, str) and self.contains(*pair)

    @property
    def stats(self) -> DedupStats:
        """The counters (see :class:`DedupStats`)."""
        return DedupStats(
            len(self._expiry_by_key),
            self._accepted,
            self._duplicates,
            self._expired,
            self._evicted,
        )

    def coverage(self) -> timedelta:
        """The effective horizon: how far back a first copy may lie and its duplicate still be
        caught. ``horizon``, unless pairs that would still be within it were evicted early
        (``max_entries`` too small for the arrival rate); then the age of the oldest pair kept.
        """
        clock = self._clock
        if clock is None or self._last_evicted_expiry is None or self._last_evicted_expiry <= clock:
            return self.horizon
        oldest_accepted = self._expiry_by_key[self._order[0]] - self._horizon_seconds
        return timedelta(seconds=clock - oldest_accepted)

    def memory_bytes(self) -> int:
        """An estimate of the memory held: the key strings, the dict and the deque."""
        # Expiries are floats shared by every pair accepted at the same clock: not counted.
        return self._key_bytes + sys.getsizeof(self._expiry_by_key) + sys.getsizeof(self._order)

    # --- persistence --------------------------------------------------------------------------

    def entries(self) -> Iterator[tuple[str, str, datetime]]:
        """Every remembered pair with the clock time it was accepted, oldest first."""
        for key in self._order:
            source, event_id = _split(key)
            accepted = self._expiry_by_key[key] - self._horizon_seconds
            yield source, event_id, datetime.fromtimestamp(accepted, UTC)

    @classmethod
    def restore(
        cls,
        entries: Iterable[tuple[str, str, datetime]],
        now: datetime,
        horizon: timedelta = DEFAULT_HORIZON,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> Deduplicator:
        """Rebuild a deduplicator from :meth:`entries` (oldest first), with its clock at ``now``."""
        restored = cls(horizon, max_entries)
        for source, event_id, accepted in entries:
            restored.advance(accepted)
            restored.add(source, event_id)
        restored.advance(now)
        return restored
