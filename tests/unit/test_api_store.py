"""The materialized store: latest per key, partial totals of one window merged by queries."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from kmeter.api.store import MeterStore
from kmeter.core.aggregation import Aggregation
from kmeter.core.fold import WindowTotal
from kmeter.core.rollup import Query, roll_up
from kmeter.core.windows import WindowSize

AT = datetime(2024, 5, 1, tzinfo=UTC)


def total(value: str, subject: str = "c1") -> WindowTotal:
    return WindowTotal(
        subject, {"model": "m"}, AT, WindowSize.MINUTE, Aggregation.SUM, Decimal(value)
    )


def query(store: MeterStore) -> list[Decimal | None]:
    rows = roll_up(
        store.windows(),
        aggregation=Aggregation.SUM,
        storage_size=WindowSize.MINUTE,
        meter_groups=store.group_names,
        query=Query(),
    )
    return [row.value for row in rows]


def test_latest_per_key_and_partials_of_two_partitions_merge() -> None:
    store = MeterStore(Aggregation.SUM, WindowSize.MINUTE, ("model",))
    store.put(b"0:k", total("1"))
    store.put(b"0:k", total("5"))  # a later total of the same key replaces it
    store.put(b"1:k", total("2"))  # the same window's partial total from another partition
    assert query(store) == [Decimal(7)]
    store.delete(b"1:k")
    assert query(store) == [Decimal(5)]
    assert store.subjects() == ["c1"]
    store.delete(b"0:k")
    assert store.subjects() == []
    assert len(store) == 0


def test_foreign_totals_are_not_served_and_regroup_rearranges() -> None:
    store = MeterStore(Aggregation.COUNT, WindowSize.MINUTE, ("model",))
    store.put(b"0:k", total("1"))
    assert store.foreign == 1
    assert len(store) == 0
    summed = MeterStore(Aggregation.SUM, WindowSize.MINUTE, ())
    summed.put(b"0:k", total("3"))
    summed.regroup(("model", "region"))
    assert list(summed.windows()) == [(("c1", ("m", None), int(AT.timestamp())), Decimal(3))]
