"""``kmeter events send``'s input: lines validated like the API does, and batched losslessly."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
from hypothesis import given
from hypothesis import strategies as st

from kmeter.client.event_lines import (
    Line,
    Rejected,
    batch_body,
    batches,
    body_size,
    check_size,
    parse_lines,
)
from kmeter.core.events import InvalidEventError, decode_event

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(number: int, **changes: object) -> bytes:
    document = {
        "specversion": "1.0",
        "id": f"e{number}",
        "source": "test",
        "type": "llm.completion",
        "subject": f"customer-{number % 3}",
        "time": "2026-01-01T00:00:00Z",
        "data": {"tokens": number},
        **changes,
    }
    return orjson.dumps(document)


lines_strategy = st.lists(
    st.builds(Line, st.integers(1, 10**6), st.binary(min_size=0, max_size=300), st.just(0)),
    max_size=60,
)


@given(lines_strategy, st.integers(1, 20), st.integers(2, 2000))
def test_batching_never_loses_reorders_or_overfills(
    lines: list[Line], max_events: int, max_bytes: int
) -> None:
    found = list(batches(lines, max_events=max_events, max_bytes=max_bytes))
    assert [line for batch in found for line in batch] == lines
    for batch in found:
        assert 1 <= len(batch) <= max_events
        assert len(batch_body(batch)) == body_size(len(batch), sum(len(x.raw) for x in batch))
        if len(batch) > 1:
            assert len(batch_body(batch)) <= max_bytes


@given(lines_strategy, st.integers(1, 20), st.integers(2, 2000))
def test_a_batch_is_cut_only_when_the_next_line_would_not_fit(
    lines: list[Line], max_events: int, max_bytes: int
) -> None:
    found = list(batches(lines, max_events=max_events, max_bytes=max_bytes))
    for batch, following in itertools.pairwise(found):
        grown = [*batch, following[0]]
        assert len(grown) > max_events or len(batch_body(grown)) > max_bytes


def test_a_batch_body_is_the_json_array_of_the_lines_as_written() -> None:
    lines = [Line(1, b'{"a":0.10000000000000000001}', 0), Line(2, b'{"b":1}', 0)]
    assert batch_body(lines) == b'[{"a":0.10000000000000000001},{"b":1}]'


def test_lines_are_numbered_from_one_and_blank_lines_are_skipped() -> None:
    found = list(
        parse_lines([event(1) + b"\n", b"\n", b"  \r\n", event(2) + b"\r\n"], ingest_time=NOW)
    )
    assert [(item.number, type(item)) for item in found] == [(1, Line), (4, Line)]
    assert isinstance(found[1], Line)
    assert found[1].raw == event(2)
    assert found[-1].end == len(event(1)) + 1 + 1 + 4 + len(event(2)) + 2


def test_invalid_lines_are_rejected_with_the_api_codecs_reason() -> None:
    found = [
        item
        for item in parse_lines(
            [
                event(1, subject="") + b"\n",
                b"not json\n",
                b"[" + event(2) + b"]\n",
                event(3, time="yesterday", id=""),
                b'{"specversion": "1.0",\n',
            ],
            ingest_time=NOW,
        )
        if isinstance(item, Rejected)
    ]
    assert found == [
        Rejected(1, 'subject: must be a non-empty string, got ""', found[0].end),
        Rejected(
            2, "not a JSON object: expected one CloudEvents JSON object per line", found[1].end
        ),
        Rejected(3, "a JSON array: put one event per line", found[2].end),
        Rejected(4, found[3].reason, found[3].end),
        Rejected(5, found[4].reason, found[4].end),
    ]
    assert found[3].reason.startswith("id: ")
    assert 'time: "yesterday" is not an RFC 3339 timestamp' in found[3].reason
    assert found[4].reason.startswith("is not valid JSON")


@given(
    st.lists(
        st.one_of(
            st.integers(0, 50).map(event),
            st.integers(0, 50).map(lambda n: event(n, subject=n)),
            st.integers(0, 50).map(lambda n: event(n, data=[n])),
            st.binary(max_size=30).filter(lambda raw: b"\n" not in raw),
        ),
        max_size=30,
    )
)
def test_a_line_is_sent_exactly_when_the_api_codec_accepts_it(raw_lines: list[bytes]) -> None:
    found = {
        item.number: item for item in parse_lines([r + b"\n" for r in raw_lines], ingest_time=NOW)
    }
    for number, raw in enumerate(raw_lines, start=1):
        stripped = raw.strip()
        if not stripped:
            assert number not in found
            continue
        try:
            decode_event(stripped, ingest_time=NOW)
            accepted = stripped[:1] == b"{"
        except InvalidEventError:
            accepted = False
        assert isinstance(found[number], Line) is accepted, (raw, found[number])


def test_a_line_larger_than_any_request_is_rejected_before_sending() -> None:
    line = Line(7, b"x" * 100, 100)
    assert check_size(line, 102) is line
    assert check_size(line, 101) == Rejected(
        7, "the event is 100 bytes, more than the 101 bytes a request may carry", 100
    )
