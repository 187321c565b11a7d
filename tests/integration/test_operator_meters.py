"""The operator turns Meters into Kafka topics and worker Deployments, and keeps them so.

The operator runs as a real process under an identity bound to exactly the chart's
ClusterRole, against the real API server (with controller-manager) and the real broker.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from tests.support.faults import KafkaBroker
from tests.support.kafka import (
    commit_group_offset,
    consumer_groups,
    describe_topic,
    set_topic_configs,
)
from tests.support.kube import Environment
from tests.support.operator import EXAMPLES, OperatorProcess, Resources, eventually, kubectl

from kmeter import topics

LLM_TOKENS: dict[str, Any] = {
    "eventType": "llm.completion",
    "aggregation": "SUM",
    "valueProperty": "$.usage.total_tokens",
    "groupBy": {"model": "$.model"},
    "topic": {"partitions": 3, "replicationFactor": 1, "retention": "P30D"},
}


@pytest.fixture
def resources(testenv: Environment, namespace: str) -> Resources:
    return Resources(testenv.api_client(), namespace)


@pytest.mark.usefixtures("operator")
def test_a_meter_becomes_ready_with_its_topics_and_worker_deployment(
    resources: Resources, kafka_bootstrap: str
) -> None:
    resources.create("meters", "llm-tokens", LLM_TOKENS)
    meter = eventually(lambda: resources.ready("meters", "llm-tokens"), what="Meter Ready")

    ns = resources.namespace
    assert meter["status"]["topics"]["output"] == topics.meter_topic(ns, "llm-tokens")
    output = describe_topic(kafka_bootstrap, topics.meter_topic(ns, "llm-tokens"))
    assert output is not None
    assert output.partitions == 3
    assert output.overrides == {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(30 * 24 * 3600 * 1000),
    }
    ingest = describe_topic(kafka_bootstrap, topics.ingest_topic(ns))
    assert ingest is not None
    assert ingest.partitions == 3

    deployment = resources.deployment(meter["status"]["workerDeployment"])
    assert deployment is not None
    [owner] = deployment.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "Meter",
        "llm-tokens",
        meter["metadata"]["uid"],
        True,
    )
    assert deployment.metadata.labels["app.kubernetes.io/part-of"] == "kmeter"
    [container] = deployment.spec.template.spec.containers
    assert container.args == ["worker", "--namespace", ns, "--meter", "llm-tokens"]
    assert container.resources.requests == {"cpu": "100m", "memory": "128Mi"}
    condition_types = {c["type"] for c in meter["status"]["conditions"]}
    assert {"Ready", "TopicsReady", "WorkerDeployed", "WorkerAvailable"} <= condition_types


@pytest.mark.usefixtures("operator")
def test_partitions_grow_on_update_and_a_shrink_is_refused_with_a_reason(
    resources: Resources, kafka_bootstrap: str
) -> None:
    resources.create("meters", "calls", {"eventType": "api.call", "aggregation": "COUNT"})
    eventually(lambda: resources.ready("meters", "calls"), what="Meter Ready")
    output = topics.meter_topic(resources.namespace, "calls")

    resources.patch_spec("meters", "calls", {"topic": {"partitions": 6}})
    eventually(
        lambda: getattr(describe_topic(kafka_bootstrap, output), "partitions", 0) == 6,
        what="the output topic grew to 6 partitions",
    )

    resources.patch_spec("meters", "calls", {"topic": {"partitions": 2}})
    condition = eventually(
        lambda: (
            (c := resources.condition("meters", "calls", "TopicsReady"))
            and c["reason"] == "PartitionsCannotShrink"
            and c
        ),
        what="TopicsReady says PartitionsCannotShrink",
    )
    assert "has 6 partitions" in condition["message"]
    assert getattr(describe_topic(kafka_bootstrap, output), "partitions", 0) == 6


@pytest.mark.usefixtures("operator")
def test_a_meter_created_after_the_one_that_grew_the_ingest_topic_is_gone_is_co_partitioned(
    resources: Resources, kafka_bootstrap: str
) -> None:
    # The ingest topic keeps the 6 partitions a deleted Meter asked for (Kafka never shrinks);
    # a Meter asking for 3 must still get an output partition for each ingest partition, or
    # its worker could not write what it counts from partitions 3 to 5.
    resources.create(
        "meters", "big", {**LLM_TOKENS, "topic": {**LLM_TOKENS["topic"], "partitions": 6}}
    )
    eventually(lambda: resources.ready("meters", "big"), what="big Ready")
    resources.delete("meters", "big")
    eventually(lambda: resources.gone("meters", "big"), timeout=120, what="big gone")

    resources.create("meters", "late", {"eventType": "api.call", "aggregation": "COUNT"})
    eventually(lambda: resources.ready("meters", "late"), what="late Ready")
    ns = resources.namespace
    partitions = {  # the decisions topic, shared, was grown by "big" itself
        name: getattr(describe_topic(kafka_bootstrap, name), "partitions", 0)
        for name in (
            topics.ingest_topic(ns),
            topics.meter_topic(ns, "late"),
            topics.meter_dedup_topic(ns, "late"),
        )
    }
    assert set(partitions.values()) == {6}, partitions


@pytest.mark.usefixtures("operator")
def test_topic_config_drift_is_reverted(resources: Resources, kafka_bootstrap: str) -> None:
    resources.create("meters", "drift", LLM_TOKENS)
    eventually(lambda: resources.ready("meters", "drift"), what="Meter Ready")
    output = topics.meter_topic(resources.namespace, "drift")

    set_topic_configs(kafka_bootstrap, output, {"retention.ms": "1000", "cleanup.policy": "delete"})

    eventually(
        lambda: (
            (found := describe_topic(kafka_bootstrap, output))
            and found.overrides["retention.ms"] == str(30 * 24 * 3600 * 1000)
            and found.overrides["cleanup.policy"] == "compact,delete"
        ),
        what="the topic's retention and cleanup policy are put back",
    )


@pytest.mark.usefixtures("operator")
def test_a_worker_deployment_deleted_by_hand_comes_back(resources: Resources) -> None:
    resources.create("meters", "llm", LLM_TOKENS)
    meter = eventually(lambda: resources.ready("meters", "llm"), what="Meter Ready")
    name = meter["status"]["workerDeployment"]
    first_uid = resources.deployment(name).metadata.uid

    resources.apps.delete_namespaced_deployment(name, resources.namespace)

    again = eventually(
        lambda: (d := resources.deployment(name)) is not None and d.metadata.uid != first_uid and d,
        timeout=20,
        what="a new worker Deployment",
    )
    assert again.metadata.owner_references[0].uid == meter["metadata"]["uid"]


@pytest.mark.usefixtures("operator")
def test_a_spec_change_updates_the_worker_deployment(resources: Resources) -> None:
    resources.create("meters", "scaled", LLM_TOKENS)
    meter = eventually(lambda: resources.ready("meters", "scaled"), what="Meter Ready")
    name = meter["status"]["workerDeployment"]

    resources.patch_spec("meters", "scaled", {"workers": {"replicas": 2}})

    eventually(
        lambda: resources.deployment(name).spec.replicas == 2, what="the Deployment has 2 replicas"
    )
    eventually(lambda: resources.ready("meters", "scaled"), what="Ready at the new generation")


@pytest.mark.usefixtures("operator")
def test_deleting_a_retain_meter_keeps_its_topics_and_a_delete_meter_removes_its_own(
    resources: Resources, kafka_bootstrap: str
) -> None:
    resources.create("meters", "kept", {**LLM_TOKENS, "deletionPolicy": "Retain"})
    resources.create("meters", "dropped", {**LLM_TOKENS, "deletionPolicy": "Delete"})
    for name in ("kept", "dropped"):
        eventually(partial(resources.ready, "meters", name), what=f"{name} Ready")

    resources.delete("meters", "kept")
    resources.delete("meters", "dropped")
    for name in ("kept", "dropped"):
        eventually(partial(resources.gone, "meters", name), timeout=120, what=f"{name} gone")

    ns = resources.namespace
    assert describe_topic(kafka_bootstrap, topics.meter_topic(ns, "kept")) is not None
    assert describe_topic(kafka_bootstrap, topics.meter_topic(ns, "dropped")) is None
    assert describe_topic(kafka_bootstrap, topics.ingest_topic(ns)) is not None, (
        "the namespace's shared ingest topic is never deleted by a Meter"
    )
    eventually(
        lambda: resources.deployment("kmeter-worker-kept") is None,
        what="the garbage collector removed the worker",
    )


@pytest.mark.usefixtures("operator")
def test_a_meter_deleted_with_its_topics_also_loses_its_consumer_group(
    resources: Resources, kafka_bootstrap: str
) -> None:
    resources.create("meters", "forgotten", {**LLM_TOKENS, "deletionPolicy": "Delete"})
    eventually(lambda: resources.ready("meters", "forgotten"), what="Meter Ready")
    group = topics.meter_consumer_group(resources.namespace, "forgotten")
    commit_group_offset(kafka_bootstrap, group, topics.ingest_topic(resources.namespace))
    assert group in consumer_groups(kafka_bootstrap)

    resources.delete("meters", "forgotten")
    eventually(lambda: resources.gone("meters", "forgotten"), timeout=120, what="Meter gone")

    assert group not in consumer_groups(kafka_bootstrap)


@pytest.mark.usefixtures("operator")
def test_a_meter_deleted_and_created_again_becomes_ready_again(resources: Resources) -> None:
    resources.create("meters", "again", LLM_TOKENS)
    first = eventually(lambda: resources.ready("meters", "again"), what="Meter Ready")
    resources.delete("meters", "again")
    eventually(lambda: resources.get("meters", "again") is None, timeout=120, what="Meter gone")

    resources.create("meters", "again", LLM_TOKENS)
    second = eventually(lambda: resources.ready("meters", "again"), what="Ready again")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    deployment = eventually(
        lambda: (
            (d := resources.deployment("kmeter-worker-again"))
            and d.metadata.owner_references[0].uid == second["metadata"]["uid"]
            and d
        ),
        what="the worker is owned by the new Meter",
    )
    assert deployment is not None


@pytest.mark.usefixtures("operator")
def test_fifty_meters_applied_at_once_all_become_ready(resources: Resources) -> None:
    names = [f"m{i:02d}" for i in range(50)]
    for name in names:
        resources.create("meters", name, {"eventType": f"e.{name}", "aggregation": "COUNT"})

    for name in names:
        eventually(partial(resources.ready, "meters", name), timeout=90, what=name)
    deployments = resources.apps.list_namespaced_deployment(resources.namespace).items
    assert sorted(d.metadata.name for d in deployments) == [f"kmeter-worker-{n}" for n in names]


@pytest.mark.usefixtures("operator")
def test_kafka_down_is_reported_in_conditions_and_the_meter_recovers_when_it_returns(
    resources: Resources, kafka_broker: KafkaBroker, kafka_bootstrap: str
) -> None:
    kafka_broker.stop()
    try:
        resources.create("meters", "patient", LLM_TOKENS)
        condition = eventually(
            lambda: (
                (c := resources.condition("meters", "patient", "TopicsReady"))
                and c["reason"] == "KafkaUnavailable"
                and c
            ),
            timeout=60,
            what="TopicsReady says KafkaUnavailable",
        )
        assert condition["status"] == "False"
        ready = resources.condition("meters", "patient", "Ready")
        assert ready is not None
        assert ready["status"] == "False"
        # The worker Deployment does not wait for Kafka.
        assert resources.deployment("kmeter-worker-patient") is not None
        event = eventually(
            lambda: next(
                (
                    e
                    for e in resources.core.list_namespaced_event(resources.namespace).items
                    if e.involved_object.name == "patient" and e.reason == "KafkaUnavailable"
                ),
                None,
            ),
            what="a Warning Event on the Meter",
        )
        assert event.type == "Warning"
        assert "cannot reach Kafka" in event.message
    finally:
        kafka_broker.start()

    eventually(lambda: resources.ready("meters", "patient"), timeout=90, what="Ready after Kafka")
    output = topics.meter_topic(resources.namespace, "patient")
    assert describe_topic(kafka_bootstrap, output) is not None


def test_a_restarted_operator_resumes_and_creates_nothing_twice(
    operator: OperatorProcess, resources: Resources
) -> None:
    resources.create("meters", "steady", LLM_TOKENS)
    eventually(lambda: resources.ready("meters", "steady"), what="Meter Ready")
    before = resources.deployment("kmeter-worker-steady")

    operator.stop(kill=True)
    resources.create("meters", "while-down", LLM_TOKENS)
    operator.start()

    eventually(lambda: resources.ready("meters", "while-down"), what="the new Meter is handled")
    after = resources.deployment("kmeter-worker-steady")
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.generation == before.metadata.generation, (
        "re-applying the same desired Deployment must not change it"
    )
    deployments = resources.apps.list_namespaced_deployment(resources.namespace).items
    assert sorted(d.metadata.name for d in deployments) == [
        "kmeter-worker-steady",
        "kmeter-worker-while-down",
    ]


def test_the_operator_serves_metrics_and_liveness(
    operator: OperatorProcess, resources: Resources
) -> None:
    resources.create("meters", "observed", LLM_TOKENS)
    eventually(lambda: resources.ready("meters", "observed"), what="Meter Ready")
    status, text = operator.get("metrics", "/metrics")
    assert status == 200
    assert 'kmeter_operator_reconciles_total{kind="Meter",result="ok"}' in text
    assert "kmeter_operator_reconcile_seconds_bucket" in text
    assert operator.get("health", "/healthz")[0] == 200


@pytest.mark.usefixtures("operator")
def test_the_examples_applied_with_kubectl_become_ready_with_their_topics(
    resources: Resources, testenv: Environment, kafka_bootstrap: str
) -> None:
    kubectl(testenv, "apply", "-n", resources.namespace, "-f", str(EXAMPLES))

    for name in ("llm-tokens", "api-calls"):
        eventually(partial(resources.ready, "meters", name), timeout=60, what=f"Meter {name}")
    eventually(partial(resources.ready, "quotas", "free-tier-tokens"), what="the Quota")
    declared = {"llm-tokens": 6, "api-calls": 3}  # api-calls takes the default
    for name, partitions in declared.items():
        output = describe_topic(kafka_bootstrap, topics.meter_topic(resources.namespace, name))
        assert output is not None
        # Co-partitioned with the namespace's ingest topic: at least what the Meter declares.
        assert output.partitions >= partitions
    llm = describe_topic(kafka_bootstrap, topics.meter_topic(resources.namespace, "llm-tokens"))
    assert llm is not None
    assert llm.partitions == 6


def test_the_api_server_never_refused_the_operator_under_the_charts_role(
    operator: OperatorProcess,
) -> None:
    """Runs last in this module: every request above was allowed by the chart's ClusterRole."""
    log = operator.log_path.read_text(errors="replace")
    # An RBAC refusal reads 'is forbidden: User "..." cannot <verb> resource ...'. (Other 403s
    # are not about the role: e.g. an Event posted into a namespace being deleted.)
    refused = [line for line in log.splitlines() if "is forbidden: User" in line]
    assert refused == [], "\n".join(refused[:5])
