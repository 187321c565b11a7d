"""Usage from Server-Sent Events streams, however the stream is cut into pieces."""

from __future__ import annotations

import gzip

from hypothesis import given
from hypothesis import strategies as st

from kmeter.core.jsonpath import compile_path
from kmeter_sidecar.sse import SSEValueReader
from kmeter_sidecar.usage import value_reader

PATHS = [("usage", compile_path("$.usage")), ("tokens", compile_path("$.usage.total_tokens"))]

OPENAI_STREAM = (
    b'data: {"id":"1","choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n'
    b'data: {"id":"1","choices":[{"delta":{"content":" there"}}],"usage":null}\n\n'
    b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,'
    b'"total_tokens":21}}\n\n'
    b"data: [DONE]\n\n"
)


def read(pieces: list[bytes], max_event_bytes: int = 1 << 20) -> dict[str, object]:
    reader = SSEValueReader(PATHS, max_event_bytes)
    for piece in pieces:
        reader.feed(piece)
    return reader.finish()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_the_usage_of_the_final_openai_chunk_is_read() -> None:
    assert read([OPENAI_STREAM]) == {
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        "tokens": 21,
    }


@given(
    st.lists(st.integers(0, len(OPENAI_STREAM)), max_size=20), st.sampled_from(["\n", "\r\n", "\r"])
)
def test_any_split_of_the_stream_and_any_line_ending_give_the_same_usage(
    cuts: list[int], ending: str
) -> None:
    stream = OPENAI_STREAM.replace(b"\n", ending.encode())
    assert read(split(stream, cuts))["tokens"] == 21


def test_a_later_usage_replaces_an_earlier_one_and_null_keeps_the_last() -> None:
    stream = (
        b'data: {"usage":{"total_tokens":5}}\n\n'
        b'data: {"usage":{"total_tokens":8}}\n\n'
        b'data: {"usage":null}\n\n'
    )
    assert read([stream])["tokens"] == 8


def test_multi_line_data_events_and_other_fields_are_understood() -> None:
    stream = (
        b"event: completion\nid: 7\nretry: 100\n: a comment\n"
        b'data: {"usage":\ndata: {"total_tokens": 3}}\n\n'
    )
    assert read([stream])["tokens"] == 3


def test_a_stream_cut_before_its_final_blank_line_still_counts_what_arrived() -> None:
    assert read([b'data: {"usage":{"total_tokens":4}}\n'])["tokens"] == 4
    assert read([b'data: {"usage":{"total_tokens":4}}'])["tokens"] == 4


def test_an_oversized_event_is_skipped_and_the_next_one_is_still_read() -> None:
    huge = b'data: {"usage":{"total_tokens":1},"pad":"' + b"x" * 5000 + b'"}\n\n'
    small = b'data: {"usage":{"total_tokens":2}}\n\n'
    assert read(split(huge + small, [100, 3000]), max_event_bytes=1000)["tokens"] == 2
    assert read([huge], max_event_bytes=1000) == {}


def test_a_reader_that_skipped_something_too_large_says_so_however_the_body_is_encoded() -> None:
    huge = b'data: {"usage":{"total_tokens":1},"pad":"' + b"x" * 5000 + b'"}\n\n'
    small = b'data: {"usage":{"total_tokens":2}}\n\n'
    big_json = b'{"usage":{"total_tokens":3},"pad":"' + b"x" * 5000 + b'"}'
    cases = [  # (content type, encoding, body, too large, tokens read)
        (b"text/event-stream", None, small, False, 2),
        (b"text/event-stream", None, huge + small, True, 2),  # the next event is still read
        (b"text/event-stream", b"gzip", huge + small, True, 2),
        (b"application/json", None, big_json, True, None),
        (b"application/json", b"gzip", big_json, True, None),
        (b"application/json", b"gzip", b'{"usage":{"total_tokens":3}}', False, 3),
    ]
    for content_type, encoding, body, too_large, tokens in cases:
        reader = value_reader(content_type, encoding, PATHS, 1000)
        assert reader is not None
        reader.feed(gzip.compress(body) if encoding else body)
        assert reader.finish().get("tokens") == tokens, (content_type, encoding)
        assert reader.too_large is too_large, (content_type, encoding)


def test_non_json_data_and_done_markers_are_ignored() -> None:
    assert read([b"data: hello\n\ndata: [DONE]\n\ndata: {broken\n\n"]) == {}
