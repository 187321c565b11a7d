"""Keys' partitions, remembered (``kmeter.kafka.partitions``): always what Kafka's default
partitioner chooses for the partition count asked about, computed once per key and count."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from tests.support.partitioning import count_hashing

from kmeter.kafka.partitions import KeyPartitions


def default(key: bytes, count: int) -> int:
    every = list(range(count))
    return int(DefaultPartitioner()(key, every, every))


@given(
    st.lists(st.tuples(st.binary(max_size=8), st.integers(min_value=1, max_value=12)), max_size=80),
    st.integers(min_value=1, max_value=10),
)
def test_every_key_gets_the_default_partitioners_choice_for_the_count_asked_about(
    asked: list[tuple[bytes, int]], most: int
) -> None:
    # Counts interleave as for topics of several namespaces; a small bound makes the memory
    # start again often.
    remembered = KeyPartitions(most=most)
    for key, count in asked:
        assert remembered.chooser(count)(key) == default(key, count)
        assert all(len(memory) <= most for memory in remembered._by_count.values())


def test_the_memory_stays_bounded_within_one_chooser_and_skips_long_keys() -> None:
    remembered = KeyPartitions(most=50)
    choose = remembered.chooser(6)
    for number in range(1_000):  # one large batch of distinct subjects
        key = b"customer-%d" % number
        assert choose(key) == default(key, 6)
    assert len(remembered._by_count[6]) <= 50
    long_key = b"x" * 100_000  # subjects have no length limit
    assert choose(long_key) == default(long_key, 6)
    assert long_key not in remembered._by_count[6]


def test_a_key_is_hashed_once_per_partition_count(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = count_hashing(monkeypatch)
    remembered = KeyPartitions()
    keys = [b"customer-1", b"customer-2"]
    for _ in range(5):
        choose = remembered.chooser(3)
        assert [choose(key) for key in keys * 3] == [default(key, 3) for key in keys * 3]
    assert hashed == keys
    choose = remembered.chooser(7)  # the topic grew, or another namespace's topic
    assert [choose(key) for key in keys] == [default(key, 7) for key in keys]
    assert hashed == keys * 2
    assert remembered.chooser(3)(keys[0]) == default(keys[0], 3)
    assert hashed == keys * 2  # still remembered for 3
