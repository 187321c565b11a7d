"""``kmeter dev`` folds its log with the worker's core: what the usage API then serves is the
plain sum of the distinct events, however the log was cut into batches, and a restart — the log
folded again from its start — gives the same totals and writes no dead letter twice."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.resource_cases import METER

from kmeter.api.meters import meter_info
from kmeter.core.rollup import Query, roll_up
from kmeter.dev.log import LogRecord
from kmeter.dev.pipeline import Pipeline

NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(minutes=30)

event = st.fixed_dictionaries(
    {
        "id": st.sampled_from([f"e{n}" for n in range(12)]),
        "subject": st.sampled_from(["acme", "globex", "initech"]),
        "model": st.sampled_from(["gpt-4o", "gpt-4o-mini"]),
        "tokens": st.integers(min_value=0, max_value=10**6) | st.just("lots"),
        "minute": st.integers(min_value=0, max_value=20),
    }
)
line = event | st.just(None)  # None: a record that is not an event at all


def encode(item: dict[str, object] | None) -> bytes:
    if item is None:
        return b"{not json"
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": item["id"],
            "source": "test",
            "type": "llm.completion",
            "subject": item["subject"],
            "time": (START + timedelta(minutes=int(item["minute"]))).isoformat(),  # type: ignore[call-overload]
            "data": {"model": item["model"], "usage": {"total_tokens": item["tokens"]}},
        }
    )


def oracle(items: list[dict[str, object] | None]) -> dict[tuple[str, str], Decimal]:
    """Tokens per (subject, model): each id counted once, the first time it came with a
    number (an event refused for its value is not remembered as seen)."""
    seen: set[object] = set()
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for item in items:
        if item is None or not isinstance(item["tokens"], int) or item["id"] in seen:
            continue
        seen.add(item["id"])
        totals[(str(item["subject"]), str(item["model"]))] += item["tokens"]
    return dict(totals)


def served(pipeline: Pipeline) -> dict[tuple[str, str], Decimal]:
    view = pipeline.get("default", "llm-tokens")
    assert view is not None
    rows = roll_up(
        view.store.windows(),
        aggregation=view.info.spec.aggregation,
        storage_size=view.info.spec.window_size,
        meter_groups=view.info.spec.group_names,
        query=Query(group_by=("subject", "model")),
    )
    return {
        (str(row.subject), str(row.group_by["model"])): Decimal(row.value)
        for row in rows
        if row.value is not None
    }


def make_pipeline(letters: list[bytes]) -> Pipeline:
    return Pipeline(
        [meter_info(METER)],
        dead_letters=lambda _, records: letters.extend(value for _, value in records),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(line, max_size=40), st.lists(st.integers(min_value=1, max_value=8), min_size=1))
def test_the_totals_are_the_distinct_events_however_batched_and_again_after_a_restart(
    items: list[dict[str, object] | None], cuts: list[int]
) -> None:
    stamp = int(NOW.timestamp() * 1000)
    records = [LogRecord(offset, stamp, b"k", encode(item)) for offset, item in enumerate(items)]
    letters: list[bytes] = []
    live = make_pipeline(letters)
    position, sizes = 0, iter(cuts * (len(records) + 1))
    while position < len(records):
        size = next(sizes)
        live.fold("default", records[position : position + size])
        position += size
    expected = oracle(items)
    assert served(live) == expected

    malformed = sum(1 for item in items if item is None)
    refused = len(letters) - malformed
    assert refused == sum(
        1 for item in items if item is not None and not isinstance(item["tokens"], int)
    ) - _duplicates_refused_anyway(items)
    assert all(orjson.loads(letter)["meter"] == "llm-tokens" for letter in letters)

    again: list[bytes] = []
    restarted = make_pipeline(again)
    restarted.restore_marks(
        "default", [LogRecord(n, stamp, None, value) for n, value in enumerate(letters)]
    )
    restarted.replay("default", records)
    assert served(restarted) == expected
    assert again == []


def _duplicates_refused_anyway(items: list[dict[str, object] | None]) -> int:
    """Bad-valued events whose id was already counted are skipped as duplicates before their
    value is read: no dead letter for them."""
    seen: set[object] = set()
    skipped = 0
    for item in items:
        if item is None:
            continue
        if item["id"] in seen:
            skipped += not isinstance(item["tokens"], int)
            continue
        if isinstance(item["tokens"], int):
            seen.add(item["id"])
    return skipped


def test_a_dead_letter_keeps_the_record_and_the_workers_reason() -> None:
    letters: list[bytes] = []
    pipeline = make_pipeline(letters)
    bad = {"id": "x", "subject": "acme", "model": "gpt-4o", "tokens": "lots", "minute": 1}
    value = encode(bad)
    pipeline.fold("default", [LogRecord(7, 0, b"acme", value)])
    (letter,) = [orjson.loads(raw) for raw in letters]
    assert letter == {
        "meter": "llm-tokens",
        "reason": '$.usage.total_tokens: expected a number or numeric string, got "lots"',
        "offset": 7,
        "index": None,
        "key": "acme",
        "value": value.decode(),
    }
