"""A Meter's aggregation worker: its Deployment and quota ConfigMap, as desired state (pure).

The worker runs ``kmeter worker`` with the Meter's spec in ``KMETER_METER`` (JSON), so a spec
change is a change of the pod template and rolls the workers. Quotas on the Meter reach the
worker through a ConfigMap mounted at :data:`QUOTAS_DIR`, which the worker re-reads; a quota
edit does not restart it. Both objects are owned by the Meter (``ownerReferences`` with
``controller: true``), so deleting the Meter garbage-collects them.

Label values are capped at 63 characters; a longer Meter name is cut and suffixed with a
hash, so labels stay unique per Meter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from kmeter.operator.settings import OperatorSettings

QUOTAS_DIR = "/etc/kmeter/quotas"
QUOTAS_KEY = "quotas.json"
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
    meter_body: Mapping[str, Any], spec: Mapping[str, Any], settings: OperatorSettings
) -> dict[str, Any]:
    """The worker Deployment for a Meter (``spec`` is the Meter's spec with defaults)."""
    namespace = meter_body["metadata"]["namespace"]
    meter = meter_body["metadata"]["name"]
    workers = spec.get("workers") or {}
    resources = workers.get("resources") or DEFAULT_RESOURCES
    container = {
        "name": "worker",
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["worker", "--namespace", namespace, "--meter", meter],
        "env": [
            {"name": "KMETER_KAFKA_BOOTSTRAP", "value": settings.kafka_bootstrap},
            {"name": "KMETER_KAFKA_SECURITY_PROTOCOL", "value": settings.kafka.security_protocol},
            {
                "name": "KMETER_METER",
                "value": orjson.dumps(dict(spec), option=orjson.OPT_SORT_KEYS).decode(),
            },
            {"name": "KMETER_QUOTAS_FILE", "value": f"{QUOTAS_DIR}/{QUOTAS_KEY}"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
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
        "volumeMounts": [{"name": "quotas", "mountPath": QUOTAS_DIR, "readOnly": True}],
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
                    },
                },
                "spec": {
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
                        }
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
