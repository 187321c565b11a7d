"""The token bucket per subject (kmeter_sidecar.rate_limit), against a plain oracle.

The oracle is the textbook token bucket in exact fractions: ``tokens`` refills at ``R / P`` per
second up to ``B``; a request takes one whole token or is refused. The limiter (GCRA in scaled
integers) must agree with it on every decision, on the whole tokens left, and on the wait until
the next token — for any rate, burst and sequence of request times.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter_sidecar.rate_limit import NANOS, RateLimiter


class OracleBucket:
    """A plain token bucket over exact fractions (times in nanoseconds)."""

    def __init__(self, requests: int, per_seconds: int, burst: int) -> None:
        self.rate = Fraction(requests, per_seconds * NANOS)  # tokens per nanosecond
        self.burst = burst
        self.tokens: dict[str, Fraction] = {}
        self.updated: dict[str, int] = {}

    def _refill(self, subject: str, now: int) -> Fraction:
        tokens = self.tokens.get(subject, Fraction(self.burst))
        elapsed = now - self.updated.get(subject, now)
        tokens = min(Fraction(self.burst), tokens + elapsed * self.rate)
        self.tokens[subject], self.updated[subject] = tokens, now
        return tokens

    def take(self, subject: str, now: int) -> tuple[bool, int, int]:
        tokens = self._refill(subject, now)
        if tokens < 1:
            return False, 0, math.ceil((1 - tokens) / self.rate)
        tokens -= 1
        self.tokens[subject] = tokens
        return True, math.floor(tokens), self._until_next(tokens)

    def _until_next(self, tokens: Fraction) -> int:
        if tokens >= self.burst:
            return 0
        fraction = tokens - math.floor(tokens)
        return math.ceil((1 - fraction) / self.rate)


settings_ = settings(max_examples=300, deadline=None)


@settings_
@given(
    requests=st.integers(1, 50),
    per_seconds=st.integers(1, 3600),
    extra_burst=st.integers(0, 20),
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3 * NANOS)), max_size=80
    ),
)
def test_every_decision_remaining_and_wait_agree_with_a_plain_token_bucket(
    requests: int, per_seconds: int, extra_burst: int, steps: list[tuple[str, int]]
) -> None:
    burst = requests + extra_burst
    limiter = RateLimiter(requests, per_seconds, burst)
    oracle = OracleBucket(requests, per_seconds, burst)
    now = 10**12
    for subject, gap in steps:
        now += gap
        assert limiter.take(subject, now) == oracle.take(subject, now)


def test_a_full_bucket_admits_the_burst_then_one_request_per_token_interval() -> None:
    # 2 requests per second, bursts of 5: the documented example in docs/quotas.md
    limiter = RateLimiter(2, 1, 5)
    t0 = 1_000 * NANOS
    burst = [limiter.take("s", t0) for _ in range(6)]
    assert [admitted for admitted, _, _ in burst] == [True] * 5 + [False]
    assert [available for _, available, _ in burst[:5]] == [4, 3, 2, 1, 0]
    assert burst[5][2] == NANOS // 2, "a token every 0.5 s: retry in 0.5 s"
    assert limiter.take("s", t0 + NANOS // 2 - 1)[0] is False
    assert limiter.take("s", t0 + NANOS // 2)[0] is True
    assert limiter.take("s", t0 + NANOS // 2)[0] is False
    # idle for 10 s: full again, never more than the burst
    assert [limiter.take("s", t0 + 11 * NANOS)[0] for _ in range(6)] == [True] * 5 + [False]


def test_subjects_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(1, 60, 1)
    assert limiter.take("a", 0)[0] is True
    assert limiter.take("a", 0)[0] is False
    assert limiter.take("b", 0)[0] is True


def test_peek_takes_nothing_and_refund_gives_a_token_back() -> None:
    limiter = RateLimiter(1, 60, 2)
    limiter.take("a", 0)
    assert limiter.peek("a", 0) == (1, 60 * NANOS)
    assert limiter.peek("a", 0) == (1, 60 * NANOS)
    limiter.take("a", 0)
    limiter.refund("a")
    assert limiter.take("a", 0)[0] is True
    assert limiter.peek("never-seen", 0) == (2, 0)


def test_buckets_that_refilled_are_evicted_and_the_others_kept() -> None:
    limiter = RateLimiter(1, 10, 2)
    limiter.take("old", 0)  # full again 10 s later
    limiter.take("busy", 5 * NANOS)
    limiter.take("busy", 5 * NANOS)  # full again at 25 s
    assert limiter.evict_idle(9 * NANOS) == 0
    assert limiter.evict_idle(10 * NANOS) == 1
    assert len(limiter) == 1
    assert limiter.take("busy", 10 * NANOS)[0] is False, "its state survived the sweep"


def test_at_the_cap_full_buckets_go_first_then_the_oldest() -> None:
    limiter = RateLimiter(1, 10, 1, max_subjects=2)
    limiter.take("old", 0)
    limiter.take("mid", 5 * NANOS)  # full again at 15 s
    limiter.take("old", 10 * NANOS)  # still the oldest bucket; full again at 20 s
    limiter.take("new", 16 * NANOS)  # at the cap: "mid" is full, so it goes, not "old"
    assert len(limiter) == 2
    assert limiter.take("old", 16 * NANOS)[0] is False
    limiter.take("newer", 17 * NANOS)  # nothing full: the oldest, "old", goes
    assert len(limiter) == 2
    assert limiter.take("old", 17 * NANOS)[0] is True, "a fresh, full bucket: more permissive"


@pytest.mark.parametrize(("requests", "per", "burst"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_a_rate_of_zero_is_refused(requests: int, per: int, burst: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter(requests, per, burst)
