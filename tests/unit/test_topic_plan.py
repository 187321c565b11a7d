"""The topic plan: what reconciling one topic takes, computed from desired vs observed.

The oracle below is Kafka as the reconciler sees it: a topic's effective configs are the
broker defaults overlaid with the topic's overrides, and a (legacy) AlterConfigs *replaces*
the whole override set.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter import topics
from kmeter.kafka.topics import (
    DesiredTopic,
    ObservedTopic,
    PartitionsGrown,
    ReplicationFactorDiffers,
    ShrinkRefused,
    TopicPlan,
    plan_topic,
)

NAME = topics.ingest_topic("team-a")
DEFAULTS = {
    "cleanup.policy": "delete",
    "retention.ms": "604800000",
    "max.message.bytes": "1048588",
    "segment.ms": "604800000",
    "min.insync.replicas": "1",
}
KEYS = st.sampled_from(sorted(DEFAULTS))
VALUES = st.sampled_from(["delete", "compact,delete", "604800000", "86400000", "1", "2"])
CONFIGS = st.dictionaries(KEYS, VALUES, max_size=len(DEFAULTS))


def kafka_topic(
    partitions: int, replication_factor: int, overrides: Mapping[str, str]
) -> ObservedTopic:
    return ObservedTopic(
        name=NAME,
        partitions=partitions,
        replication_factor=replication_factor,
        configs={**DEFAULTS, **overrides},
        overrides=overrides,
    )


def kafka_after(
    desired: DesiredTopic, observed: ObservedTopic | None, plan: TopicPlan
) -> ObservedTopic:
    """The topic once Kafka has carried out ``plan``."""
    if observed is None:
        assert plan.create
        return kafka_topic(desired.partitions, desired.replication_factor, desired.configs)
    partitions = plan.grow.after if plan.grow else observed.partitions
    overrides = plan.config_overrides if plan.revert else observed.overrides
    return kafka_topic(partitions, observed.replication_factor, overrides)


desired_topics = st.builds(
    DesiredTopic,
    name=st.just(NAME),
    partitions=st.integers(1, 64),
    replication_factor=st.integers(1, 5),
    configs=CONFIGS,
)
observed_topics = st.builds(
    kafka_topic,
    partitions=st.integers(1, 64),
    replication_factor=st.integers(1, 5),
    overrides=CONFIGS,
)


@given(desired=desired_topics, observed=observed_topics)
def test_the_plan_never_shrinks_a_topic_and_says_so_when_asked_to(
    desired: DesiredTopic, observed: ObservedTopic
) -> None:
    plan = plan_topic(desired, observed)
    after = kafka_after(desired, observed, plan)
    assert after.partitions == max(desired.partitions, observed.partitions)
    shrink = ShrinkRefused(actual=observed.partitions, desired=desired.partitions)
    assert (shrink in plan.problems) == (desired.partitions < observed.partitions)


@given(desired=desired_topics, observed=observed_topics)
def test_the_plan_reports_a_different_replication_factor_and_never_changes_it(
    desired: DesiredTopic, observed: ObservedTopic
) -> None:
    plan = plan_topic(desired, observed)
    assert kafka_after(desired, observed, plan).replication_factor == (observed.replication_factor)
    differs = ReplicationFactorDiffers(
        actual=observed.replication_factor, desired=desired.replication_factor
    )
    assert (differs in plan.problems) == (desired.replication_factor != observed.replication_factor)


@given(desired=desired_topics, observed=observed_topics)
def test_after_the_plan_every_managed_key_has_its_desired_value_and_no_other_key_changed(
    desired: DesiredTopic, observed: ObservedTopic
) -> None:
    after = kafka_after(desired, observed, plan_topic(desired, observed))
    for key, value in after.configs.items():
        expected = desired.configs.get(key, observed.configs[key])
        assert value == expected, key
    unmanaged = set(observed.overrides) - set(desired.configs)
    assert {k: after.overrides[k] for k in unmanaged} == {
        k: observed.overrides[k] for k in unmanaged
    }


@given(desired=desired_topics, observed=st.none() | observed_topics)
def test_applying_the_plan_then_planning_again_changes_nothing(
    desired: DesiredTopic, observed: ObservedTopic | None
) -> None:
    first = plan_topic(desired, observed)
    second = plan_topic(desired, kafka_after(desired, observed, first))
    assert second.changes_nothing
    assert second.config_overrides == {}


@given(desired=desired_topics)
def test_a_missing_topic_is_planned_for_creation_and_nothing_else(
    desired: DesiredTopic,
) -> None:
    assert plan_topic(desired, None) == TopicPlan(create=True)


def test_a_topic_as_desired_needs_nothing() -> None:
    observed = kafka_topic(6, 3, {"cleanup.policy": "compact,delete"})
    desired = DesiredTopic(NAME, 6, 3, {"cleanup.policy": "compact,delete"})
    assert plan_topic(desired, observed) == TopicPlan()


def test_a_managed_key_that_equals_its_default_is_not_drift() -> None:
    desired = DesiredTopic(NAME, 1, 1, {"cleanup.policy": DEFAULTS["cleanup.policy"]})
    assert plan_topic(desired, kafka_topic(1, 1, {})).changes_nothing


def test_growing_and_reverting_keep_the_unmanaged_overrides_in_the_set_sent() -> None:
    observed = kafka_topic(3, 1, {"retention.ms": "1", "max.message.bytes": "200000"})
    desired = DesiredTopic(NAME, 6, 1, {"retention.ms": "86400000"})
    assert plan_topic(desired, observed) == TopicPlan(
        grow=PartitionsGrown(before=3, after=6),
        revert=("retention.ms",),
        config_overrides={"retention.ms": "86400000", "max.message.bytes": "200000"},
    )


def test_the_problems_give_a_condition_reason_and_a_message_a_person_reads() -> None:
    plan = plan_topic(DesiredTopic(NAME, 3, 3), kafka_topic(6, 1, {}))
    assert [(p.reason, p.message) for p in plan.problems] == [
        (
            "PartitionsCannotShrink",
            "the topic has 6 partitions and 3 are asked for; "
            "Kafka cannot remove partitions, so it keeps 6",
        ),
        (
            "ReplicationFactorDiffers",
            "the topic has replication factor 1 and 3 is asked for; it is set at creation, "
            "change it with a partition reassignment (kafka-reassign-partitions)",
        ),
    ]


@pytest.mark.parametrize(("partitions", "replication_factor"), [(0, 1), (1, 0), (-1, 1)], ids=str)
def test_a_desired_topic_needs_at_least_one_partition_and_one_replica(
    partitions: int, replication_factor: int
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DesiredTopic(NAME, partitions, replication_factor)


def test_a_desired_topic_keeps_its_configs_even_when_the_callers_dict_changes() -> None:
    configs = {"retention.ms": "1"}
    desired = DesiredTopic(NAME, 1, 1, configs)
    configs["retention.ms"] = "2"
    assert desired.configs == {"retention.ms": "1"}
    assert desired == DesiredTopic(NAME, 1, 1, {"retention.ms": "1"})
    assert hash(desired) == hash(DesiredTopic(NAME, 1, 1, {"retention.ms": "1"}))
