"""A Meter's aggregation worker: its Deployment and quota ConfigMap, as desired state (pure).

The worker runs ``kmeter worker`` with the Meter's spec in ``KMETER_METER`` (JSON), so a spec
change is a change of the pod template and rolls the workers. Quotas on the Meter reach the
worker through a ConfigMap mounted at :data:`QUOTAS_DIR`, which the worker re-reads; a quota
edit does not restart it. Both objects are owned by the Meter (``ownerReferences`` with
``controller: true``), so deleting the Meter garbage-collects them.

The worker runs under a ServiceAccount of its own (:func:`worker_service_account`), bound by a
RoleBinding to a Role in the Meter's namespace (:func:`worker_role`) that allows exactly what
quota notifications need: ``create`` and ``patch`` on Events (the Event on a Quota when a
``notifyAt`` threshold is crossed). Webhook signing keys and URLs (``spec.webhook.secretRef``
and ``urlSecretRef`` of the Quotas) are not read through the API — that would need ``get`` on
Secrets — but mounted by the kubelet as optional Secret volumes at :data:`SECRETS_DIR`
``/<secret>`` (:func:`webhook_secrets`); a Secret of another namespace cannot be named at all.
Mounting a newly referenced Secret changes the pod template, so the workers roll (at the
Meter's next reconcile).

When Kafka needs TLS or SASL, the worker reads its credentials from the namespace's Secret
``kmeter-kafka``, mounted at ``/etc/kmeter/kafka`` (:mod:`kmeter.kafka.tenant_credentials`).

Label values are capped at 63 characters; a longer Meter name is cut and suffixed with a
hash, so labels stay unique per Meter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from kmeter.kafka import tenant_credentials
from kmeter.operator.settings import OperatorSettings

QUOTAS_DIR = "/etc/kmeter/quotas"
QUOTAS_KEY = "quotas.json"
SECRETS_DIR = "/etc/kmeter/secrets"
METRICS_PORT = 9090
HEALTH_PORT = 8080
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


def label_value(name: str) -> str:
    """``name`` if it fits a label value (63 characters), else a cut name plus a hash."""
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('.-')}-{digest}"


def worker_name(meter: str) -> str:
    return f"kmeter-worker-{meter}"


def webhook_secrets(quotas: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Secrets the Quotas' webhooks are signed with or take their URL from, sorted, once
    each."""
    found = set()
    for quota in quotas:
        webhook = (quota.get("spec") or {}).get("webhook") or {}
        for ref in ("secretRef", "urlSecretRef"):  # the signing key, the URL
            secret = (webhook.get(ref) or {}).get("name")
            if isinstance(secret, str) and secret:
                found.add(secret)
    return sorted(found)


def _metadata(meter_body: Mapping[str, Any], name: str) -> dict[str, Any]:
    meter = meter_body["metadata"]["name"]
    return {
        "name": name,
        "namespace": meter_body["metadata"]["namespace"],
        "labels": labels(meter),
        "ownerReferences": [owner_reference(meter_body)],
    }


def worker_service_account(meter_body: Mapping[str, Any]) -> dict[str, Any]:
    """The worker's own identity (no API token is mounted unless the pod asks)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(meter_body, worker_name(meter_body["metadata"]["name"])),
    }


WORKER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]
"""What the worker may do in its Meter's namespace: post Events on Quotas."""


def worker_role(meter_body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(meter_body, worker_name(meter_body["metadata"]["name"])),
        "rules": WORKER_RULES,
    }


def worker_role_binding(meter_body: Mapping[str, Any]) -> dict[str, Any]:
    name = worker_name(meter_body["metadata"]["name"])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(meter_body, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": name,
                "namespace": meter_body["metadata"]["namespace"],
            }
        ],
    }


def quotas_configmap_name(meter: str) -> str:
    return f"{worker_name(meter)}-quotas"


def selector_labels(meter: str) -> dict[str, str]:
    """The Deployment's selector: immutable, so only what never changes for a Meter."""
    return {
        "app.kubernetes.io/name": "kmeter-worker",
        "app.kubernetes.io/instance": label_value(meter),
    }


