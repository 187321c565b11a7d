"""A Kubernetes Event on the Quota for each threshold crossing.

``kubectl describe quota <name>`` (and ``kubectl get events``) then shows, for example::

    Normal   ThresholdReached  subject alice reached 80% of quota daily: 80 of 100 in the
                               period 2026-06-15T00:00:00Z to 2026-06-16T00:00:00Z
    Warning  LimitReached      subject alice reached 100% of quota daily ... (Block: requests
                               are refused until the period ends)

One Event per notification: its name is derived from the notification's ``id``, and it is
written by server-side apply, so a redelivered notification rewrites the same Event rather than
adding one. The worker posts it with its own ServiceAccount, which the operator grants
``create`` and ``patch`` on Events in the Meter's namespace only. Events are best effort: a
failure is logged and counted, never retried for long (the notifications topic is the record).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from kmeter.kube.client import KubeClient, resource_path

COMPONENT: Final = "kmeter-worker"
MAX_MESSAGE: Final = 1024


def event_name(notification: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(str(notification["id"]).encode()).hexdigest()[:16]
    return f"{str(notification['quota'])[:200]}.kmeter-{digest}"


def event_body(
    notification: Mapping[str, Any], *, uid: str | None, instance: str
) -> dict[str, Any]:
    """The Event for one notification (a record of the notifications topic, decoded)."""
    quota, threshold = str(notification["quota"]), int(notification["threshold"])
    at_limit = threshold >= 100
    message = (
        f"subject {notification['subject']} reached {threshold}% of quota {quota}: "
        f"{notification['used']} of {notification['limit']} in the period "
        f"{notification['periodStart']} to {notification['periodEnd']}"
    )
    if at_limit and notification.get("blocked"):
        message += " (Block: its requests are refused until the period ends)"
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    involved: dict[str, Any] = {
        "apiVersion": "kmeter.io/v1alpha1",
        "kind": "Quota",
        "name": quota,
        "namespace": notification["namespace"],
    }
    if uid:
        involved["uid"] = uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(notification), "namespace": notification["namespace"]},
        "involvedObject": involved,
        "reason": "LimitReached" if at_limit else "ThresholdReached",
        "message": message,
        "type": "Warning" if at_limit else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance[:128],
        "firstTimestamp": notification["time"],
        "lastTimestamp": notification["time"],
        "count": 1,
    }


async def post_event(
    kube: KubeClient, notification: Mapping[str, Any], *, uid: str | None, instance: str
) -> None:
    """Create (or rewrite, for a redelivery) the notification's Event; raises on failure."""
    body = event_body(notification, uid=uid, instance=instance)
    path = resource_path("v1", "events", str(notification["namespace"]), body["metadata"]["name"])
    await kube.apply(path, body)
