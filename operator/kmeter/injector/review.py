"""An AdmissionReview in, an AdmissionReview out — pure, and it never refuses a pod.

:func:`admit` answers every request ``allowed: true``: with the sidecar's JSONPatch, or with no
patch at all. A pod with a bad annotation is admitted unchanged with an admission *warning*
(shown by ``kubectl`` to whoever created the pod — for a Deployment that is the ReplicaSet
controller, which is why :mod:`kmeter.injector.events` also posts an Event). Any exception
while deciding is caught here: the pod is admitted unchanged and the outcome is ``error``.

Warnings are cut to :data:`MAX_WARNING` characters and made ASCII (the API server passes them
on as HTTP ``Warning`` headers); the Event carries the whole reason.
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from kmeter.injector.annotations import Refusal
from kmeter.injector.patch import Inject, Skip, decide
from kmeter.injector.settings import InjectorSettings

MAX_WARNING: Final = 240
JSON = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    """What a pod being created belongs to: an Event about it goes here.

    The pod itself has no uid yet at admission; its controller (a ReplicaSet, Job,
    StatefulSet, …) does, and ``kubectl describe`` on it shows the Event. A pod without a
    controller gets the Event on its Namespace.
    """

    namespace: str
    pod: str
    involved_object: JSON


@dataclass(frozen=True)
class Admission:
    """The answer to one review, and what the server records about it."""

    response: JSON
    outcome: str
    """``injected``, ``not_requested``, ``already_injected``, ``excluded_namespace``,
    ``refused``, ``ignored`` (not a Pod CREATE) or ``error``."""
    refusal: str | None = None
    warnings: tuple[str, ...] = ()
    """Of an injected pod: what its annotations got wrong that did not stop the injection."""
    workload: Workload | None = None
    dry_run: bool = False
    error: str | None = None


def admit(review: Mapping[str, Any], settings: InjectorSettings) -> Admission:
    """The AdmissionReview answering ``review`` (``admission.k8s.io/v1``)."""
    request = review.get("request") or {}
    uid = str(request.get("uid", ""))
    try:
        return _admit(request, uid, settings)
    except Exception:  # never fail a pod: admit it unchanged, say why
        return Admission(_allowed(uid), "error", error=traceback.format_exc())


def _admit(request: Mapping[str, Any], uid: str, settings: InjectorSettings) -> Admission:
    kind = request.get("kind") or {}
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or request.get("operation") != "CREATE":
        return Admission(_allowed(uid), "ignored")
    pod: Mapping[str, Any] = request.get("object") or {}
    namespace = str(request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "")
    decision = decide(pod, namespace, settings)
    dry_run = bool(request.get("dryRun"))
    if isinstance(decision, Skip):
        return Admission(_allowed(uid), decision.reason.replace("-", "_"), dry_run=dry_run)
    if isinstance(decision, Refusal):
        warning = f"kmeter: sidecar not injected: {decision.reason}"
        return Admission(
            _allowed(uid, warnings=[warning]),
            "refused",
            refusal=decision.reason,
            workload=workload_of(pod, namespace),
            dry_run=dry_run,
        )
    assert isinstance(decision, Inject)
    warnings = [f"kmeter: {warning}" for warning in decision.warnings]
    return Admission(
        _allowed(uid, decision.patch, warnings),
        "injected",
        warnings=decision.warnings,
        workload=workload_of(pod, namespace) if decision.warnings else None,
        dry_run=dry_run,
    )


def _allowed(uid: str, patch: list[JSON] | None = None, warnings: list[str] | None = None) -> JSON:
    response: JSON = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    if warnings:
        response["warnings"] = [_warning_text(warning) for warning in warnings]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def _warning_text(text: str) -> str:
    ascii_text = text.encode("ascii", "backslashreplace").decode()
    printable = "".join(ch if ch.isprintable() else " " for ch in ascii_text)
    return printable if len(printable) <= MAX_WARNING else printable[: MAX_WARNING - 3] + "..."


def workload_of(pod: Mapping[str, Any], namespace: str) -> Workload:
    """The pod's controller (or its Namespace), as an Event's ``involvedObject``."""
    metadata = pod.get("metadata") or {}
    name = str(metadata.get("name") or f"{metadata.get('generateName') or ''}<generated>")
    owner = next(
        (ref for ref in metadata.get("ownerReferences") or [] if ref.get("controller")), None
    )
    if owner and owner.get("uid") and owner.get("name") and owner.get("kind"):
        involved = {
            "apiVersion": owner.get("apiVersion", ""),
            "kind": owner["kind"],
            "name": owner["name"],
            "uid": owner["uid"],
            "namespace": namespace,
        }
    else:
        involved = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "name": namespace,
            "namespace": namespace,
        }
    return Workload(namespace=namespace, pod=name, involved_object=involved)
