"""Quota decision records (kmeter.decisions) as tests write them, with readable defaults."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from kmeter.decisions import (
    QuotaPolicy,
    SubjectDecision,
    encode_decision,
    encode_policy,
    policy_key,
    subject_key,
)

Record = tuple[bytes, bytes | None]


def quota_policy(**changes: Any) -> QuotaPolicy:
    """The Quota ``free-tier``: 100 per UTC day of the Meter ``api-calls``, Block."""
    base = QuotaPolicy(
        quota="free-tier",
        generation=1,
        meter="api-calls",
        event_type="http.request",
        limit=Decimal(100),
        period="DAY",
        time_zone="UTC",
        enforcement="Block",
    )
    return replace(base, **changes)


def subject_decision(
    subject: str, used: int | str, period: tuple[datetime, datetime], **changes: Any
) -> SubjectDecision:
    """``subject``'s usage of ``free-tier`` in ``period``, as the worker writes it."""
    start, end = period
    base = SubjectDecision(
        quota="free-tier",
        subject=subject,
        generation=1,
        used=Decimal(used),
        limit=Decimal(100),
        period_start=start,
        period_end=end,
        blocked=Decimal(used) >= 100,
        evaluated_at=start,
    )
    return replace(base, **changes)


def record_of(value: QuotaPolicy | SubjectDecision) -> Record:
    """The (key, value) of a policy or decision on the decisions topic."""
    if isinstance(value, QuotaPolicy):
        return policy_key(value.quota), encode_policy(value)
    return subject_key(value.quota, value.subject), encode_decision(value)
