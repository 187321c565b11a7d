"""The worker's record codecs: ingest records to events, dead letters, the dedup changelog."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from kmeter.worker.records import (
    DEDUP_CHUNK_BYTES,
    decode_dedup,
    decode_records,
    dedup_entries,
    encode_dedup,
    transactional_id,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def event(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "specversion": "1.0",
        "id": "e1",
        "source": "s",
        "type": "t",
        "subject": "c1",
        "data": {"n": 1},
    }
    return {**base, **changes}


def record(value: bytes | None, offset: int = 0, key: bytes | None = b"c1") -> Record:
    return Record("kmeter.ns.events", 2, offset, int(NOW.timestamp() * 1000), key, value)


def test_an_event_without_time_gets_the_record_timestamp_so_a_replay_gives_the_same_time() -> None:
    decoded = decode_records("m", [record(json.dumps(event()).encode())])
    assert [e.time for e in decoded.events] == [NOW]
    assert decoded.dead_letters == []


def test_undecodable_records_become_dead_letters_with_reason_origin_and_original_bytes() -> None:
    bad = [b"{not json", json.dumps(event(subject="")).encode(), b"42", None]
    decoded = decode_records("m", [record(value, offset) for offset, value in enumerate(bad)])
    assert decoded.events == []
    assert [letter.value for letter in decoded.dead_letters] == [b"{not json", bad[1], b"42", b""]
    reasons = [letter.reason for letter in decoded.dead_letters]
    assert reasons[0].startswith("body: is not valid JSON")
    assert reasons[1].startswith("subject:")
    assert reasons[2] == "event: must be a JSON object, got 42"
    assert "tombstone" in reasons[3]
    headers = dict(decoded.dead_letters[1].headers)
    assert headers["kmeter-meter"] == b"m"
    assert headers["kmeter-topic"] == b"kmeter.ns.events"
    assert headers["kmeter-partition"] == b"2"
    assert headers["kmeter-offset"] == b"1"
    assert decoded.dead_letters[1].key == b"c1"


def test_an_array_record_gives_its_valid_events_and_a_dead_letter_per_invalid_element() -> None:
    value = json.dumps([event(id="a"), event(id="b", type=""), event(id="c")]).encode()
    decoded = decode_records("m", [record(b"  " + value)])
    assert [e.id for e in decoded.events] == ["a", "c"]
    assert [origin.element for origin in decoded.origins] == [0, 2]
    (letter,) = decoded.dead_letters
    assert dict(letter.headers)["kmeter-index"] == b"1"
    assert letter.value == b"  " + value


def test_transactional_ids_are_stable_and_distinct_per_meter_and_partition() -> None:
    assert transactional_id("ns", "tokens", 3) == "kmeter.ns.meter.tokens.3"
    ids = {transactional_id("ns", meter, p) for meter in ("x", "x.1", "x.12") for p in range(13)}
    assert len(ids) == 3 * 13


pairs = st.lists(st.tuples(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40)))


@given(pairs)
def test_the_dedup_changelog_gives_back_every_pair_in_order(batch: list[tuple[str, str]]) -> None:
    values = encode_dedup(NOW, batch)
    assert [(s, i) for s, i, _ in dedup_entries(values)] == batch
    assert all(at == NOW for _, _, at in dedup_entries(values))


def test_large_dedup_batches_are_split_into_records_below_the_chunk_size() -> None:
    batch = [(f"source-{n}", f"{n:032d}") for n in range(30_000)]
    values = encode_dedup(NOW + timedelta(seconds=1), batch)
    assert len(values) > 1
    assert all(len(value) < DEDUP_CHUNK_BYTES * 1.5 for value in values)
    assert [pair for value in values for pair in decode_dedup(value)[1]] == batch
