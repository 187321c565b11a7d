"""The worker's configuration from the environment the operator gives it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from kmeter.worker.memory import dedup_max_entries
from kmeter.worker.settings import SettingsError, WorkerSettings

SPEC = {
    "eventType": "llm.completion",
    "aggregation": "SUM",
    "valueProperty": "$.usage.total_tokens",
    "groupBy": {"model": "$.model"},
    "windowSize": "MINUTE",
    "topic": {"partitions": 6, "replicationFactor": 3, "retention": "P400D"},
    "workers": {"replicas": 2},
    "deletionPolicy": "Retain",
}


def environ(**changes: str) -> dict[str, str]:
    return {"KMETER_KAFKA_BOOTSTRAP": "kafka:9092", "KMETER_METER": json.dumps(SPEC), **changes}


def test_the_operators_environment_gives_a_runnable_worker_with_documented_defaults() -> None:
    settings = WorkerSettings.from_environment("team-a", "tokens", environ(POD_NAME="w-1"))
    assert settings.retention == timedelta(days=400)
    assert settings.dedup_horizon == timedelta(hours=24)
    assert settings.dedup_bound(partitions=6) == 2_000_000  # no memory limit given
    assert (settings.metrics_port, settings.health_port) == (9090, 8080)
    assert settings.kafka.client_id == "w-1"
    assert settings.fold_meter().group_names == ("model",)


def test_dedup_and_ports_are_configurable() -> None:
    settings = WorkerSettings.from_environment(
        "ns",
        "m",
        environ(
            KMETER_DEDUP_HORIZON="PT36H",
            KMETER_DEDUP_MAX_ENTRIES="5000",
            KMETER_METRICS_PORT="19090",
            KMETER_HEALTH_PORT="18080",
        ),
    )
    assert settings.dedup_horizon == timedelta(hours=36)
    assert settings.dedup_bound(partitions=6) == 5000
    assert (settings.metrics_port, settings.health_port) == (19090, 18080)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"KMETER_KAFKA_BOOTSTRAP": ""}, "KMETER_KAFKA_BOOTSTRAP is not set"),
        ({"KMETER_METER": "{"}, "KMETER_METER is not JSON"),
        ({"KMETER_METER": json.dumps({**SPEC, "aggregation": "MEDIAN"})}, "not a valid Meter"),
        ({"KMETER_DEDUP_HORIZON": "1 day"}, "KMETER_DEDUP_HORIZON"),
        ({"KMETER_DEDUP_MAX_ENTRIES": "0"}, "must be at least 1"),
        ({"KMETER_METRICS_PORT": "http"}, "is not an integer"),
        ({"KMETER_MEMORY_LIMIT": "512Mi"}, "KMETER_MEMORY_LIMIT='512Mi' is not an integer"),
        ({"KMETER_KAFKA_SECURITY_PROTOCOL": "TLS"}, "security protocol 'TLS' is not one of"),
        ({"KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a SASL mechanism"),
    ],
)
def test_a_wrong_environment_is_refused_with_a_reason(
    changes: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_environment("ns", "m", environ(**changes))


def test_the_dedup_bound_follows_the_memory_limit_and_the_ingest_partitions() -> None:
    limit = str(512 * 2**20)  # the downward API gives limits.memory in bytes
    settings = WorkerSettings.from_environment("ns", "m", environ(KMETER_MEMORY_LIMIT=limit))
    assert settings.dedup_bound(partitions=6) == dedup_max_entries(limit, 6)
    assert settings.dedup_bound(partitions=12) < settings.dedup_bound(partitions=6)
    explicit = WorkerSettings.from_environment(
        "ns", "m", environ(KMETER_MEMORY_LIMIT=limit, KMETER_DEDUP_MAX_ENTRIES="7000")
    )
    assert explicit.dedup_bound(partitions=6) == 7000


def test_kafka_tls_and_sasl_come_from_the_environment() -> None:
    settings = WorkerSettings.from_environment(
        "ns",
        "m",
        environ(
            KMETER_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KMETER_KAFKA_CA_FILE="/etc/kafka/ca.crt",
            KMETER_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            KMETER_KAFKA_SASL_USERNAME="worker",
            KMETER_KAFKA_SASL_PASSWORD="secret",
        ),
    )
    kafka = settings.kafka
    assert (kafka.bootstrap_servers, kafka.security_protocol) == ("kafka:9092", "SASL_SSL")
    assert (kafka.ssl_cafile, kafka.sasl_mechanism, kafka.sasl_username) == (
        "/etc/kafka/ca.crt",
        "SCRAM-SHA-512",
        "worker",
    )