def labels(meter: str) -> dict[str, str]:
    return {
        **selector_labels(meter),
        "app.kubernetes.io/component": "aggregation-worker",
        "app.kubernetes.io/part-of": "kmeter",
        "app.kubernetes.io/managed-by": "kmeter-operator",
        "kmeter.io/meter": label_value(meter),
    }


def owner_reference(meter_body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = meter_body["metadata"]
    return {
        "apiVersion": meter_body["apiVersion"],
        "kind": meter_body["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def worker_deployment(
    meter_body: Mapping[str, Any],
    spec: Mapping[str, Any],
    settings: OperatorSettings,
    secrets: Sequence[str] = (),
    credentials: str | None = None,
) -> dict[str, Any]:
    """The worker Deployment for a Meter (``spec`` is the Meter's spec with defaults);
    ``secrets`` are the webhook signing Secrets to mount (:func:`webhook_secrets`);
    ``credentials`` the fingerprint of the Kafka credentials Secret, whose change rolls the
    workers (they read the credentials when they connect)."""
    namespace = meter_body["metadata"]["namespace"]
    meter = meter_body["metadata"]["name"]
    workers = spec.get("workers") or {}
    resources = workers.get("resources") or DEFAULT_RESOURCES
    kafka_credentials = tenant_credentials.needs_credentials(settings.kafka.security_protocol)
    container = {
        "name": "worker",
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["worker", "--namespace", namespace, "--meter", meter],
        "env": [
            {"name": "KMETER_KAFKA_BOOTSTRAP", "value": settings.kafka_bootstrap},
            *tenant_credentials.client_environment(
                settings.kafka.security_protocol, settings.kafka.sasl_mechanism
            ),
            {
                "name": "KMETER_METER",
                "value": orjson.dumps(dict(spec), option=orjson.OPT_SORT_KEYS).decode(),
            },
            {"name": "KMETER_QUOTAS_FILE", "value": f"{QUOTAS_DIR}/{QUOTAS_KEY}"},
            {"name": "KMETER_SECRETS_DIR", "value": SECRETS_DIR},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {  # bytes; the worker sizes its dedup memory from it (kmeter.worker.memory)
                "name": "KMETER_MEMORY_LIMIT",
                "valueFrom": {
                    "resourceFieldRef": {"containerName": "worker", "resource": "limits.memory"}
                },
            },
        ],
        "ports": [
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 5},
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "quotas", "mountPath": QUOTAS_DIR, "readOnly": True},
            *([tenant_credentials.volume_mount()] if kafka_credentials else []),
            *(
                {
                    "name": f"secret-{index}",
                    "mountPath": f"{SECRETS_DIR}/{secret}",
                    "readOnly": True,
                }
                for index, secret in enumerate(secrets)
            ),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": worker_name(meter),
            "namespace": namespace,
            "labels": labels(meter),
            "ownerReferences": [owner_reference(meter_body)],
        },
        "spec": {
            "replicas": int(workers.get("replicas", 1)),
            "selector": {"matchLabels": selector_labels(meter)},
            "template": {
                "metadata": {
                    "labels": labels(meter),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        **(
                            {"kmeter.io/kafka-credentials": credentials}
                            if credentials is not None
                            else {}
                        ),
                    },
                },
                "spec": {
                    "serviceAccountName": worker_name(meter),
                    "containers": [container],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {
                            "name": "quotas",
                            "configMap": {"name": quotas_configmap_name(meter), "optional": True},
                        },
                        # Not optional: the operator applies the Secret before the Deployment.
                        *([tenant_credentials.volume(optional=False)] if kafka_credentials else []),
                        *(
                            {
                                "name": f"secret-{index}",
                                "secret": {"secretName": secret, "optional": True},
                            }
                            for index, secret in enumerate(secrets)
                        ),
                    ],
                },
            },
        },
    }


def quotas_configmap(
    meter_body: Mapping[str, Any], quotas: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The quota configuration the Meter's worker evaluates: the valid Quotas on it, by name."""
    meter = meter_body["metadata"]["name"]
    ordered = sorted(quotas, key=lambda quota: str(quota["name"]))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": quotas_configmap_name(meter),
            "namespace": meter_body["metadata"]["namespace"],
            "labels": labels(meter),
            "ownerReferences": [owner_reference(meter_body)],
        },
        "data": {
            QUOTAS_KEY: orjson.dumps(
                ordered, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
            ).decode()
        },
    }
