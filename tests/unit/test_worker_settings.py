"""The worker's configuration from the environment the operator gives it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

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
    assert settings.dedup_max_entries == 2_000_000
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
    assert settings.dedup_max_entries == 5000
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
    ],
)
def test_a_wrong_environment_is_refused_with_a_reason(
    changes: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_environment("ns", "m", environ(**changes))
