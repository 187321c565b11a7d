"""Reconcile one Meter: its topics, its worker, its status. Level-based and idempotent.

The same function runs on create, update, resume and every resync tick: it computes the whole
desired state, applies it, and reports what it observed as conditions —

* ``TopicsReady`` — the ingest, output and dead-letter topics exist with the declared layout
  (reasons ``TopicsReconciled``, ``PartitionsCannotShrink`` (still True: the topic works, it
  only has more partitions than asked), ``ReplicationFactorDiffers``, ``KafkaUnavailable``,
  ``TopicError``);
* ``WorkerDeployed`` — the worker Deployment and quota ConfigMap are applied as desired;
* ``WorkerAvailable`` — the Deployment has available replicas. Informational: it does not gate
  ``Ready``, because the Meter has done its part once the Deployment is applied, and whether
  pods can be scheduled is the cluster's business (``kubectl describe deployment`` says why);
* ``Ready`` — TopicsReady and WorkerDeployed.

Each part is attempted even when another failed, so a Kafka outage does not stop the worker
Deployment from being repaired, and the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kmeter import topics
from kmeter.core.durations import parse_iso_duration
from kmeter.kafka import tenant_credentials
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.settings import TENANT_SECRET
from kmeter.kafka.topics import (
    KafkaUnavailable,
    TopicError,
    TopicOutcome,
    describe_topics,
    reconcile_topics,
)
from kmeter.kube.client import KubeApiError, KubeClient, resource_path
from kmeter.operator.conditions import Condition, merge_conditions
from kmeter.operator.meter_topics import TopicLayout, meter_topics, quota_topics
from kmeter.operator.meter_worker import (
    quotas_configmap,
    quotas_configmap_name,
    webhook_secrets,
    worker_deployment,
    worker_name,
    worker_role,
    worker_role_binding,
    worker_service_account,
)
from kmeter.operator.settings import OperatorSettings

TOPICS_READY = "TopicsReady"
WORKER_DEPLOYED = "WorkerDeployed"
WORKER_AVAILABLE = "WorkerAvailable"
READY_GATES = (TOPICS_READY, WORKER_DEPLOYED)


@dataclass
class MeterOutcome:
    """What a reconcile did: the new status, warnings for Events, and whether to retry soon."""

    status: dict[str, Any]
    warnings: list[tuple[str, str]] = field(default_factory=list)
    retry_reason: str | None = None


def topic_layout(spec: Mapping[str, Any]) -> TopicLayout:
    topic = spec.get("topic") or {}
    retention = parse_iso_duration(str(topic.get("retention", "P400D")))
    return TopicLayout(
        partitions=int(topic.get("partitions", 3)),
        replication_factor=int(topic.get("replicationFactor", 1)),
        retention_ms=int(retention.total_seconds() * 1000),
    )


async def reconcile_meter(
    body: Mapping[str, Any],
    *,
    namespace_layouts: Iterable[TopicLayout],
    quotas: Sequence[Mapping[str, Any]],
    kube: KubeClient,
    kafka: KafkaAdmin,
    settings: OperatorSettings,
    now: datetime,
) -> MeterOutcome:
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    spec = body.get("spec") or {}
    outcome = MeterOutcome(status={})

    topics_condition = await _reconcile_topics(
        namespace,
        name,
        layout=topic_layout(spec),
        namespace_layouts=namespace_layouts,
        kafka=kafka,
        outcome=outcome,
    )
    deployed, available = await _reconcile_worker(body, quotas, kube, settings, outcome)

    previous = (body.get("status") or {}).get("conditions") or []
    outcome.status = {
        "observedGeneration": metadata.get("generation"),
        "conditions": merge_conditions(
            previous,
            [topics_condition, deployed, available],
            gates=READY_GATES,
            generation=int(metadata.get("generation", 0)),
            now=now,
        ),
        "topics": {
            "ingest": topics.ingest_topic(namespace),
            "output": topics.meter_topic(namespace, name),
            "dedup": topics.meter_dedup_topic(namespace, name),
            "deadLetter": topics.dead_letter_topic(namespace),
        },
        "workerDeployment": worker_name(name),
    }
    return outcome


async def _reconcile_topics(
    namespace: str,
    name: str,
    *,
    layout: TopicLayout,
    namespace_layouts: Iterable[TopicLayout],
    kafka: KafkaAdmin,
    outcome: MeterOutcome,
) -> Condition:
    shared = list(namespace_layouts)
    ingest = topics.ingest_topic(namespace)
    try:
        found = await describe_topics(kafka, [ingest])
        ingest_partitions = found[ingest].partitions if ingest in found else 0
        desired = [
            *meter_topics(namespace, name, layout, shared, ingest_partitions=ingest_partitions),
            *quota_topics(namespace, layout, shared, ingest_partitions=ingest_partitions),
        ]
        results = await reconcile_topics(kafka, desired)
    except KafkaUnavailable as error:
        outcome.retry_reason = str(error)
        outcome.warnings.append(("KafkaUnavailable", str(error)))
        return Condition(TOPICS_READY, "False", "KafkaUnavailable", str(error))
    except TopicError as error:
        outcome.warnings.append(("TopicError", str(error)))
        outcome.retry_reason = str(error)
        return Condition(TOPICS_READY, "False", "TopicError", str(error))
    return _topics_condition(topics.meter_topic(namespace, name), results, outcome)


def _topics_condition(
    output_topic: str, results: Sequence[TopicOutcome], outcome: MeterOutcome
) -> Condition:
    names = ", ".join(result.name for result in results)
    for result in results:
        if result.shrink_refused is not None:
            refused = result.shrink_refused
            message = (
                f"topic {result.name} has {refused.actual} partitions and spec asks for "
                f"{refused.desired}; Kafka partitions never shrink, so the topic keeps "
                f"{refused.actual} (counting is unaffected)"
            )
            outcome.warnings.append(("PartitionsCannotShrink", message))
            return Condition(TOPICS_READY, "True", "PartitionsCannotShrink", message)
    for result in results:
        # Shared topics take the replication factor of the Meter that created them.
        if result.name == output_topic and result.replication_factor_differs is not None:
            differs = result.replication_factor_differs
            message = (
                f"topic {result.name} has replication factor {differs.actual}, spec asks for "
                f"{differs.desired}; "
                "kmeter does not reassign replicas (see docs/resources.md)"
            )
            return Condition(TOPICS_READY, "True", "ReplicationFactorDiffers", message)
    return Condition(
        TOPICS_READY, "True", "TopicsReconciled", f"Topics exist as declared: {names}."
    )


async def apply_quotas(
    body: Mapping[str, Any], quotas: Sequence[Mapping[str, Any]], *, kube: KubeClient
) -> None:
    """Apply the Meter's quota ConfigMap: all a Quota's change touches."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    await kube.apply(
        resource_path("v1", "configmaps", namespace, quotas_configmap_name(name)),
        quotas_configmap(body, quotas),
    )


