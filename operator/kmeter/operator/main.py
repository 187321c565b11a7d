"""Wiring: Kopf handlers for Meters and Quotas, and how the operator starts.

This module only connects Kopf's events to the functions that do the work
(:mod:`.meter_reconcile`, :mod:`.meter_delete`, :mod:`.quota_reconcile`) and turns their
outcomes into status patches, Events, retries and metrics.

Kopf settings and their reasons:

* kmeter's own finalizer (``kmeter.io/finalizer``) and annotation prefix (``kmeter.io``);
* only warnings are posted as Kubernetes Events: Kopf would otherwise post one per handler run;
* a stopping resync timer is polled every half second, so a deletion never waits a minute;
* ``standalone``: no peering objects; run one replica with ``strategy: Recreate`` (the chart
  does). A restarted operator resumes every Meter (``on.resume``) and creates nothing twice,
  because every write is an idempotent apply or create-if-missing;
* three in-memory indexes — Meter topic layouts per namespace (for the shared topics), Meter
  specs by name (for Quotas) and Quota configurations by Meter (for the worker's ConfigMap).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web
from aiokafka.errors import KafkaError

from kmeter.api.quotas import QuotaBook, QuotaMaterializer
from kmeter.kafka.admin import KafkaAdmin, KafkaAdminError
from kmeter.kube.client import KubeClient
from kmeter.logging_setup import configure_logging
from kmeter.operator import metrics
from kmeter.operator.conditions import merge_conditions, transitions
from kmeter.operator.meter_delete import delete_meter, withdraw_policies
from kmeter.operator.meter_reconcile import (
    apply_quotas,
    apply_worker,
    reconcile_meter,
    topic_layout,
)
from kmeter.operator.pod_injection import INJECT, REASON, EscapedPods
from kmeter.operator.quota_reconcile import check_quota, meter_ref, quota_config
from kmeter.operator.settings import OperatorSettings, retry_delay

METERS = ("kmeter.io", "v1alpha1", "meters")
QUOTAS = ("kmeter.io", "v1alpha1", "quotas")
MANAGED_DEPLOYMENTS = {"app.kubernetes.io/managed-by": "kmeter-operator"}
log = logging.getLogger("kmeter.operator")


@dataclass
class OperatorState:
    """What the handlers share: settings, the Kafka admin, the Kubernetes client."""

    settings: OperatorSettings
    kafka: KafkaAdmin
    connection: kopf.ConnectionInfo | None = None
    kube_client: KubeClient | None = None
    runners: list[web.AppRunner] = field(default_factory=list)
    escaped_pods: EscapedPods = field(default_factory=EscapedPods)
    decisions: QuotaMaterializer | None = None
    """The namespaces' quota decisions, followed for the Quotas' subjectsOver/subjectsNear."""

    def quota_book(self, namespace: str) -> QuotaBook:
        if self.decisions is None:
            self.decisions = QuotaMaterializer(self.settings.kafka)
        return self.decisions.follow(namespace)

    def kube(self) -> KubeClient:
        if self.kube_client is None:
            if self.connection is None:
                raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
            self.kube_client = KubeClient(self.connection)
        return self.kube_client


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.state
    return state


def _post_transitions(
    body: kopf.Body, before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> None:
    for condition in transitions(before, after):
        if condition["status"] != "True" or condition["reason"] == "PartitionsCannotShrink":
            kopf.warn(body, reason=condition["reason"], message=condition["message"])


# --- lifecycle -------------------------------------------------------------------------------


async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "kmeter.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kmeter.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kmeter.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # A Meter's finalizer waits for its resync timer to stop; a timer caught mid-reconcile is
    # re-checked after this long (Kopf's default is 60 s, which made deletions take a minute).
    settings.background.cancellation_polling = 0.5
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    state = _state(memo)
    state.runners.append(await metrics.serve_metrics("0.0.0.0", state.settings.metrics_port))


async def close(*, memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    if state.kube_client is not None:
        await state.kube_client.close()
    if state.decisions is not None:
        await state.decisions.close()
    await state.kafka.close()
    for runner in state.runners:
        await runner.cleanup()


def login(*, memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    state = _state(memo)
    if info is not None and info != state.connection:
        state.connection, state.kube_client = info, None  # the next call reconnects
    return info


# --- indexes ---------------------------------------------------------------------------------


def meter_layouts(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    try:
        return {str(namespace): (name, topic_layout(spec))}
    except ValueError:
        return {}  # an invalid retention: that Meter's own reconcile reports it


def meter_bodies(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(str(namespace), name): _minimal_body(body)}


def quota_configs(
    *, namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[Any, Any]:
    return {
        (str(namespace), meter_ref(spec)): quota_config(
            name, int(meta.get("generation", 0)), spec, str(meta.get("uid") or "") or None
        )
    }


# --- Meters ----------------------------------------------------------------------------------


async def meter_reconcile(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    meter_layouts: kopf.Index[str, Any],
    quota_configs: kopf.Index[Any, Any],
    retry: int,
    **_: Any,
) -> None:
    """Create, update, resume and resync of a Meter: one level-based reconcile."""
    state = _state(memo)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    others = [layout for other, layout in meter_layouts.get(namespace, []) if other != name]
    started = time.monotonic()
    try:
        outcome = await reconcile_meter(
            body,
            namespace_layouts=others,
            quotas=_valid_quotas(namespace, name, body.get("spec") or {}, quota_configs),
            kube=state.kube(),
            kafka=state.kafka,
            settings=state.settings,
            now=datetime.now(UTC),
        )
    finally:
        metrics.RECONCILE_SECONDS.labels("Meter").observe(time.monotonic() - started)
    before = list((body.get("status") or {}).get("conditions") or [])
    patch.status.update(outcome.status)
    _post_transitions(body, before, outcome.status["conditions"])
    for condition in outcome.status["conditions"]:
        if condition["status"] == "False":
            metrics.RECONCILE_ERRORS.labels("Meter", condition["reason"]).inc()
    if outcome.retry_reason:
        metrics.RECONCILES.labels("Meter", "retry").inc()
        raise kopf.TemporaryError(outcome.retry_reason, delay=retry_delay(retry))
    metrics.RECONCILES.labels("Meter", "ok").inc()


async def meter_deleted(
    *,
    body: kopf.Body,
    memo: kopf.Memo,
    retry: int,
    quota_configs: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    state = _state(memo)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    quotas = [config["name"] for config in quota_configs.get((namespace, name), [])]
    try:
        deleted = await delete_meter(body, kafka=state.kafka)
        withdrawn = await withdraw_policies(state.kafka, namespace, quotas)
    except KafkaAdminError as error:
        # Kafka unreachable, or the group still has members (workers shutting down).
        kopf.warn(body, reason=error.reason, message=f"deletion waits: {error}")
        raise kopf.TemporaryError(str(error), delay=retry_delay(retry)) from error
    except (KafkaError, OSError, TimeoutError) as error:
        message = f"deletion waits: the Quotas' policies cannot be withdrawn: {error!r}"
        kopf.warn(body, reason="KafkaUnavailable", message=message)
        raise kopf.TemporaryError(message, delay=retry_delay(retry)) from error
    if deleted:
        log.info("Meter %s deleted its topics: %s", name, deleted)
    if withdrawn:
        log.info("Meter %s withdrew the policies of its %d Quota(s)", name, withdrawn)


async def worker_deleted(
    *,
    type: str,
    body: kopf.Body,
    memo: kopf.Memo,
    meter_bodies: kopf.Index[Any, Any],
    quota_configs: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """A worker Deployment deleted by hand comes back at once, not at the next resync."""
    if type != "DELETED":
        return
    namespace = body["metadata"]["namespace"]
    owner = next(
        (r for r in body["metadata"].get("ownerReferences", []) if r.get("kind") == "Meter"), None
    )
    meter: dict[str, Any] | None = (
        next(iter(meter_bodies.get((namespace, owner["name"]), [])), None) if owner else None
    )
    if meter is None or meter["metadata"].get("deletionTimestamp"):
        return
    quotas = _valid_quotas(namespace, meter["metadata"]["name"], meter["spec"], quota_configs)
    state = _state(memo)
    await apply_worker(meter, quotas, kube=state.kube(), settings=state.settings)


# --- Quotas ----------------------------------------------------------------------------------


async def quota_reconcile(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    meter_bodies: kopf.Index[Any, Any],
    quota_configs: kopf.Index[Any, Any],
    retry: int,
    **_: Any,
) -> None:
    """Create, update, resume and resync of a Quota: check it, configure its Meter's worker."""
    state = _state(memo)
    namespace = body["metadata"]["namespace"]
    spec = body.get("spec") or {}
    meter: dict[str, Any] | None = next(
        iter(meter_bodies.get((namespace, meter_ref(spec)), [])), None
    )
    condition = check_quota(namespace, spec, meter["spec"] if meter else None)
    before = list((body.get("status") or {}).get("conditions") or [])
    after = merge_conditions(
        before,
        [condition],
        gates=[condition.type],
        generation=int(body["metadata"].get("generation", 0)),
        now=datetime.now(UTC),
    )
    patch.status.update(
        {
            "observedGeneration": body["metadata"].get("generation"),
            "conditions": after,
            # the Meter the quota is enforced on: none while it is missing or unfit (null
            # removes the field from the status)
            "meter": meter_ref(spec) if condition.status == "True" else None,
        }
    )
    book = state.quota_book(namespace)
    if book.caught_up and state.decisions is not None:
        # Counted from the decisions topic at each resync: at most resync_seconds old.
        over, near = book.counts(body["metadata"]["name"], state.decisions.now())
        patch.status.update({"subjectsOver": over, "subjectsNear": near})
    _post_transitions(body, before, after)
    if meter is not None:
        quotas = _valid_quotas(namespace, meter["metadata"]["name"], meter["spec"], quota_configs)
        await apply_quotas(meter, quotas, kube=state.kube())
    if condition.status != "True":
        metrics.RECONCILE_ERRORS.labels("Quota", condition.reason).inc()
        metrics.RECONCILES.labels("Quota", "retry").inc()
        raise kopf.TemporaryError(condition.message, delay=retry_delay(retry))
    metrics.RECONCILES.labels("Quota", "ok").inc()


