"""The operator's pure decisions: conditions, desired topics, worker objects, quota checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter import topics
from kmeter.kafka.settings import KafkaSettings
from kmeter.operator.conditions import Condition, merge_conditions, transitions
from kmeter.operator.meter_topics import TopicLayout, meter_topics, quota_topics
from kmeter.operator.meter_worker import label_value, worker_deployment
from kmeter.operator.quota_reconcile import check_quota
from kmeter.operator.settings import OperatorSettings, SettingsError, retry_delay

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OK_TOPICS = Condition("TopicsReady", "True", "TopicsReconciled", "fine")
OK_WORKER = Condition("WorkerDeployed", "True", "WorkerDeployed", "fine")
DOWN = Condition("TopicsReady", "False", "KafkaUnavailable", "cannot reach Kafka")
GATES = ("TopicsReady", "WorkerDeployed")


def ready(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in conditions if c["type"] == "Ready")


def test_ready_is_true_only_when_every_gating_condition_is_true() -> None:
    good = merge_conditions([], [OK_TOPICS, OK_WORKER], gates=GATES, generation=1, now=T0)
    bad = merge_conditions([], [DOWN, OK_WORKER], gates=GATES, generation=1, now=T0)
    assert ready(good)["status"] == "True"
    assert (ready(bad)["status"], ready(bad)["reason"]) == ("False", "KafkaUnavailable")


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    first = merge_conditions([], [DOWN, OK_WORKER], gates=GATES, generation=1, now=T0)
    later = T0 + timedelta(minutes=5)
    same = merge_conditions(first, [DOWN, OK_WORKER], gates=GATES, generation=1, now=later)
    healed = merge_conditions(same, [OK_TOPICS, OK_WORKER], gates=GATES, generation=1, now=later)
    assert ready(same)["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready(healed)["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_events_are_due_only_for_conditions_whose_status_or_reason_changed() -> None:
    first = merge_conditions([], [DOWN, OK_WORKER], gates=GATES, generation=1, now=T0)
    again = merge_conditions(first, [DOWN, OK_WORKER], gates=GATES, generation=2, now=T0)
    assert {c["type"] for c in transitions([], first)} == {"Ready", "TopicsReady", "WorkerDeployed"}
    assert transitions(first, again) == []


layouts = st.builds(
    TopicLayout,
    partitions=st.integers(1, 64),
    replication_factor=st.just(1),
    retention_ms=st.integers(1, 10**12),
)


@given(own=layouts, others=st.lists(layouts, max_size=5), existing=st.integers(0, 64))
def test_shared_topics_take_the_largest_layout_and_the_meters_own_are_co_partitioned(
    own: TopicLayout, others: list[TopicLayout], existing: int
) -> None:
    # existing: the ingest topic's partitions now (0: not there yet), perhaps grown by a Meter
    # since deleted — Kafka never shrinks it, so it may exceed every remaining spec
    ingest, output, dedup, dead_letter = meter_topics(
        "team-a", "tokens", own, others, ingest_partitions=existing
    )
    decisions, _ = quota_topics("team-a", own, others, ingest_partitions=existing)
    everyone = [own, *others]
    assert ingest.name == topics.ingest_topic("team-a")
    assert ingest.partitions == max(layout.partitions for layout in everyone)
    assert ingest.configs["retention.ms"] == str(max(layout.retention_ms for layout in everyone))
    assert output.name == topics.meter_topic("team-a", "tokens")
    ingest_after = max(ingest.partitions, existing)  # as reconciled: grown, never shrunk
    assert output.partitions == dedup.partitions == ingest_after, "co-partitioned"
    assert decisions.partitions == ingest_after, "co-partitioned"
    assert dedup.name == topics.meter_dedup_topic("team-a", "tokens")
    assert output.configs == {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(own.retention_ms),
    }
    assert dead_letter.name == topics.dead_letter_topic("team-a")


@given(name=st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,170}[a-z0-9])?\Z"))
def test_label_values_fit_63_characters_and_stay_distinct(name: str) -> None:
    value = label_value(name)
    assert len(value) <= 63
    assert value == name or len(name) > 63
    assert label_value(name + "x") != value or len(name) > 63


SETTINGS = OperatorSettings(kafka=KafkaSettings("kafka:9092"), worker_image="kmeter:1")
METER_BODY: dict[str, Any] = {
    "apiVersion": "kmeter.io/v1alpha1",
    "kind": "Meter",
    "metadata": {"name": "tokens", "namespace": "team-a", "uid": "u-1"},
    "spec": {"eventType": "llm", "aggregation": "SUM", "workers": {"replicas": 3}},
}


def test_the_worker_deployment_runs_the_meter_owned_by_it_and_locked_down() -> None:
    deployment = worker_deployment(METER_BODY, METER_BODY["spec"], SETTINGS)
    [owner] = deployment["metadata"]["ownerReferences"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert (owner["uid"], owner["controller"]) == ("u-1", True)
    assert deployment["spec"]["replicas"] == 3
    assert container["args"] == ["worker", "--namespace", "team-a", "--meter", "tokens"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KMETER_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert '"aggregation":"SUM"' in env["KMETER_METER"]


QUOTA = {"meterRef": {"name": "tokens"}, "limit": 100, "period": {"every": "DAY"}}


def test_a_quota_is_checked_against_its_meter() -> None:
    assert check_quota("ns", QUOTA, None).reason == "MeterNotFound"
    assert check_quota("ns", QUOTA, {"aggregation": "AVG"}).reason == "AggregationNotLimitable"
    assert check_quota("ns", QUOTA, {"aggregation": "SUM"}).status == "True"
    elsewhere = {**QUOTA, "period": {"every": "DAY", "timeZone": "Mars/Olympus_Mons"}}
    assert check_quota("ns", elsewhere, {"aggregation": "SUM"}).reason == "UnknownTimeZone"
    filtered = {**QUOTA, "filterGroupBy": {"model": "gpt-4o"}}
    assert check_quota("ns", filtered, {"aggregation": "SUM"}).reason == "UnknownGroupByKey"
    grouped = {"aggregation": "SUM", "groupBy": {"model": "$.model"}}
    assert check_quota("ns", filtered, grouped).status == "True"


def test_retries_back_off_to_a_minute() -> None:
    assert [retry_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_the_operator_refuses_to_start_without_kafka_and_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="KMETER_KAFKA_BOOTSTRAP is not set"):
        OperatorSettings.from_environment({})


def test_kafka_tls_and_sasl_come_from_the_environment_the_chart_sets() -> None:
    settings = OperatorSettings.from_environment(
        {
            "KMETER_KAFKA_BOOTSTRAP": "kafka:9093",
            "KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KMETER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KMETER_KAFKA_SASL_USERNAME": "kmeter",
            "KMETER_KAFKA_SASL_PASSWORD": "s3cret",
            "KMETER_KAFKA_TENANT_SASL_USERNAME": "tenants",
            "KMETER_KAFKA_TENANT_SASL_PASSWORD": "t3nant",
        }
    )
    options = settings.kafka.client_options()
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "kmeter",
    )
    assert "s3cret" not in repr(settings), "the password never shows in logs"
    assert "t3nant" not in repr(settings)


def test_sasl_without_credentials_is_refused_with_what_is_missing() -> None:
    with pytest.raises(SettingsError, match="needs a SASL mechanism"):
        OperatorSettings.from_environment(
            {"KMETER_KAFKA_BOOTSTRAP": "k:1", "KMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
        )
