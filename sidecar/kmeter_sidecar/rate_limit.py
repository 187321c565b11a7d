"""Rate limits: a token bucket per subject, in exact integer arithmetic (pure, no I/O).

A Quota's ``rateLimit: {requests: R, per: P, burst: B}`` gives every subject a bucket that holds
at most ``B`` tokens and gains ``R`` tokens every ``P`` seconds (one token every ``P / R``
seconds, continuously). A request takes one token; with no whole token in the bucket it is
refused. A subject never seen — or idle long enough to refill — has a full bucket, so it may
send ``B`` requests at once and then ``R`` per ``P`` seconds.

**Per sidecar replica.** Each sidecar process has its own buckets: with ``n`` replicas of a
workload behind a Service, a subject can get up to ``n`` times the rate (and ``n`` bursts).
The buckets are never shared through Kafka: a rate limit is about the next second, and a
round trip through the decisions topic takes longer than the window it would enforce.

**The arithmetic** is GCRA (the "generic cell rate algorithm", the virtual-scheduling form of a
token bucket): per subject one integer, the *theoretical arrival time* ``tat`` — the instant at
which the bucket would be full again. Times are integer nanoseconds (``time.monotonic_ns``), and
every quantity is scaled by ``R`` so that the interval between tokens, ``P * 10**9 / R`` ns, is
an integer (``P * 10**9`` in scaled units): no rounding anywhere, so the bucket agrees exactly
with a plain token bucket computed in fractions (the unit tests check that, with hypothesis).

* a request at ``now`` is admitted when ``now >= tat - (B - 1) * T``; then
  ``tat = max(tat, now) + T``;
* the tokens available at ``now`` are ``B - (tat - now) / T`` (``B`` when ``tat <= now``);
* a refused request may retry after ``tat - (B - 1) * T - now`` (the next whole token).

**Bounded memory.** A bucket that has refilled (``tat <= now``) carries no information — a new
one would be identical — so :meth:`RateLimiter.evict_idle`, run periodically by the sidecar,
drops every such bucket: memory follows the subjects active within the last ``B / R * P``
seconds. A hard cap (``max_subjects``) bounds it even under a flood of distinct subjects: at the
cap, full buckets are dropped first, then the oldest-created bucket. Dropping a bucket that is
not full gives its subject a fresh full bucket — more permissive, never more restrictive.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NANOS", "RateLimiter"]

NANOS: Final = 1_000_000_000


class RateLimiter:
    """The token buckets of one rate-limit policy, one per subject; see the module docstring."""

    __slots__ = ("_buckets", "_interval", "_requests", "_tolerance", "burst", "max_subjects")

    def __init__(
        self, requests: int, per_seconds: int, burst: int, *, max_subjects: int = 100_000
    ) -> None:
        if requests < 1 or per_seconds < 1 or burst < 1 or max_subjects < 1:
            raise ValueError("requests, per_seconds, burst and max_subjects must be at least 1")
        self._requests = requests
        self.burst = burst
        self.max_subjects = max_subjects
        # Scaled units: one nanosecond is `requests` units; one token is `per_seconds * 1e9`.
        self._interval = per_seconds * NANOS
        self._tolerance = (burst - 1) * self._interval
        self._buckets: dict[str, int] = {}  # subject -> tat (scaled)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, subject: str, now_ns: int) -> tuple[bool, int, int]:
        """Take a token for a request of ``subject`` at ``now_ns``.

        Returns ``(admitted, available, wait_ns)``: whether the request may pass; the whole
        tokens left afterwards; and the nanoseconds until the next token arrives (for a
        refused request: until it may retry; 0 when the bucket is full again).
        """
        now = now_ns * self._requests
        buckets = self._buckets
        tat = buckets.get(subject)
        if tat is None or tat < now:
            tat = now
            if subject not in buckets and len(buckets) >= self.max_subjects:
                self._make_room(now)
        interval = self._interval
        allowed_from = tat - self._tolerance
        if now < allowed_from:
            return False, 0, _ceil_div(allowed_from - now, self._requests)
        tat += interval
        buckets[subject] = tat
        return True, *self._state(tat, now)

    def peek(self, subject: str, now_ns: int) -> tuple[int, int]:
        """``(available, wait_ns)`` for ``subject`` at ``now_ns`` without taking a token."""
        now = now_ns * self._requests
        tat = self._buckets.get(subject, now)
        return self._state(max(tat, now), now)

    def refund(self, subject: str) -> None:
        """Give back the token of a request that was admitted here but refused elsewhere."""
        tat = self._buckets.get(subject)
        if tat is not None:
            self._buckets[subject] = tat - self._interval

    def _state(self, tat: int, now: int) -> tuple[int, int]:
        """Whole tokens available at ``now`` and nanoseconds until the next one."""
        debt = tat - now  # how far the bucket is from full, in scaled units (>= 0)
        if debt <= 0:
            return self.burst, 0
        interval = self._interval
        missing, partial = divmod(debt, interval)
        available = self.burst - missing - (1 if partial else 0)
        until_next = partial if partial else interval
        return available, _ceil_div(until_next, self._requests)

    def evict_idle(self, now_ns: int) -> int:
        """Drop the buckets that are full again at ``now_ns``; how many were dropped."""
        now = now_ns * self._requests
        buckets = self._buckets
        idle = [subject for subject, tat in buckets.items() if tat <= now]
        for subject in idle:
            del buckets[subject]
        return len(idle)

    def _make_room(self, now: int) -> None:
        buckets = self._buckets
        for subject in [subject for subject, tat in buckets.items() if tat <= now]:
            del buckets[subject]
        while len(buckets) >= self.max_subjects:
            del buckets[next(iter(buckets))]  # the oldest-created bucket


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
