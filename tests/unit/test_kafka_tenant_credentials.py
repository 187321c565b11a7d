"""Kafka credentials reach workers and sidecars in tenant namespaces (desired state, settings).

The real path — the operator writing the Secret, a worker and a sidecar connecting with it to a
TLS + SASL listener — is tested in ``tests/e2e/test_kafka_credentials.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from kmeter.injector.patch import Inject, decide
from kmeter.injector.settings import InjectorSettings, SettingsError
from kmeter.kafka import tenant_credentials
from kmeter.kafka.settings import KafkaCredentialsMissing, KafkaSettings
from kmeter.operator.meter_worker import worker_deployment
from kmeter.operator.settings import OperatorSettings
from kmeter.operator.settings import SettingsError as OperatorSettingsError
from kmeter_sidecar.config import ConfigError, parse_config

METER: dict[str, Any] = {
    "apiVersion": "kmeter.io/v1alpha1",
    "kind": "Meter",
    "metadata": {"name": "tokens", "namespace": "shop", "uid": "3f0c-uid"},
    "spec": {"eventType": "llm.usage", "aggregation": "SUM", "valueProperty": "$.tokens"},
}
SASL_SSL = {
    "KMETER_KAFKA_BOOTSTRAP": "kafka:9093",
    "KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KMETER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KMETER_KAFKA_SASL_USERNAME": "operator",
    "KMETER_KAFKA_SASL_PASSWORD": "operator-secret",
    "KMETER_KAFKA_CA_FILE": "/etc/kmeter/kafka-ca/ca.crt",
    "KMETER_KAFKA_TENANT_SASL_USERNAME": "tenants",
    "KMETER_KAFKA_TENANT_SASL_PASSWORD": "tenant-secret",
}


def decoded(secret: dict[str, Any]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def test_settings_read_sasl_credentials_from_the_directory_at_every_call(tmp_path: Path) -> None:
    settings = KafkaSettings(
        "kafka:9093",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        credentials_dir=str(tmp_path),
    )
    (tmp_path / "sasl-username").write_text("tenant\n")
    (tmp_path / "sasl-password").write_text("first")
    assert settings.client_options()["sasl_plain_password"] == "first"
    (tmp_path / "sasl-password").write_text("rotated")
    options = settings.client_options()
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "tenant",
        "rotated",
    )


def test_a_missing_credentials_file_is_named_in_the_error(tmp_path: Path) -> None:
    settings = KafkaSettings(
        "kafka:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        credentials_dir=str(tmp_path),
    )
    (tmp_path / "sasl-username").write_text("tenant")
    with pytest.raises(KafkaCredentialsMissing, match=r"sasl-password is absent or empty"):
        settings.client_options()


def test_the_ca_comes_from_the_credentials_directory_unless_a_ca_file_is_given(
    tmp_path: Path,
) -> None:
    in_dir = KafkaSettings("kafka:9093", security_protocol="SSL", credentials_dir=str(tmp_path))
    assert in_dir.ca_file() is None  # no ca.crt yet: the system's trust store
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    assert in_dir.ca_file() == str(tmp_path / "ca.crt")
    given = KafkaSettings(
        "kafka:9093", security_protocol="SSL", ssl_cafile="/ca.pem", credentials_dir=str(tmp_path)
    )
    assert given.ca_file() == "/ca.pem"


def test_sasl_without_a_mechanism_is_refused_even_with_a_credentials_directory() -> None:
    with pytest.raises(ValueError, match="needs a SASL mechanism"):
        KafkaSettings("kafka:9093", security_protocol="SASL_SSL", credentials_dir="/etc/kafka")


def test_the_tenant_secret_holds_the_tenant_credentials_and_the_operators_ca() -> None:
    settings = OperatorSettings.from_environment(SASL_SSL)
    secret = tenant_credentials.tenant_secret(
        METER, settings.kafka, settings.tenant_sasl_credentials(), b"PEM"
    )
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("kmeter-kafka", "shop")
    assert decoded(secret) == {
        "sasl-username": b"tenants",
        "sasl-password": b"tenant-secret",
        "ca.crt": b"PEM",
    }
    assert "ownerReferences" not in secret["metadata"]  # applied apart, per Meter


def test_each_meter_owns_the_secret_through_its_own_entry_and_field_manager() -> None:
    part = tenant_credentials.ownership(METER)
    (owner,) = part["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Meter", "tokens", "3f0c-uid")
    assert "controller" not in owner  # every Meter of the namespace co-owns it
    assert "data" not in part  # the data is the operator's, under one field manager
    other = {**METER, "metadata": {**METER["metadata"], "uid": "other-uid"}}
    assert tenant_credentials.owner_manager(METER) != tenant_credentials.owner_manager(other)


def test_sasl_without_tenant_credentials_is_refused_at_start() -> None:
    without = {k: v for k, v in SASL_SSL.items() if "TENANT" not in k}
    with pytest.raises(OperatorSettingsError, match="needs the tenant SASL credentials"):
        OperatorSettings.from_environment(without)


def test_a_tenant_username_without_a_password_is_refused() -> None:
    without = {k: v for k, v in SASL_SSL.items() if k != "KMETER_KAFKA_TENANT_SASL_PASSWORD"}
    with pytest.raises(OperatorSettingsError, match="go together"):
        OperatorSettings.from_environment(without)


def test_new_credentials_or_a_new_ca_roll_the_workers() -> None:
    settings = OperatorSettings.from_environment(SASL_SSL)

    def annotation(secret: dict[str, Any]) -> str:
        fingerprint = tenant_credentials.fingerprint(secret)
        deployment = worker_deployment(METER, METER["spec"], settings, (), fingerprint)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["kmeter.io/kafka-credentials"])

    kafka = settings.kafka
    first = annotation(tenant_credentials.tenant_secret(METER, kafka, ("a", "b"), b"CA"))
    assert first == annotation(tenant_credentials.tenant_secret(METER, kafka, ("a", "b"), b"CA"))
    assert first != annotation(tenant_credentials.tenant_secret(METER, kafka, ("a", "c"), b"CA"))
    assert first != annotation(tenant_credentials.tenant_secret(METER, kafka, ("a", "b"), b"CB"))


def test_a_worker_on_a_secured_kafka_mounts_the_secret_and_reads_its_credentials_from_it() -> None:
    settings = OperatorSettings.from_environment(SASL_SSL)
    deployment = worker_deployment(METER, METER["spec"], settings)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["KMETER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KMETER_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["KMETER_KAFKA_CREDENTIALS_DIR"] == "/etc/kmeter/kafka"
    assert "KMETER_KAFKA_SASL_PASSWORD" not in env  # never the operator's own variables
    assert {"name": "kmeter-kafka", "mountPath": "/etc/kmeter/kafka", "readOnly": True} in (
        container["volumeMounts"]
    )
    assert {
        "name": "kmeter-kafka",
        "secret": {"secretName": "kmeter-kafka", "optional": False},
    } in pod["volumes"]
    # What the worker makes of that environment, with the Secret mounted:
    worker_view = KafkaSettings.from_environment({**env, "KMETER_KAFKA_BOOTSTRAP": "kafka:9093"})
    assert worker_view.credentials_dir == "/etc/kmeter/kafka"


def test_a_worker_on_plaintext_kafka_mounts_no_credentials() -> None:
    settings = OperatorSettings.from_environment({"KMETER_KAFKA_BOOTSTRAP": "kafka:9092"})
    pod = worker_deployment(METER, METER["spec"], settings)["spec"]["template"]["spec"]
    names = {volume["name"] for volume in pod["volumes"]}
    env = {item["name"] for item in pod["containers"][0]["env"]}
    assert "kmeter-kafka" not in names
    assert "KMETER_KAFKA_CREDENTIALS_DIR" not in env


POD: dict[str, Any] = {
    "metadata": {"name": "web", "annotations": {"kmeter.io/inject": "true"}},
    "spec": {
        "containers": [
            {"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}
        ]
    },
}


def injected(settings: InjectorSettings) -> dict[str, Any]:
    decision = decide(POD, "shop", settings)
    assert isinstance(decision, Inject)
    patched: dict[str, Any] = jsonpatch.apply_patch(POD, decision.patch)
    return patched


def test_an_injected_sidecar_on_a_secured_kafka_mounts_the_secret_optionally() -> None:
    settings = InjectorSettings.from_environment(
        {
            "KMETER_KAFKA_BOOTSTRAP": "kafka:9093",
            "KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KMETER_KAFKA_SASL_MECHANISM": "PLAIN",
        }
    )
    pod = injected(settings)
    (sidecar,) = pod["spec"]["initContainers"]
    env = {item["name"]: item.get("value") for item in sidecar["env"]}
    assert env["KMETER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KMETER_KAFKA_SASL_MECHANISM"] == "PLAIN"
    assert env["KMETER_KAFKA_CREDENTIALS_DIR"] == "/etc/kmeter/kafka"
    assert {
        "name": "kmeter-kafka",
        "secret": {"secretName": "kmeter-kafka", "optional": True},
    } in pod["spec"]["volumes"]
    # The sidecar accepts exactly that configuration.
    config = parse_config([], {**env, "KMETER_NAMESPACE": "shop"})
    assert config.kafka("kmeter-sidecar").credentials_dir == "/etc/kmeter/kafka"


def test_an_injected_sidecar_on_plaintext_kafka_gets_no_credentials_volume() -> None:
    pod = injected(InjectorSettings.from_environment({"KMETER_KAFKA_BOOTSTRAP": "kafka:9092"}))
    assert "kmeter-kafka" not in {volume["name"] for volume in pod["spec"]["volumes"]}


def test_the_injector_refuses_sasl_without_a_mechanism_at_start() -> None:
    with pytest.raises(SettingsError, match="needs a SASL mechanism"):
        InjectorSettings.from_environment(
            {"KMETER_KAFKA_BOOTSTRAP": "kafka:9093", "KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
        )


def test_the_sidecar_refuses_an_unknown_security_protocol_naming_the_flags() -> None:
    with pytest.raises(ConfigError, match=r"--kafka-\*.*'TLS' is not one of"):
        parse_config(
            ["--kafka-bootstrap", "kafka:9093", "--namespace", "shop"],
            {"KMETER_KAFKA_SECURITY_PROTOCOL": "TLS"},
        )


def test_the_sidecar_takes_sasl_credentials_from_flags_and_variables() -> None:
    config = parse_config(
        [
            "--kafka-bootstrap", "kafka:9093", "--namespace", "shop",
            "--kafka-security-protocol", "SASL_PLAINTEXT",
            "--kafka-sasl-mechanism", "SCRAM-SHA-256",
            "--kafka-sasl-username", "shop",
        ],
        {"KMETER_KAFKA_SASL_PASSWORD": "from-a-secret"},
    )  # fmt: skip
    options = config.kafka("kmeter-sidecar").client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "shop",
        "from-a-secret",
    )
