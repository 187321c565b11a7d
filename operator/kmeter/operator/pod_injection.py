"""Pods that asked for the metering sidecar and run without it: an Event and a metric.

The injector's webhook has ``failurePolicy: Ignore`` — metering never blocks a deploy — so a
pod created while no injector answered (it was down, slow, its certificate broken), or before
it was installed, or in a namespace the webhook excludes, or with a bad annotation, runs
unmetered. Admission is synchronous, so a pod as stored is final: one that carries
``kmeter.io/inject: "true"`` but no ``kmeter-sidecar`` container *escaped* injection, and
nothing will fix it but a new pod (``kubectl rollout restart``). A pod that has the container
without ``kmeter.io/status: injected`` (a copy of an injected pod, say) is metered: the
injector leaves it alone for the same reason (its idempotency check is either of the two).

The operator watches such pods and, the first time it sees one, posts a Warning Event on the
pod (reason ``InjectionEscaped``) and counts it in the gauge
``kmeter_operator_pods_escaped_injection{namespace}`` — pods that exist now, so the gauge
falls when they are replaced; alert on it staying above 0. The set of escaped pods is kept in
memory: a restarted operator rebuilds it from its initial listing and posts each pod's Event
once more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import Gauge

INJECT: Final = "kmeter.io/inject"
SIDECAR: Final = "kmeter-sidecar"
REASON: Final = "InjectionEscaped"

ESCAPED = Gauge(
    "kmeter_operator_pods_escaped_injection",
    'Pods annotated kmeter.io/inject: "true" that run without the metering sidecar.',
    ["namespace"],
)


def escaped(pod: Mapping[str, Any]) -> str | None:
    """Why ``pod`` escaped injection, or None when it has its sidecar or never asked."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if annotations.get(INJECT) != "true":
        return None
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if any(container.get("name") == SIDECAR for container in containers):
        return None
    return (
        'the pod asks for the kmeter sidecar (kmeter.io/inject: "true") but has no '
        "kmeter-sidecar container: it was created while the injector did not answer, before "
        "it was installed, in an excluded namespace, or with a bad annotation (see the Events "
        "of its owner). Its traffic is not metered; re-create it (kubectl rollout restart) "
        "once the injector runs"
    )


@dataclass
class EscapedPods:
    """The escaped pods that exist now, by uid; feeds :data:`ESCAPED`."""

    namespaces: dict[str, str] = field(default_factory=dict)

    def observe(self, event_type: str | None, pod: Mapping[str, Any]) -> str | None:
        """Record a watch event; returns the reason when ``pod`` is newly seen escaped."""
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        namespace = str(metadata.get("namespace") or "")
        if not uid:
            return None
        reason = None if event_type == "DELETED" else escaped(pod)
        known = uid in self.namespaces
        if reason is None:
            if known:
                del self.namespaces[uid]
                ESCAPED.labels(namespace).dec()
            return None
        if known:
            return None
        self.namespaces[uid] = namespace
        ESCAPED.labels(namespace).inc()
        return reason
