"""Quota decisions: the records on a namespace's compacted ``quota-decisions`` topic.

The topic (:func:`kmeter.topics.quota_decisions_topic`) is how quota evaluation, which runs in
the Meter's aggregation workers, reaches every sidecar of the namespace. It holds two kinds of
record, each the latest word on its key (the topic is compacted):

* a :class:`QuotaPolicy` per Quota — key ``policy/<quota>`` — what the Quota is: its Meter and
  that Meter's event type, limit, period, overrides, enforcement and rate limit, the subjects it
  names (``subjects``, absent for all), whether each event counts exactly 1 toward it
  (``countsRequests``) or adds the value at a JSONPath of its data (``sumsValue``) — all three
  optional, added for the sidecar's enforcement. A null value (a
  tombstone) means the Quota is gone. Sidecars need it for the ``RateLimit-Policy`` header, for
  rate limits, and to know which quotas concern them: **a sidecar enforces the quotas whose
  Meter counts the event type that sidecar emits** (``eventType``).
* a :class:`SubjectDecision` per (Quota, subject) — key ``subject/<quota>/<subject>`` — the
  subject's usage in the current period as of the evaluation, and whether it is blocked. A
  decision is only valid within its period: once ``periodEnd`` has passed, the subject starts
  the new period with nothing used, whatever the last record says, so a period rolls over at
  the sidecar without waiting for a new record.

Quota names are DNS subdomains (no ``/``), so a key splits unambiguously at its first two
slashes; subjects may contain anything.

Numbers are exact decimals written as JSON strings (like the meters' window totals), times are
RFC 3339 UTC. This module is a light shared contract: the sidecar imports it, so it uses only
the standard library and orjson.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import orjson

POLICY_PREFIX: Final = "policy/"
SUBJECT_PREFIX: Final = "subject/"


class DecisionFormatError(ValueError):
    """A record on the decisions topic is not a policy or decision this version understands."""


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """A token bucket per subject: ``requests`` per ``per_seconds``, holding up to ``burst``."""

    requests: int
    per_seconds: int
    burst: int


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """What a Quota is, as the sidecars of its namespace need to know it."""

    quota: str
    generation: int
    meter: str
    event_type: str
    limit: Decimal
    period: str  # HOUR | DAY | MONTH
    time_zone: str
    enforcement: str  # Block | Notify
    overrides: Mapping[str, Decimal] = field(default_factory=dict)
    rate_limit: RateLimitPolicy | None = None
    # Added for enforcement at the sidecar (optional in records; older writers omit them):
    subjects: frozenset[str] | None = None
    """``spec.subjects.names``; None when the Quota is for all subjects (``all: true``)."""
    counts_requests: bool = False
    """True when every event of ``event_type`` adds exactly 1 to the usage (a ``COUNT`` Meter
    and no ``filterGroupBy``): the sidecar may then count the requests it serves itself
    between two decisions (see docs/quotas.md, "Enforcement at the sidecar")."""
    sums_value: str | None = None
    """For a ``SUM`` Meter without ``filterGroupBy``: its ``valueProperty`` (a JSONPath into an
    event's ``data``). Every event of ``event_type`` adds that value to the usage, so the sidecar
    may add the values of the events it emits itself between two decisions."""

    def limit_for(self, subject: str) -> Decimal:
        """The subject's own limit: its override, else the Quota's."""
        return self.overrides.get(subject, self.limit)

    def applies_to(self, subject: str) -> bool:
        """Whether ``subject`` is under this Quota: all subjects, a named one, or an override."""
        subjects = self.subjects
        return subjects is None or subject in subjects or subject in self.overrides


@dataclass(frozen=True, slots=True)
class SubjectDecision:
    """A subject's usage of a Quota in one period, as of ``evaluated_at``."""

    quota: str
    subject: str
    generation: int
    used: Decimal
    limit: Decimal
    period_start: datetime
    period_end: datetime
    blocked: bool
    evaluated_at: datetime
    notified: tuple[int, ...] = ()  # notifyAt thresholds (percent) already fired this period
    meter: str | None = None  # the Meter whose worker evaluated it (optional; added later)

    @property
    def remaining(self) -> Decimal:
        return max(self.limit - self.used, Decimal(0))

    def in_force(self, now: datetime) -> bool:
        """Whether the decision still describes the current period at ``now``."""
        return self.period_start <= now < self.period_end


def policy_key(quota: str) -> bytes:
    return f"{POLICY_PREFIX}{quota}".encode()


def subject_key(quota: str, subject: str) -> bytes:
    return f"{SUBJECT_PREFIX}{quota}/{subject}".encode()


def parse_key(key: bytes) -> tuple[str, str | None]:
    """``(quota, subject)`` of a record key; ``subject`` is None for a policy."""
    try:
        text = key.decode()
    except UnicodeDecodeError as error:
        raise DecisionFormatError(f"key is not UTF-8: {error}") from None
    if text.startswith(POLICY_PREFIX) and len(text) > len(POLICY_PREFIX):
        return text[len(POLICY_PREFIX) :], None
    if text.startswith(SUBJECT_PREFIX):
        quota, slash, subject = text[len(SUBJECT_PREFIX) :].partition("/")
        if quota and slash:
            return quota, subject
    raise DecisionFormatError(f"key {text!r} is neither policy/<quota> nor subject/<quota>/<s>")


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_policy(policy: QuotaPolicy) -> bytes:
    rate = policy.rate_limit
    return orjson.dumps(
        {
            "kind": "policy",
            "quota": policy.quota,
            "generation": policy.generation,
            "meter": policy.meter,
            "eventType": policy.event_type,
            "limit": str(policy.limit),
            "period": policy.period,
            "timeZone": policy.time_zone,
            "enforcement": policy.enforcement,
            "overrides": {subject: str(limit) for subject, limit in policy.overrides.items()},
            "rateLimit": None
            if rate is None
            else {"requests": rate.requests, "perSeconds": rate.per_seconds, "burst": rate.burst},
            "subjects": None if policy.subjects is None else sorted(policy.subjects),
            "countsRequests": policy.counts_requests,
            "sumsValue": policy.sums_value,
        }
    )


def encode_decision(decision: SubjectDecision) -> bytes:
    return orjson.dumps(
        {
            "kind": "subject",
            "quota": decision.quota,
            "subject": decision.subject,
            "generation": decision.generation,
            "used": str(decision.used),
            "limit": str(decision.limit),
            "periodStart": _time(decision.period_start),
            "periodEnd": _time(decision.period_end),
            "blocked": decision.blocked,
            "evaluatedAt": _time(decision.evaluated_at),
            "notified": list(decision.notified),
            **({} if decision.meter is None else {"meter": decision.meter}),
        }
    )


class _Reader:
    """Typed field access on one decoded record, with errors that name the field."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @classmethod
    def parse(cls, value: bytes, kind: str) -> _Reader:
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise DecisionFormatError(f"not JSON: {error}") from None
        if not isinstance(document, dict) or document.get("kind") != kind:
            raise DecisionFormatError(f"not a {kind} record")
        return cls(document)

    def get(self, name: str, kind: type | tuple[type, ...]) -> Any:
        value = self.document.get(name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise DecisionFormatError(f"{name}: missing or of the wrong type")
        return value

    def decimal(self, name: str, value: Any = None) -> Decimal:
        text = self.get(name, str) if value is None else value
        try:
            number = Decimal(text)
        except (InvalidOperation, TypeError):
            raise DecisionFormatError(f"{name}: {text!r} is not a decimal") from None
        if not number.is_finite():
            raise DecisionFormatError(f"{name}: {text!r} is not a finite decimal")
        return number

    def time(self, name: str) -> datetime:
        text = self.get(name, str)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise DecisionFormatError(f"{name}: {text!r} is not an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise DecisionFormatError(f"{name}: {text!r} has no UTC offset")
        return moment.astimezone(UTC)


def decode_policy(value: bytes) -> QuotaPolicy:
    reader = _Reader.parse(value, "policy")
    rate = reader.document.get("rateLimit")
    rate_limit = None
    if rate is not None:
        if not isinstance(rate, dict):
            raise DecisionFormatError("rateLimit: not an object")
        rate_reader = _Reader(rate)
        rate_limit = RateLimitPolicy(
            requests=rate_reader.get("requests", int),
            per_seconds=rate_reader.get("perSeconds", int),
            burst=rate_reader.get("burst", int),
        )
    overrides = reader.get("overrides", dict)
    subjects = reader.document.get("subjects")
    if subjects is not None and (
        not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects)
    ):
        raise DecisionFormatError("subjects: not a list of strings")
    counts_requests = reader.document.get("countsRequests", False)
    if not isinstance(counts_requests, bool):
        raise DecisionFormatError("countsRequests: not a boolean")
    sums_value = reader.document.get("sumsValue")
    if sums_value is not None and not isinstance(sums_value, str):
        raise DecisionFormatError("sumsValue: not a string")
    return QuotaPolicy(
        quota=reader.get("quota", str),
        generation=reader.get("generation", int),
        meter=reader.get("meter", str),
        event_type=reader.get("eventType", str),
        limit=reader.decimal("limit"),
        period=reader.get("period", str),
        time_zone=reader.get("timeZone", str),
        enforcement=reader.get("enforcement", str),
        overrides={
            str(subject): reader.decimal(f"overrides.{subject}", limit)
            for subject, limit in overrides.items()
        },
        rate_limit=rate_limit,
        subjects=None if subjects is None else frozenset(subjects),
        counts_requests=counts_requests,
        sums_value=sums_value,
    )


def decode_decision(value: bytes) -> SubjectDecision:
    reader = _Reader.parse(value, "subject")
    notified = reader.document.get("notified", [])
    if not isinstance(notified, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in notified
    ):
        raise DecisionFormatError("notified: not a list of integers")
    return SubjectDecision(
        quota=reader.get("quota", str),
        subject=reader.get("subject", str),
        generation=reader.get("generation", int),
        used=reader.decimal("used"),
        limit=reader.decimal("limit"),
        period_start=reader.time("periodStart"),
        period_end=reader.time("periodEnd"),
        blocked=reader.get("blocked", bool),
        evaluated_at=reader.time("evaluatedAt"),
        notified=tuple(notified),
        meter=_optional_string(reader, "meter"),
    )


def _optional_string(reader: _Reader, name: str) -> str | None:
    return None if reader.document.get(name) is None else reader.get(name, str)
