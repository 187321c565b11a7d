"""Quota enforcement at the sidecar: the table of policies and decisions, and a verdict per request.

Pure: no I/O and no clock of its own — the wall clock (with ``KMETER_CLOCK_OFFSET_SECONDS``
added) and the monotonic clock are injected, so the unit tests control time. The decisions
follower (:mod:`kmeter_sidecar.decisions`) feeds it the records of the namespace's decisions
topic (:mod:`kmeter.decisions`); the proxy asks :meth:`QuotaTable.check` once per request, after
the subject is known.

**Which quotas.** A sidecar enforces the quotas whose Meter counts the event type it emits
(``policy.eventType == --event-type``), for the subjects each quota covers (all, the named ones,
and those with an override). Decisions for a quota whose policy has not arrived yet are kept
aside and adopted when it does (a policy and its decisions may sit on different partitions).

**Usage quotas** (``enforcement: Block``). A subject is refused with 429 when its usage in the
current period is at least its limit (``limit_for``: its override, else the quota's): with a
limit of 100 requests, request 101 onward is refused. The usage is the latest decision's
``used`` while ``periodStart <= now < periodEnd``; outside that interval the decision says
nothing and the subject has used nothing of the new period — the period rolls over here, with
no new record. The sidecar decides ``blocked`` itself from ``used`` and the *current* policy, so
raising a limit unblocks at once, without waiting for re-evaluated decisions. ``Notify`` quotas
never refuse.

**Counting locally between decisions** (for a policy with ``countsRequests``: a ``COUNT`` Meter
without ``filterGroupBy``, where each request is one unit; or with ``sumsValue``: a ``SUM``
Meter without ``filterGroupBy``, where each event adds the number at that JSONPath of its data).
The worker's decision lags the requests by the time an event takes through Kafka and back; at
1,000 requests/s that lag would let hundreds of requests past a limit of 100. So the sidecar
adds to the decision's ``used`` the requests *it* admitted since that decision arrived — or, for
a summing quota, the values of the events it emitted since (:meth:`QuotaTable.record`, called
with each event as it is emitted: a value read from the response is only known then) — and,
for a subject with no decision yet, those of the current period. This never refuses a subject
that is truly under its limit (for sums: while values are not negative; a negative value, a
refund, is not counted locally): a request admitted (an event emitted) after a decision arrived
cannot be counted in it (its event is sent after the request, the decision was computed before
it arrived), so the estimate is a lower bound of the true usage; other replicas' requests are
simply not seen. When a new decision of the same period arrives the estimate becomes
``max(decision.used, estimate)`` — both are lower bounds — and counting restarts from there.
The overshoot that remains comes from requests in flight (a summing quota learns a request's
value only when its response ends) and from the other replicas of the workload, until the next
decision.

**Rate limits** (``rateLimit``) are token buckets per subject and *per sidecar replica*
(:mod:`kmeter_sidecar.rate_limit`), enforced whatever the quota's ``enforcement``. A request
refused by a usage quota does not take a token; one refused by a rate limit gives back the
tokens other rate limits gave it.

**Headers.** Every response to a covered subject carries ``RateLimit-Policy`` and ``RateLimit``
(:mod:`kmeter_sidecar.ratelimit_headers`) for the ``Block`` quotas and the rate limits that
apply to it; a 429 adds ``Retry-After`` (until the period ends, or until the next token) and an
``application/problem+json`` body naming the quota.

**Memory.** The table holds the policies, the decisions of the sidecar's quotas (one per subject
that used a quota in its period, as the topic does), entries for subjects counted locally
before their first decision (at most ``max_subjects`` per quota; beyond that such subjects are
simply not counted locally), and the rate-limit buckets (bounded as their module says).
:meth:`QuotaTable.sweep` drops entries whose period has ended and buckets that are full again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Final

from kmeter.core.jsonpath import ExtractionError, JSONPathError, compile_path, number_at
from kmeter.core.jsonpath import Path as JSONPath
from kmeter.core.windows import WindowSize, local_window, time_zone
from kmeter.decisions import (
    DecisionFormatError,
    QuotaPolicy,
    SubjectDecision,
    decode_decision,
    decode_policy,
    parse_key,
)
from kmeter_sidecar.problems import problem_response
from kmeter_sidecar.rate_limit import NANOS, RateLimiter
from kmeter_sidecar.ratelimit_headers import (
    QUOTA_EXCEEDED,
    delay_seconds,
    header_fields,
    policy_item,
    service_item,
    sf_string,
)

__all__ = ["QuotaTable", "Refusal", "Verdict"]

log = logging.getLogger("kmeter_sidecar.quotas")

ZERO: Final = Decimal(0)
ONE: Final = Decimal(1)
PERIODS: Final = frozenset({"HOUR", "DAY", "MONTH"})
ENFORCEMENTS: Final = frozenset({"Block", "Notify"})
UNAVAILABLE_RETRY_AFTER: Final = 5


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, and everything its answer says."""

    reason: str  # quota | rate_limit | decisions_unavailable (the metric's label)
    status: int
    detail: str
    headers: bytes = b""
    members: Mapping[str, object] = field(default_factory=dict)
    type_uri: str = QUOTA_EXCEEDED

    def response(self, *, close: bool) -> bytes:
        """The complete HTTP response (problem+json)."""
        return problem_response(
            self.status,
            self.detail,
            close=close,
            type_uri=self.type_uri,
            members=self.members,
            headers=self.headers,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one request: refused, or admitted with RateLimit header fields."""

    refusal: Refusal | None
    headers: list[tuple[bytes, bytes]]


class _Usage:
    """A subject's usage of one quota in one period, as the sidecar knows it."""

    __slots__ = ("base", "count", "end", "generation", "start")

    def __init__(
        self, start: float, end: float, base: Decimal, count: Decimal, generation: int | None
    ) -> None:
        self.start = start
        self.end = end
        self.base = base  # the decision's used (or a larger lower bound); 0 without a decision
        self.count = count  # units admitted or emitted here since (local-counting quotas only)
        self.generation = generation  # of the decision it came from; None: counted locally


class _Quota:
    """A policy this sidecar enforces, prepared for the request path."""

    __slots__ = (
        "block",
        "counts",
        "every",
        "items",
        "label",
        "limiter",
        "local",
        "meter_param",
        "name",
        "period_end",
        "period_start",
        "policy",
        "rate_item",
        "rate_label",
        "sums",
        "usage",
        "zone",
    )

    def __init__(
        self, policy: QuotaPolicy, zone: tzinfo, previous: _Quota | None, max_subjects: int
    ) -> None:
        self.policy = policy
        self.name = policy.quota
        self.label = sf_string(policy.quota)
        self.block = policy.enforcement == "Block"
        self.counts = policy.counts_requests
        self.sums = _sums_path(policy)
        self.local = self.counts or self.sums is not None  # usage counted here between decisions
        self.every = WindowSize(policy.period)
        self.zone = zone
        self.meter_param = "" if self.counts else f";kmeter-meter={sf_string(policy.meter)}"
        self.period_start = self.period_end = 0.0
        self.items: dict[tuple[Decimal, int], str] = {}  # RateLimit-Policy items by (limit, w)
        self.usage: dict[str, _Usage] = {} if previous is None else previous.usage
        rate = policy.rate_limit
        self.limiter: RateLimiter | None = None
        self.rate_label = sf_string(f"{policy.quota}/rate")
        self.rate_item = ""
        if rate is not None:
            old = None if previous is None else previous.policy.rate_limit
            if previous is not None and previous.limiter is not None and old == rate:
                self.limiter = previous.limiter  # same rate: the buckets carry on
            else:
                self.limiter = RateLimiter(
                    rate.requests, rate.per_seconds, rate.burst, max_subjects=max_subjects
                )
            self.rate_item = policy_item(
                self.rate_label, rate.requests, rate.per_seconds, f";kmeter-burst={rate.burst}"
            )
        if previous is not None and previous.local and not self.local:
            for subject, usage in list(self.usage.items()):
                if usage.generation is None:
                    del self.usage[subject]
                else:
                    usage.count = ZERO

    def period(self, now: float) -> tuple[float, float]:
        """The calendar period holding ``now`` (epoch seconds), cached until it ends."""
        if not self.period_start <= now < self.period_end:
            window = local_window(datetime.fromtimestamp(now, UTC), self.every, self.zone)
            self.period_start = window.start.timestamp()
            self.period_end = window.end.timestamp()
        return self.period_start, self.period_end


@dataclass(slots=True)
class _Standing:
    """A subject's usage and limit of one ``Block`` quota, as one request sees them."""

    quota: _Quota
    usage: _Usage | None
    used: Decimal
    limit: Decimal
    start: float
    end: float

    def policy_item(self) -> str:
        quota = self.quota
        key = (self.limit, round(self.end - self.start))
        item = quota.items.get(key)
        if item is None:
            if len(quota.items) > 64:  # many overrides: keep the cache small
                quota.items.clear()
            item = quota.items[key] = policy_item(
                quota.label, int(self.limit), key[1], quota.meter_param
            )
        return item

    def service_item(self, now: float) -> str:
        remaining = self.limit - self.used
        return service_item(
            self.quota.label, int(remaining) if remaining > 0 else 0, math.ceil(self.end - now)
        )


def _check_policy(policy: QuotaPolicy) -> tzinfo:
    """The policy's time zone, or DecisionFormatError when the policy cannot be enforced."""
    if policy.period not in PERIODS:
        raise DecisionFormatError(f"period: {policy.period!r} is not HOUR, DAY or MONTH")
    if policy.enforcement not in ENFORCEMENTS:
        raise DecisionFormatError(f"enforcement: {policy.enforcement!r} is not Block or Notify")
    if policy.limit <= 0 or any(limit <= 0 for limit in policy.overrides.values()):
        raise DecisionFormatError("limits must be greater than 0")
    rate = policy.rate_limit
    if rate is not None and min(rate.requests, rate.per_seconds, rate.burst) < 1:
        raise DecisionFormatError("rateLimit: requests, perSeconds and burst must be at least 1")
    try:
        sf_string(policy.quota)
        sf_string(policy.meter)
        return time_zone(policy.time_zone)
    except ValueError as error:
        raise DecisionFormatError(str(error)) from None


def _sums_path(policy: QuotaPolicy) -> JSONPath | None:
    """The compiled ``sumsValue`` of a policy; None without one, or when it does not compile
    (then the quota is enforced from decisions alone)."""
    if policy.sums_value is None:
        return None
    try:
        return compile_path(policy.sums_value)
    except JSONPathError as error:
        log.warning("quota %s: sumsValue %r ignored: %s", policy.quota, policy.sums_value, error)
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class QuotaTable:
    """The policies and decisions of the namespace, as this sidecar enforces them."""

    def __init__(
        self,
        event_type: str,
        *,
        wall: Callable[[], float],
        mono_ns: Callable[[], int],
        max_subjects: int = 100_000,
        fail_closed: bool = False,
    ) -> None:
        self.event_type = event_type
        self._wall = wall
        self._mono_ns = mono_ns
        self.max_subjects = max_subjects
        self.fail_closed = fail_closed
        self._quotas: dict[str, _Quota] = {}  # enforced here, by quota name
        self._elsewhere: set[str] = set()  # quotas on other event types
        self._pending: dict[str, dict[str, SubjectDecision]] = {}  # policy not seen yet
        self._active: tuple[_Quota, ...] = ()
        self._summing: tuple[_Quota, ...] = ()
        self._closed: Refusal | None = None
        self.summing = False
        self.engaged = False
        """Whether :meth:`check` has anything to do (the proxy skips it otherwise)."""

    # --- fed by the decisions follower ----------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the decisions topic; DecisionFormatError when it is malformed
        (the table is then unchanged)."""
        if key is None:
            raise DecisionFormatError("a record without a key")
        quota, subject = parse_key(key)
        if subject is None:
            if value is None:
                self.remove_policy(quota)
                return
            policy = decode_policy(value)
            if policy.quota != quota:
                raise DecisionFormatError(f"key names quota {quota!r}, value {policy.quota!r}")
            self.set_policy(policy)
            return
        if value is None:
            self.remove_decision(quota, subject)
            return
        decision = decode_decision(value)
        if (decision.quota, decision.subject) != (quota, subject):
            raise DecisionFormatError(
                f"key names {quota!r}/{subject!r}, value {decision.quota!r}/{decision.subject!r}"
            )
        self.set_decision(decision)

    def set_policy(self, policy: QuotaPolicy) -> None:
        zone = _check_policy(policy)
        name = policy.quota
        if policy.event_type != self.event_type:
            self._quotas.pop(name, None)
            self._pending.pop(name, None)
            self._elsewhere.add(name)
            self._refresh()
            return
        self._elsewhere.discard(name)
        previous = self._quotas.get(name)
        quota = self._quotas[name] = _Quota(policy, zone, previous, self.max_subjects)
        for decision in self._pending.pop(name, {}).values():
            self._adopt(quota, decision)
        self._refresh()

    def remove_policy(self, name: str) -> None:
        self._quotas.pop(name, None)
        self._pending.pop(name, None)
        self._elsewhere.discard(name)
        self._refresh()

    def set_decision(self, decision: SubjectDecision) -> None:
        quota = self._quotas.get(decision.quota)
        if quota is not None:
            self._adopt(quota, decision)
        elif decision.quota not in self._elsewhere:
            self._pending.setdefault(decision.quota, {})[decision.subject] = decision

    def remove_decision(self, name: str, subject: str) -> None:
        quota = self._quotas.get(name)
        if quota is not None:
            quota.usage.pop(subject, None)
        pending = self._pending.get(name)
        if pending is not None:
            pending.pop(subject, None)

    def set_unavailable(self, reason: str | None) -> None:
        """Decisions could not be loaded (``reason``), or are again (None). Only matters when
        failing closed: then every request is refused with 503 while ``reason`` holds."""
        if reason is None or not self.fail_closed:
            self._closed = None
        else:
            self._closed = Refusal(
                "decisions_unavailable",
                503,
                f"quota decisions are unavailable ({reason}); this sidecar is set to fail "
                "closed (--decisions-fail closed), so it refuses requests until it has them",
                headers=b"Retry-After: %d\r\n" % UNAVAILABLE_RETRY_AFTER,
                type_uri="about:blank",
            )
        self._refresh()

    def _adopt(self, quota: _Quota, decision: SubjectDecision) -> None:
        start = decision.period_start.timestamp()
        end = decision.period_end.timestamp()
        usage = quota.usage.get(decision.subject)
        if usage is not None and usage.start == start and usage.end == end:
            if usage.generation is None or usage.generation == decision.generation:
                # the same period: both are lower bounds of the true usage
                known = usage.base + usage.count
                usage.base = max(decision.used, known) if quota.local else decision.used
                usage.count = ZERO
                usage.generation = decision.generation
                return
        elif usage is not None and end <= usage.start:
            return  # a decision of an earlier period than the one already known
        quota.usage[decision.subject] = _Usage(start, end, decision.used, ZERO, decision.generation)

    def _refresh(self) -> None:
        self._active = tuple(self._quotas[name] for name in sorted(self._quotas))
        self._summing = tuple(q for q in self._active if q.block and q.sums is not None)
        self.engaged = bool(self._active) or self._closed is not None
        self.summing = bool(self._summing)
        """Whether :meth:`record` has anything to do (the sidecar skips it otherwise)."""

    # --- the request path -----------------------------------------------------------------

    def check(self, subject: str) -> Verdict | None:
        """The verdict for a request of ``subject``; None when no quota concerns it."""
        if self._closed is not None:
            return Verdict(self._closed, [])
        now = self._wall()
        refusal: Refusal | None = None
        blocking: list[_Standing] = []
        rated: list[_Quota] = []
        for quota in self._active:
            if not quota.policy.applies_to(subject):
                continue
            if quota.limiter is not None:
                rated.append(quota)
            if quota.block:  # Notify: never refuses, and advertises no limit
                standing = self._standing(quota, subject, now)
                blocking.append(standing)
                if refusal is None and standing.used >= standing.limit:
                    refusal = self._over_quota(standing, subject, now)
        if not blocking and not rated:
            return None
        rate_items: list[tuple[_Quota, int, int]] = []
        if rated:
            refusal = self._take_tokens(subject, rated, refusal, rate_items)
        if refusal is None:
            for standing in blocking:
                self._count(subject, standing)
        policies = [standing.policy_item() for standing in blocking]
        limits = [standing.service_item(now) for standing in blocking]
        for quota, available, wait in rate_items:
            policies.append(quota.rate_item)
            limits.append(service_item(quota.rate_label, available, delay_seconds(wait / NANOS)))
        fields = header_fields(policies, limits)
        if refusal is None:
            return Verdict(None, fields)
        head = b"".join(b"%s: %s\r\n" % pair for pair in fields)
        return Verdict(
            Refusal(
                refusal.reason,
                refusal.status,
                refusal.detail,
                head + refusal.headers,
                refusal.members,
            ),
            [],
        )

    def _standing(self, quota: _Quota, subject: str, now: float) -> _Standing:
        """The subject's usage and limit of a quota at ``now``."""
        usage = quota.usage.get(subject)
        if usage is not None and not usage.start <= now < usage.end:
            if now >= usage.end:
                del quota.usage[subject]  # the period rolled over
            usage = None  # (or a decision of a period that has not begun here yet)
        limit = quota.policy.limit_for(subject)
        if usage is None:
            start, end = quota.period(now)
            return _Standing(quota, None, ZERO, limit, start, end)
        return _Standing(quota, usage, usage.base + usage.count, limit, usage.start, usage.end)

    def _take_tokens(
        self,
        subject: str,
        rated: list[_Quota],
        refusal: Refusal | None,
        items: list[tuple[_Quota, int, int]],
    ) -> Refusal | None:
        """Take a token from each rate limit, unless the request is refused anyway; a refusal
        by one gives the others their tokens back."""
        now_ns = self._mono_ns()
        taken: list[RateLimiter] = []
        for quota in rated:
            limiter = quota.limiter
            assert limiter is not None
            if refusal is not None:
                available, wait = limiter.peek(subject, now_ns)
            else:
                admitted, available, wait = limiter.take(subject, now_ns)
                if admitted:
                    taken.append(limiter)
                else:
                    for earlier in taken:
                        earlier.refund(subject)
                    refusal = self._over_rate(quota, subject, wait)
            items.append((quota, available, wait))
        return refusal

    def _count(self, subject: str, standing: _Standing) -> None:
        """An admitted request: one more unit of a counting quota, seen by the next check
        (and in this response's ``r``)."""
        quota = standing.quota
        if not quota.counts:
            return
        usage = standing.usage
        if usage is not None:
            usage.count += 1
        elif subject not in quota.usage and len(quota.usage) < self.max_subjects:
            quota.usage[subject] = _Usage(standing.start, standing.end, ZERO, ONE, None)
        else:
            return
        standing.used += 1

    def record(self, subject: str, data: Mapping[str, object]) -> None:
        """An event this sidecar emits for ``subject``: its value (at the Meter's
        ``valueProperty``) counts toward the summing quotas until the next decision."""
        now = self._wall()
        for quota in self._summing:
            if not quota.policy.applies_to(subject):
                continue
            assert quota.sums is not None
            try:
                value = number_at(quota.sums, data)
            except ExtractionError:
                continue  # the worker dead-letters this event: it adds nothing
            if value <= 0:
                continue  # a lower bound must not shrink; negative values are refunds
            usage = self._standing(quota, subject, now).usage
            if usage is not None:
                usage.count += value
            elif subject not in quota.usage and len(quota.usage) < self.max_subjects:
                # (a subject still in quota.usage holds a decision of a period not begun here)
                start, end = quota.period(now)
                quota.usage[subject] = _Usage(start, end, ZERO, value, None)

    def _over_quota(self, standing: _Standing, subject: str, now: float) -> Refusal:
        quota, end = standing.quota, standing.end
        retry = delay_seconds(end - now, minimum=1)
        return Refusal(
            "quota",
            429,
            f"subject {subject!r} has used {standing.used} of its limit of {standing.limit} "
            f"under the quota {quota.name!r} in the period that ends at {_iso(end)}; requests "
            "are refused until then",
            b"Retry-After: %d\r\n" % retry,
            {
                "violated-policies": [quota.name],
                "quota": quota.name,
                "meter": quota.policy.meter,
                "used": str(standing.used),
                "limit": str(standing.limit),
                "resetAt": _iso(end),
            },
        )

    def _over_rate(self, quota: _Quota, subject: str, wait_ns: int) -> Refusal:
        rate = quota.policy.rate_limit
        assert rate is not None
        retry = delay_seconds(wait_ns / NANOS, minimum=1)
        return Refusal(
            "rate_limit",
            429,
            f"subject {subject!r} is over the rate limit of the quota {quota.name!r}: "
            f"{rate.requests} requests per {rate.per_seconds} s, bursts of up to {rate.burst}; "
            f"the next request is allowed in {wait_ns / NANOS:.3f} s",
            b"Retry-After: %d\r\n" % retry,
            {
                "violated-policies": [f"{quota.name}/rate"],
                "quota": quota.name,
                "retryAfterSeconds": round(wait_ns / NANOS, 3),
            },
        )

    # --- housekeeping ---------------------------------------------------------------------

    def sweep(self) -> None:
        """Drop usage entries whose period has ended and rate-limit buckets that are full."""
        now = self._wall()
        now_ns = self._mono_ns()
        for quota in self._active:
            ended = [subject for subject, usage in quota.usage.items() if usage.end <= now]
            for subject in ended:
                del quota.usage[subject]
            if quota.limiter is not None:
                quota.limiter.evict_idle(now_ns)

    @property
    def policies(self) -> int:
        """Policies this sidecar enforces."""
        return len(self._active)

    @property
    def subjects(self) -> int:
        """Usage entries held (decisions and local counts)."""
        return sum(len(quota.usage) for quota in self._active)

    @property
    def buckets(self) -> int:
        """Rate-limit buckets held."""
        return sum(len(q.limiter) for q in self._active if q.limiter is not None)
