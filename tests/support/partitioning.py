"""Counting what ``kmeter.kafka.partitions`` hashes, to tell remembered partitions from
computed ones."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from kmeter.kafka import partitions


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on (for the test), each key ``kmeter.kafka.partitions`` hashes with Kafka's
    default partitioner is appended to the list returned."""
    hashed: list[bytes] = []

    class Counting:
        def __call__(self, key: bytes, *choices: Any) -> Any:
            hashed.append(key)
            return DefaultPartitioner()(key, *choices)

    monkeypatch.setattr(partitions, "DefaultPartitioner", Counting)
    return hashed
