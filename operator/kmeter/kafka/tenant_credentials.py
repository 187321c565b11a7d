"""Kafka credentials for workers and sidecars in tenant namespaces (desired state, pure).

Workers and injected sidecars run in the namespaces of the Meters, where a Secret of kmeter's
own namespace cannot be referenced. So, when Kafka needs TLS or SASL, the operator keeps one
Secret :data:`~kmeter.kafka.settings.TENANT_SECRET` in every namespace that has a Meter, with
the keys ``sasl-username``, ``sasl-password`` (SASL) and ``ca.crt`` (TLS, when a CA bundle is
configured). Workers mount it at :data:`CREDENTIALS_DIR`; the injector mounts it, optional, in
every injected pod of the namespace, and the sidecar reads it on every connection attempt (a
sidecar that starts before the Secret exists spools its events until it appears).

The credentials are the operator's own unless the chart names separate ones
(``kafka.sasl.tenantSecret``: ``KMETER_KAFKA_TENANT_SASL_USERNAME`` / ``_PASSWORD``), which is
what a production install should do, with Kafka ACLs that let that principal use only kmeter's
topics and groups: anyone who may read Secrets in a metered namespace can read these.

Ownership: each Meter of the namespace is an owner (not the controller) of the Secret, and
each applies it under a field manager of its own (:func:`field_manager`), so server-side apply
keeps every Meter's ``ownerReferences`` entry (a list keyed by ``uid``). Kubernetes' garbage
collector deletes the Secret when the last Meter of the namespace is gone.
"""

from __future__ import annotations

import base64
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


def field_manager(meter_body: Mapping[str, Any]) -> str:
    return f"kmeter-operator-meter-{meter_body['metadata']['uid']}"


def tenant_secret(
    meter_body: Mapping[str, Any],
    kafka: KafkaSettings,
    sasl_credentials: tuple[str, str] | None,
    ca_bundle: bytes | None,
) -> dict[str, Any]:
    """The namespace's Kafka credentials Secret as this Meter applies it: ``kafka`` is how
    the operator connects, ``sasl_credentials`` what tenants get (when ``kafka`` uses SASL),
    ``ca_bundle`` the content of the operator's CA file (None when it has none)."""
    metadata = meter_body["metadata"]
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
            "name": TENANT_SECRET,
            "namespace": metadata["namespace"],
            "labels": {
                "app.kubernetes.io/component": "kafka-credentials",
                "app.kubernetes.io/part-of": "kmeter",
                "app.kubernetes.io/managed-by": "kmeter-operator",
            },
            "ownerReferences": [
                {
                    "apiVersion": meter_body["apiVersion"],
                    "kind": meter_body["kind"],
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                }
            ],
        },
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


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
