"""Topic names are legal Kafka names for every legal namespace and Meter name."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from kmeter import topics

KAFKA_LEGAL = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
DNS_LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
METER_NAME = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,300}[a-z0-9])?\Z").filter(
    lambda name: len(name) <= topics.MAX_METER_NAME_LENGTH
)


@given(namespace=DNS_LABEL, meter=METER_NAME)
def test_every_name_is_a_legal_kafka_topic_name(namespace: str, meter: str) -> None:
    for name in (
        topics.ingest_topic(namespace),
        topics.meter_topic(namespace, meter),
        topics.meter_dedup_topic(namespace, meter),
        topics.dead_letter_topic(namespace),
        topics.quota_decisions_topic(namespace),
        topics.notifications_topic(namespace),
    ):
        assert KAFKA_LEGAL.match(name), name


@given(namespace=DNS_LABEL, a=METER_NAME, b=METER_NAME)
def test_two_meters_never_share_an_output_or_dedup_topic(namespace: str, a: str, b: str) -> None:
    assert (topics.meter_topic(namespace, a) == topics.meter_topic(namespace, b)) == (a == b)
    assert topics.meter_topic(namespace, a) != topics.meter_dedup_topic(namespace, b)
    assert topics.ingest_topic(namespace) not in {
        topics.meter_topic(namespace, a),
        topics.meter_dedup_topic(namespace, a),
    }


def test_the_names_read_as_documented() -> None:
    assert topics.ingest_topic("team-a") == "kmeter.team-a.events"
    assert topics.meter_topic("team-a", "llm-tokens") == "kmeter.team-a.meter.llm-tokens"
    assert topics.quota_decisions_topic("team-a") == "kmeter.team-a.quota-decisions"
