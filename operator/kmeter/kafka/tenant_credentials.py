"""Kafka credentials for workers and sidecars in tenant namespaces (desired state, pure).

Workers and injected sidecars run in the namespaces of the Meters, where a Secret of kmeter's
own namespace cannot be referenced. So, when Kafka needs TLS or SASL, the operator keeps one
Secret :data:`~kmeter.kafka.settings.TENANT_SECRET` in every namespace that has a Meter, with
the keys ``sasl-username``, ``sasl-password`` (SASL) and ``ca.crt`` (TLS, when a CA bundle is
configured). Workers mount it at :data:`CREDENTIALS_DIR`; the injector mounts it, optional, in
every injected pod of the namespace, and the sidecar reads it on every connection attempt (a
sidecar that starts before the Secret exists spools its events until it appears).

The credentials are not the operator's: the chart requires separate ones with SASL
(``kafka.sasl.tenantSecret``: ``KMETER_KAFKA_TENANT_SASL_USERNAME`` / ``_PASSWORD``), because
anyone who may read Secrets or create pods in a metered namespace can read them. They are one
principal for all namespaces: Kafka ACLs can keep it to kmeter's topics and groups, but not one
tenant from another's topics (per-namespace principals are future work, docs/install.md).

Ownership: each Meter of the namespace is an owner (not the controller) of the Secret. Each
applies only its ``ownerReferences`` entry, under a field manager of its own
(:func:`owner_manager`; server-side apply keeps every entry of that list, keyed by ``uid``);
the data and labels are applied under the operator's one field manager, so a key that is no
longer wanted (a CA dropped for publicly trusted brokers) is removed. Kubernetes' garbage
collector deletes the Secret when the last Meter of the namespace is gone. Switching Kafka back
to PLAINTEXT leaves the Secrets in place (the operator then has no right to touch them).

Rotation: workers carry :func:`fingerprint` of the Secret's data as a pod-template annotation,
so new credentials roll them; sidecars read the files at their next connection.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from kmeter.kafka.settings import (
    CA_FILE,
    PASSWORD_FILE,
    TENANT_SECRET,
    USERNAME_FILE,
    KafkaSettings,
)

CREDENTIALS_DIR = "/etc/kmeter/kafka"
VOLUME = "kmeter-kafka"


def needs_credentials(security_protocol: str) -> bool:
    """Whether workers and sidecars need the Secret: Kafka is not plain text."""
    return security_protocol != "PLAINTEXT"


def owner_manager(meter_body: Mapping[str, Any]) -> str:
    """The field manager under which a Meter applies its ``ownerReferences`` entry."""
    return f"kmeter-operator-meter-{meter_body['metadata']['uid']}"


def _metadata(meter_body: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": TENANT_SECRET, "namespace": meter_body["metadata"]["namespace"]}


def ownership(meter_body: Mapping[str, Any]) -> dict[str, Any]:
    """This Meter's part of the Secret: its ``ownerReferences`` entry (applied first, so the
    Secret never exists without an owner)."""
    metadata = meter_body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            **_metadata(meter_body),
            "ownerReferences": [
                {
                    "apiVersion": meter_body["apiVersion"],
                    "kind": meter_body["kind"],
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                }
            ],
        },
    }


def tenant_secret(
    meter_body: Mapping[str, Any],
    kafka: KafkaSettings,
    sasl_credentials: tuple[str, str] | None,
    ca_bundle: bytes | None,
) -> dict[str, Any]:
    """The Secret's data and labels, as the operator applies them: ``kafka`` is how the
    operator connects, ``sasl_credentials`` what tenants get (when ``kafka`` uses SASL),
    ``ca_bundle`` the content of the operator's CA file (None when it has none)."""
    data: dict[str, bytes] = {}
    if kafka.uses_sasl and sasl_credentials is not None:
        data[USERNAME_FILE] = sasl_credentials[0].encode()
        data[PASSWORD_FILE] = sasl_credentials[1].encode()
    if kafka.uses_tls and ca_bundle:
        data[CA_FILE] = ca_bundle
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            **_metadata(meter_body),
            "labels": {
                "app.kubernetes.io/component": "kafka-credentials",
                "app.kubernetes.io/part-of": "kmeter",
                "app.kubernetes.io/managed-by": "kmeter-operator",
            },
        },
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


def fingerprint(secret: Mapping[str, Any]) -> str:
    """A short digest of a Secret's data: changes when the credentials or the CA change."""
    data = sorted((secret.get("data") or {}).items())
    return hashlib.sha256(repr(data).encode()).hexdigest()[:16]


def client_environment(security_protocol: str, sasl_mechanism: str | None) -> list[dict[str, Any]]:
    """The ``KMETER_KAFKA_*`` variables (besides the bootstrap servers) of a worker or sidecar
    container that reads its credentials from the mounted Secret."""
    env = [{"name": "KMETER_KAFKA_SECURITY_PROTOCOL", "value": security_protocol}]
    if needs_credentials(security_protocol):
        env.append({"name": "KMETER_KAFKA_CREDENTIALS_DIR", "value": CREDENTIALS_DIR})
    if security_protocol.startswith("SASL_"):
        env.append({"name": "KMETER_KAFKA_SASL_MECHANISM", "value": str(sasl_mechanism)})
    return env


def volume(*, optional: bool) -> dict[str, Any]:
    return {"name": VOLUME, "secret": {"secretName": TENANT_SECRET, "optional": optional}}


def volume_mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True}
