"""The dedup bound the operator gives a worker, from its container's memory limit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter.core.dedup import DEFAULT_MAX_ENTRIES
from kmeter.worker.memory import (
    BASE_BYTES,
    BYTES_PER_ENTRY,
    MIN_ENTRIES,
    dedup_max_entries,
    quantity_bytes,
)

UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_a_quantity_is_its_number_times_its_unit(number: int, unit: str) -> None:
    assert quantity_bytes(f"{number}{unit}") == number * UNITS[unit]


def test_quantities_with_fractions_exponents_and_plain_integers() -> None:
    assert quantity_bytes("0.5Gi") == 512 * 1024**2
    assert quantity_bytes("1e9") == 10**9
    assert quantity_bytes("1.5e3k") == 1_500_000
    assert quantity_bytes(536870912) == 536870912


@pytest.mark.parametrize("bad", ["", "Mi", "12XB", "1.2.3Gi", "ten"])
def test_a_malformed_quantity_is_refused_with_its_text(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        quantity_bytes(bad)


@given(
    st.integers(min_value=0, max_value=64 * 2**30),
    st.integers(min_value=1, max_value=256),
)
def test_the_pairs_of_every_partition_fit_the_limit_when_one_worker_owns_them_all(
    limit: int, partitions: int
) -> None:
    entries = dedup_max_entries(limit, partitions)
    assert entries is not None
    assert MIN_ENTRIES <= entries <= DEFAULT_MAX_ENTRIES
    if entries > MIN_ENTRIES:  # above the floor, all partitions' pairs fit what is spare
        assert entries * partitions * BYTES_PER_ENTRY <= (limit - BASE_BYTES)


def test_the_default_512mi_worker_of_a_six_partition_meter_stays_far_below_its_limit() -> None:
    entries = dedup_max_entries("512Mi", 6)
    assert entries is not None
    assert Decimal(entries * 6 * BYTES_PER_ENTRY) < Decimal(512 * 2**20 - BASE_BYTES)
    assert entries < DEFAULT_MAX_ENTRIES  # the worker's own default would need ~1.7 GB here


def test_a_worker_without_a_memory_limit_keeps_its_own_default() -> None:
    assert dedup_max_entries(None, 6) is None
