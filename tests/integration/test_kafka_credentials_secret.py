"""The ``kmeter-kafka`` Secret's server-side apply, as the operator does it, on the real API server.

Two claims of :mod:`kmeter.kafka.tenant_credentials` rest on server-side apply semantics: each
Meter's ``ownerReferences`` entry survives the other Meters' applies (per-Meter field managers),
and a data key the operator no longer wants is removed (the data has one field manager). The
operator's own client applies the objects here, with no operator running.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client
from tests.support.kube import Environment
from tests.support.operator import Resources

from kmeter.kafka import tenant_credentials
from kmeter.kafka.settings import TENANT_SECRET, KafkaSettings
from kmeter.kube.client import KubeClient, resource_path

SASL_SSL = KafkaSettings(
    "kafka:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="operator",
    sasl_password="operator-secret",
)


@pytest.fixture
def resources(testenv: Environment, namespace: str, kmeter_crds: None) -> Resources:
    return Resources(testenv.api_client(), namespace)


async def test_every_meter_keeps_its_owner_entry_and_an_unwanted_key_is_removed(
    resources: Resources, admin_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meters = [
        resources.create("meters", name, {"eventType": "x", "aggregation": "COUNT"})
        for name in ("first", "second")
    ]
    monkeypatch.setenv("KUBECONFIG", str(admin_kubeconfig))
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    path = resource_path("v1", "secrets", resources.namespace, TENANT_SECRET)

    async def apply_as_the_operator(meter: dict[str, Any], ca: bytes | None) -> None:
        await kube.apply(
            path,
            tenant_credentials.ownership(meter),
            field_manager=tenant_credentials.owner_manager(meter),
        )
        await kube.apply(
            path, tenant_credentials.tenant_secret(meter, SASL_SSL, ("tenants", "pw"), ca)
        )

    async with KubeClient(info) as kube:
        await apply_as_the_operator(meters[0], b"CA")
        await apply_as_the_operator(meters[1], b"CA")
        secret = read(resources)
        assert owners(secret) == {meter["metadata"]["uid"] for meter in meters}
        wanted = {"sasl-username": b"tenants", "sasl-password": b"pw"}
        assert keys(secret) == {**wanted, "ca.crt": b"CA"}

        await apply_as_the_operator(meters[0], None)  # the brokers' CA is no longer configured
        secret = read(resources)
        assert keys(secret) == wanted
        assert owners(secret) == {meter["metadata"]["uid"] for meter in meters}


def read(resources: Resources) -> Any:
    return client.CoreV1Api(resources.core.api_client).read_namespaced_secret(
        TENANT_SECRET, resources.namespace
    )


def owners(secret: Any) -> set[str]:
    return {owner.uid for owner in secret.metadata.owner_references or []}


def keys(secret: Any) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
