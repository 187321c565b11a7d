"""Status conditions, following the Kubernetes API conventions (``metav1.Condition``).

A condition changes its ``lastTransitionTime`` only when its ``status`` changes, so
``kubectl describe`` shows how long a Meter has been Ready, not when it was last reconciled.
``Ready`` is derived from the conditions that gate it: True when all are True, otherwise
False with the reason and message of the first that is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]
READY = "Ready"


@dataclass(frozen=True)
class Condition:
    """One observation about one part of a resource."""

    type: str
    status: Status
    reason: str
    message: str


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[dict[str, Any]],
    observed: Sequence[Condition],
    *,
    gates: Sequence[str],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new ``status.conditions``: ``observed`` plus a derived ``Ready``.

    ``gates`` names the condition types that must all be True for Ready. Conditions in
    ``previous`` that were not observed this time are dropped: every reconcile observes all.
    """
    by_type = {c.type: c for c in observed}
    blocking = next(
        (by_type[g] for g in gates if g not in by_type or by_type[g].status != "True"), None
    )
    if blocking is None:
        ready = Condition(READY, "True", "Ready", "All parts are ready.")
    else:
        ready = Condition(READY, "False", blocking.reason, blocking.message)
    old = {c.get("type"): c for c in previous}
    result = []
    for condition in [ready, *observed]:
        before = old.get(condition.type)
        changed = before is None or before.get("status") != condition.status
        result.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "observedGeneration": generation,
                "lastTransitionTime": (
                    timestamp(now)
                    if changed or before is None
                    else before.get("lastTransitionTime", timestamp(now))
                ),
            }
        )
    return result


def is_ready(conditions: Sequence[dict[str, Any]]) -> bool:
    return any(c.get("type") == READY and c.get("status") == "True" for c in conditions)


def transitions(
    previous: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions of ``current`` whose status or reason differ from ``previous``.

    Events are posted for these only, so a lasting problem is announced once, not on every
    resync.
    """
    old = {(c.get("type")): (c.get("status"), c.get("reason")) for c in previous}
    return [c for c in current if old.get(c["type"]) != (c["status"], c["reason"])]
