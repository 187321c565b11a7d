"""The operator checks Quotas against their Meters and configures the Meter's worker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from tests.support.kube import Environment
from tests.support.operator import Resources, eventually

FREE_TIER: dict[str, Any] = {
    "meterRef": {"name": "llm-tokens"},
    "limit": 100000,
    "period": {"every": "MONTH", "timeZone": "UTC"},
}
LLM_TOKENS: dict[str, Any] = {
    "eventType": "llm.completion",
    "aggregation": "SUM",
    "valueProperty": "$.usage.total_tokens",
}


@pytest.fixture
def resources(testenv: Environment, namespace: str) -> Resources:
    return Resources(testenv.api_client(), namespace)


def quota_names_in_worker_config(resources: Resources, meter: str) -> list[str] | None:
    try:
        configmap = resources.core.read_namespaced_config_map(
            f"kmeter-worker-{meter}-quotas", resources.namespace
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return [quota["name"] for quota in json.loads(configmap.data["quotas.json"])]


@pytest.mark.usefixtures("operator")
def test_a_quota_says_meter_not_found_and_recovers_by_itself_when_the_meter_appears(
    resources: Resources,
) -> None:
    resources.create("quotas", "free-tier", FREE_TIER)
    condition = eventually(
        lambda: resources.condition("quotas", "free-tier", "Ready"), what="a Ready condition"
    )
    assert condition["status"] == "False"
    assert condition["reason"] == "MeterNotFound"
    assert f"{resources.namespace}/llm-tokens" in condition["message"]
    assert "meter" not in (resources.get("quotas", "free-tier") or {})["status"]

    resources.create("meters", "llm-tokens", LLM_TOKENS)

    quota = eventually(
        lambda: resources.ready("quotas", "free-tier"), timeout=60, what="Quota Ready"
    )
    assert quota["status"]["meter"] == "llm-tokens"
    assert eventually(
        lambda: quota_names_in_worker_config(resources, "llm-tokens") == ["free-tier"],
        what="the worker's quota ConfigMap lists the Quota",
    )


@pytest.mark.usefixtures("operator")
def test_a_quota_on_an_average_is_refused_with_the_reason(resources: Resources) -> None:
    resources.create(
        "meters",
        "latency",
        {"eventType": "http.request", "aggregation": "AVG", "valueProperty": "$.ms"},
    )
    resources.create("quotas", "latency-cap", {**FREE_TIER, "meterRef": {"name": "latency"}})

    condition = eventually(
        lambda: (
            (c := resources.condition("quotas", "latency-cap", "Ready"))
            and c["reason"] == "AggregationNotLimitable"
            and c
        ),
        what="Ready=False AggregationNotLimitable",
    )
    assert condition["status"] == "False"
    assert "AVG" in condition["message"]
    eventually(lambda: quota_names_in_worker_config(resources, "latency") == [], what="not used")


@pytest.mark.usefixtures("operator")
def test_a_deleted_quota_leaves_the_worker_configuration(resources: Resources) -> None:
    resources.create("meters", "llm-tokens", LLM_TOKENS)
    resources.create("quotas", "free-tier", FREE_TIER)
    resources.create("quotas", "pro-tier", {**FREE_TIER, "limit": 5000000})
    eventually(
        lambda: quota_names_in_worker_config(resources, "llm-tokens") == ["free-tier", "pro-tier"],
        what="both Quotas configured",
    )

    resources.delete("quotas", "free-tier")

    eventually(
        lambda: quota_names_in_worker_config(resources, "llm-tokens") == ["pro-tier"],
        what="only pro-tier left",
    )