# --- Pods ------------------------------------------------------------------------------------


async def pod_event(*, type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A pod that asked for the sidecar and escaped injection: an Event and a metric."""
    reason = _state(memo).escaped_pods.observe(type, body)
    if reason is not None:
        kopf.warn(body, reason=REASON, message=reason)


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler of the operator, registered on a registry of its own."""
    registry = kopf.OperatorRegistry()
    # Kopf's handler protocols list the keywords it always passes; ours also take the
    # indexes it injects by name, which the protocols cannot express — hence `_any`.
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(close)
    kopf.on.login(registry=registry)(login)
    kopf.index(*METERS, registry=registry)(meter_layouts)
    kopf.index(*METERS, registry=registry)(meter_bodies)
    kopf.index(*QUOTAS, registry=registry)(quota_configs)
    for resource, reconcile in ((METERS, meter_reconcile), (QUOTAS, quota_reconcile)):
        kopf.on.resume(*resource, registry=registry)(_any(reconcile))
        kopf.on.create(*resource, registry=registry)(_any(reconcile))
        kopf.on.update(*resource, registry=registry)(_any(reconcile))
        kopf.timer(*resource, interval=settings.resync_seconds, registry=registry)(_any(reconcile))
    kopf.on.delete(*METERS, registry=registry)(_any(meter_deleted))
    kopf.on.event("apps", "v1", "deployments", labels=MANAGED_DEPLOYMENTS, registry=registry)(
        _any(worker_deleted)
    )
    kopf.on.event("", "v1", "pods", annotations={INJECT: "true"}, registry=registry)(pod_event)
    return registry


def _any(handler: Any) -> Any:
    return handler


def _minimal_body(body: kopf.Body) -> dict[str, Any]:
    """What a Meter's worker needs from its body, copied out of Kopf's live view."""
    metadata = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "spec": dict(body.get("spec") or {}),
    }


def _valid_quotas(
    namespace: str, meter: str, meter_spec: Mapping[str, Any], quota_configs: kopf.Index[Any, Any]
) -> list[dict[str, Any]]:
    return [
        config
        for config in quota_configs.get((namespace, meter), [])
        if check_quota(namespace, config["spec"], meter_spec).status == "True"
    ]


def run(settings: OperatorSettings) -> None:
    """Run the operator until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    configure_logging(settings.log_level)
    state = OperatorState(settings=settings, kafka=KafkaAdmin(settings.kafka))
    asyncio.run(
        kopf.operator(
            registry=build_registry(settings),
            clusterwide=True,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            memo=kopf.Memo(state=state),
        )
    )