class CredentialsUnreadable(Exception):
    """The operator cannot read the Kafka CA bundle it should copy to the tenants."""


async def apply_kafka_credentials(
    body: Mapping[str, Any], *, kube: KubeClient, settings: OperatorSettings
) -> str | None:
    """Apply this Meter's ownership of the namespace's Kafka credentials Secret, then the
    Secret's data, when Kafka is not plain text (:mod:`kmeter.kafka.tenant_credentials`);
    returns the data's fingerprint (None on PLAINTEXT)."""
    kafka = settings.kafka
    if not tenant_credentials.needs_credentials(kafka.security_protocol):
        return None
    ca_file = kafka.ca_file()
    try:  # read at every reconcile: the chart mounts it from a Secret, which may be rotated
        ca_bundle = await asyncio.to_thread(Path(ca_file).read_bytes) if ca_file else None
    except OSError as error:
        raise CredentialsUnreadable(f"cannot read the Kafka CA bundle {ca_file}: {error}") from None
    path = resource_path("v1", "secrets", body["metadata"]["namespace"], TENANT_SECRET)
    await kube.apply(
        path,
        tenant_credentials.ownership(body),
        field_manager=tenant_credentials.owner_manager(body),
    )
    sasl = settings.tenant_sasl_credentials() if kafka.uses_sasl else None
    secret = tenant_credentials.tenant_secret(body, kafka, sasl, ca_bundle)
    await kube.apply(path, secret)
    return tenant_credentials.fingerprint(secret)


async def apply_worker(
    body: Mapping[str, Any],
    quotas: Sequence[Mapping[str, Any]],
    *,
    kube: KubeClient,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """Apply the Meter's quota ConfigMap, the worker's ServiceAccount, Role and RoleBinding,
    and its Deployment; returns the Deployment."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    await apply_quotas(body, quotas, kube=kube)
    credentials = await apply_kafka_credentials(body, kube=kube, settings=settings)
    worker = worker_name(name)
    await kube.apply(
        resource_path("v1", "serviceaccounts", namespace, worker), worker_service_account(body)
    )
    rbac = "rbac.authorization.k8s.io/v1"
    await kube.apply(resource_path(rbac, "roles", namespace, worker), worker_role(body))
    await kube.apply(
        resource_path(rbac, "rolebindings", namespace, worker), worker_role_binding(body)
    )
    return await kube.apply(
        resource_path("apps/v1", "deployments", namespace, worker),
        worker_deployment(
            body, body.get("spec") or {}, settings, webhook_secrets(quotas), credentials
        ),
    )


async def _reconcile_worker(
    body: Mapping[str, Any],
    quotas: Sequence[Mapping[str, Any]],
    kube: KubeClient,
    settings: OperatorSettings,
    outcome: MeterOutcome,
) -> tuple[Condition, Condition]:
    name = body["metadata"]["name"]
    try:
        applied = await apply_worker(body, quotas, kube=kube, settings=settings)
    except (KubeApiError, CredentialsUnreadable) as error:
        # The API server's message names the object (Deployment, Secret, Role...).
        message = f"cannot apply the worker {worker_name(name)}: {error}"
        outcome.warnings.append(("WorkerDeployFailed", message))
        outcome.retry_reason = outcome.retry_reason or message
        unknown = Condition(WORKER_AVAILABLE, "Unknown", "WorkerNotDeployed", message)
        return Condition(WORKER_DEPLOYED, "False", "WorkerDeployFailed", message), unknown
    replicas = int(applied["spec"]["replicas"])
    deployed = Condition(
        WORKER_DEPLOYED,
        "True",
        "WorkerDeployed",
        f"Deployment {worker_name(name)} applied with {replicas} replica(s).",
    )
    ready = int((applied.get("status") or {}).get("availableReplicas") or 0)
    if replicas == 0 or ready > 0:
        return deployed, Condition(
            WORKER_AVAILABLE, "True", "Available", f"{ready} of {replicas} worker(s) available."
        )
    return deployed, Condition(
        WORKER_AVAILABLE,
        "False",
        "NoWorkerAvailable",
        f"0 of {replicas} worker(s) available yet; see kubectl describe deployment "
        f"{worker_name(name)}.",
    )
