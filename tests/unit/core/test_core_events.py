"""The event contract: what is accepted, what is refused and why, and the codec round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.core.events import (
    InvalidEventError,
    UsageEvent,
    decode_event,
    decode_events,
    encode_event,
    event_from_dict,
    event_to_dict,
    events_from_list,
    format_timestamp,
    parse_timestamp,
)

INGEST = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def valid(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "gateway",
        "type": "llm.completion",
        "subject": "customer-1",
        "time": "2024-05-01T11:59:00Z",
        "data": {"model": "gpt-4o", "usage": {"total_tokens": 1234}},
    }
    for name, value in changes.items():
        if value is ...:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def problems_of(obj: object) -> list[str]:
    with pytest.raises(InvalidEventError) as raised:
        event_from_dict(obj, ingest_time=INGEST)
    return [str(problem) for problem in raised.value.problems]


def test_a_valid_event_decodes_with_its_time_in_utc() -> None:
    event = decode_event(orjson.dumps(valid()), ingest_time=INGEST)
    assert event == UsageEvent(
        id="evt-1",
        source="gateway",
        type="llm.completion",
        subject="customer-1",
        time=datetime(2024, 5, 1, 11, 59, tzinfo=UTC),
        data={"model": "gpt-4o", "usage": {"total_tokens": 1234}},
    )
    assert event.time.tzinfo is UTC


def test_an_event_without_time_gets_the_ingest_time() -> None:
    assert decode_event(orjson.dumps(valid(time=...)), ingest_time=INGEST).time == INGEST
    assert decode_event(orjson.dumps(valid(time=None)), ingest_time=INGEST).time == INGEST


def test_the_ingest_time_is_converted_to_utc() -> None:
    berlin = timezone(timedelta(hours=2))
    event = event_from_dict(valid(time=...), ingest_time=datetime(2024, 5, 1, 14, tzinfo=berlin))
    assert event.time == INGEST
    assert event.time.tzinfo is UTC


def test_a_naive_ingest_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        event_from_dict(valid(), ingest_time=datetime(2024, 5, 1))


def test_an_offset_time_is_converted_to_utc() -> None:
    event = event_from_dict(valid(time="2024-05-01T17:29:00+05:30"), ingest_time=INGEST)
    assert event.time == datetime(2024, 5, 1, 11, 59, tzinfo=UTC)
    assert event.time.tzinfo is UTC


def test_a_missing_subject_is_reported_as_a_non_empty_string_problem() -> None:
    assert problems_of(valid(subject=...)) == [
        "subject: must be a non-empty string, but it is missing"
    ]
    assert problems_of(valid(subject="")) == ['subject: must be a non-empty string, got ""']
    assert problems_of(valid(subject=42)) == ["subject: must be a non-empty string, got 42"]


def test_every_problem_of_an_event_is_reported_not_just_the_first() -> None:
    problems = problems_of(valid(specversion="0.3", id=..., source=[], time="yesterday", data=3))
    assert problems == [
        'specversion: must be "1.0", got "0.3"',
        "id: must be a non-empty string, but it is missing",
        "source: must be a non-empty string, got []",
        'time: "yesterday" is not an RFC 3339 timestamp',
        "data: must be a JSON object, got 3",
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2024-05-01T12:00:00", "is not an RFC 3339 timestamp"),  # no offset
        ("2024-05-01", "is not an RFC 3339 timestamp"),
        ("2024-05-01T12:00Z", "is not an RFC 3339 timestamp"),  # no seconds
        ("20240501T120000Z", "is not an RFC 3339 timestamp"),
        ("2024-13-01T00:00:00Z", "is not a valid RFC 3339 timestamp: month must be in 1..12"),
        ("2024-12-31T23:59:60Z", "is not a valid RFC 3339 timestamp: second must be in 0..59"),
        ("1969-12-31T23:59:59Z", "is outside the supported range"),
    ],
)
def test_a_time_that_is_not_a_supported_rfc3339_timestamp_is_refused(
    text: str, reason: str
) -> None:
    (problem,) = problems_of(valid(time=text))
    assert problem.startswith("time: ")
    assert reason in problem


def test_lower_case_t_and_z_and_a_space_separator_are_accepted() -> None:
    expected = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_timestamp("2024-05-01t12:00:00z") == expected
    assert parse_timestamp("2024-05-01 12:00:00Z") == expected


def test_fractional_seconds_beyond_microseconds_are_truncated() -> None:
    parsed = parse_timestamp("2024-05-01T12:00:00.123456789Z")
    assert parsed == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_timestamps_are_written_in_utc_with_z() -> None:
    assert format_timestamp(datetime(2024, 5, 1, 12, tzinfo=UTC)) == "2024-05-01T12:00:00Z"
    kolkata = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2024, 5, 1, 17, 30, 0, 5, tzinfo=kolkata)
    assert format_timestamp(moment) == "2024-05-01T12:00:00.000005Z"


def test_specversion_must_be_1_0() -> None:
    assert problems_of(valid(specversion=...)) == ['specversion: must be "1.0", but it is missing']
    assert problems_of(valid(specversion=1.0)) == ['specversion: must be "1.0", got 1.0']


def test_data_must_be_a_json_object_but_may_be_absent() -> None:
    assert problems_of(valid(data=[1, 2])) == ["data: must be a JSON object, got [1,2]"]
    assert event_from_dict(valid(data=...), ingest_time=INGEST).data is None
    assert event_from_dict(valid(data=None), ingest_time=INGEST).data is None


def test_binary_data_is_refused_with_a_hint() -> None:
    assert problems_of(valid(data=..., data_base64="AAEC")) == [
        "data_base64: binary data is not supported; send a JSON object in data"
    ]


def test_a_non_json_datacontenttype_is_refused() -> None:
    assert problems_of(valid(datacontenttype="text/plain")) == [
        'datacontenttype: "text/plain" is not a JSON media type; kmeter reads data as JSON'
    ]
    for ok in ("application/json", "application/json; charset=utf-8", "application/cloud+json"):
        assert event_from_dict(valid(datacontenttype=ok), ingest_time=INGEST).datacontenttype == ok


def test_extensions_are_kept_and_written_back() -> None:
    event = event_from_dict(
        valid(traceparent="00-abc-01", region="eu", weight=3), ingest_time=INGEST
    )
    assert event.extensions == {"traceparent": "00-abc-01", "region": "eu", "weight": 3}
    again = decode_event(encode_event(event), ingest_time=INGEST)
    assert again == event


def test_invalid_extension_names_and_values_are_refused() -> None:
    assert problems_of(valid(customerId="c1")) == [
        "customerId: is not a valid attribute name: CloudEvents extension names are lower-case "
        "ASCII letters and digits"
    ]
    assert problems_of(valid(labels={"a": 1})) == [
        'labels: extension attributes must be a string, number or boolean, got {"a":1}'
    ]


def test_an_event_must_be_a_json_object() -> None:
    assert problems_of([1]) == ["event: must be a JSON object, got [1]"]


def test_a_batch_reports_problems_per_index_and_keeps_the_valid_events() -> None:
    body = orjson.dumps([valid(id="a"), valid(subject=...), valid(id="c"), "nope"])
    batch = decode_events(body, ingest_time=INGEST)
    assert not batch.ok
    assert [event.id for event in batch.events] == ["a", "c"]
    assert batch.indices == (0, 2)
    assert batch.messages() == [
        "[1] subject: must be a non-empty string, but it is missing",
        '[3] event: must be a JSON object, got "nope"',
    ]


def test_a_single_object_body_is_a_batch_of_one() -> None:
    batch = decode_events(orjson.dumps(valid(subject=...)), ingest_time=INGEST)
    assert not batch.was_array
    assert batch.messages() == ["subject: must be a non-empty string, but it is missing"]


def test_an_empty_array_is_an_empty_valid_batch() -> None:
    batch = decode_events(b"[]", ingest_time=INGEST)
    assert batch.ok
    assert batch.events == ()


def test_a_body_that_is_not_json_is_refused_as_a_whole() -> None:
    with pytest.raises(InvalidEventError) as raised:
        decode_events(b'{"specversion": ', ingest_time=INGEST)
    (problem,) = raised.value.problems
    assert problem.field == "body"
    assert problem.reason.startswith("is not valid JSON")
    with pytest.raises(InvalidEventError, match="must be an event object or an array"):
        decode_events(b"42", ingest_time=INGEST)


def test_deeply_nested_data_from_another_decoder_is_refused() -> None:
    data: dict[str, Any] = {}
    inner = data
    for _ in range(250):
        inner["a"] = {}
        inner = inner["a"]
    assert problems_of(valid(data=data)) == ["data: is nested deeper than 200 levels"]


def test_numbers_in_data_are_exact_when_decoded_from_bytes() -> None:
    raw = orjson.dumps(valid(data=None))[:-1] + b',"data":{"cost":0.10000000000000000001}}'
    event = decode_event(raw, ingest_time=INGEST)
    assert event.data == {"cost": Decimal("0.10000000000000000001")}
    assert b'"cost":0.10000000000000000001' in encode_event(event)


# --- properties -------------------------------------------------------------------------------

names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
)
data_objects = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=4), children, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(8999, 12, 31),
    timezones=st.just(UTC),
)
events = st.builds(
    UsageEvent,
    id=names,
    source=names,
    type=names,
    subject=names,
    time=times,
    data=st.none() | data_objects,
    datacontenttype=st.none() | st.just("application/json"),
    dataschema=st.none() | names,
    extensions=st.none()
    | st.dictionaries(
        st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True).filter(
            lambda name: (
                name
                not in {
                    "id",
                    "source",
                    "type",
                    "subject",
                    "time",
                    "data",
                    "specversion",
                    "dataschema",
                }
            )
        ),
        st.text(max_size=5) | st.integers(-5, 5) | st.booleans(),
        min_size=1,
        max_size=3,
    ),
)


@given(events)
def test_encoding_then_decoding_gives_back_an_equal_event(event: UsageEvent) -> None:
    decoded = decode_event(encode_event(event), ingest_time=INGEST)
    assert decoded == event


@given(events)
def test_decoding_from_bytes_and_from_a_decoded_dict_agree(event: UsageEvent) -> None:
    raw = encode_event(event)
    assert decode_event(raw, ingest_time=INGEST) == event_from_dict(
        orjson.loads(raw), ingest_time=INGEST
    )


REQUIRED = ("id", "source", "type", "subject")
mutations = st.fixed_dictionaries(
    {},
    optional={
        "specversion": st.sampled_from([..., None, "1.0", "0.3", 1]),
        "id": st.sampled_from([..., None, "", "x", 7]),
        "source": st.sampled_from([..., None, "", "s", ["s"]]),
        "type": st.sampled_from([..., None, "", "t"]),
        "subject": st.sampled_from([..., None, "", "c", False]),
        "time": st.sampled_from(
            [..., None, "2024-01-01T00:00:00Z", "2024-01-01", "2024-02-30T00:00:00Z", 5]
        ),
        "data": st.sampled_from([..., None, {}, {"a": 1}, [], "x"]),
        "datacontenttype": st.sampled_from([..., None, "application/json", "text/csv", 3]),
        "dataschema": st.sampled_from([..., None, "", "https://example.com/s"]),
        "data_base64": st.sampled_from([..., None, "AA=="]),
        "Bad": st.sampled_from([..., None, 1]),
        "ext": st.sampled_from([..., "v", [1]]),
    },
)


def oracle_problem_fields(event: dict[str, Any]) -> list[str]:
    """Which fields a plain reading of the contract says are wrong, in report order."""
    fields = []
    if event.get("specversion") != "1.0":
        fields.append("specversion")
    fields += [
        name for name in REQUIRED if not (isinstance(event.get(name), str) and event.get(name))
    ]
    time = event.get("time")
    if time is not None and time not in ("2024-01-01T00:00:00Z", "2024-05-01T11:59:00Z"):
        fields.append("time")
    if event.get("data") is not None and not isinstance(event["data"], dict):
        fields.append("data")
    if event.get("datacontenttype") not in (None, "application/json"):
        fields.append("datacontenttype")
    if event.get("dataschema") == "":
        fields.append("dataschema")
    if "Bad" in event:
        fields.append("Bad")
    if isinstance(event.get("ext"), list):
        fields.append("ext")
    if event.get("data_base64") is not None:
        fields.append("data_base64")
    return fields


@settings(max_examples=300)
@given(mutations)
def test_exactly_the_invalid_fields_are_reported(changes: dict[str, Any]) -> None:
    event = valid(**changes)
    expected = oracle_problem_fields(event)
    batch = events_from_list([event], ingest_time=INGEST)
    reported = [problem.field for problem in batch.problems.get(0, ())]
    assert sorted(reported) == sorted(expected)  # extensions are reported in the event's order
    assert (len(batch.events) == 1) == (not expected)
    # Decoding from bytes takes the fast path for plain events; it must agree.
    from_bytes = decode_events(orjson.dumps(event), ingest_time=INGEST)
    assert [problem.field for problem in from_bytes.problems.get(0, ())] == reported
    assert from_bytes.events == batch.events


def test_event_to_dict_writes_the_time_even_when_the_event_had_none() -> None:
    event = event_from_dict(valid(time=...), ingest_time=INGEST)
    assert event_to_dict(event)["time"] == "2024-05-01T12:00:00Z"


# --- the fast path agrees with the thorough one ---------------------------------------------

_json_numbers = st.sampled_from(
    [
        "0",
        "-0",
        "7",
        "1.5",
        "0.1",
        "1e3",
        "1E+2",
        "-2.5e-3",
        "0.10000000000000000001",
        "123456789012345678",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1" + "0" * 30,
        "1e400",
        "NaN",
    ]
)
_scalars = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    _json_numbers,
    st.text(max_size=8).map(lambda text: orjson.dumps(text).decode()),
    st.sampled_from(['"\\ud800"', '"a:1234567890123456"', '""', '"1.0"']),
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.sampled_from(["a", "b", "usage", "n"]), children, max_size=3).map(
            lambda members: (
                "{" + ",".join(f"{orjson.dumps(k).decode()}:{v}" for k, v in members.items()) + "}"
            )
        ),
    ),
    max_leaves=12,
)
_deep = st.integers(min_value=5, max_value=205).map(lambda n: '{"a":' * n + "1" + "}" * n)
_attribute_values = st.one_of(
    _json_values,
    _deep,
    st.sampled_from(
        [
            '"1.0"',
            '"evt"',
            '"2024-05-01T11:59:00Z"',
            '"2024-05-01T11:59:00.123456789Z"',
            '"2024-05-01t11:59:00z"',
            '"2024-05-01 13:59:00+02:00"',
            '"2024-05-01T11:59:00"',
            '"2024-02-30T00:00:00Z"',
            '"2024-05-01T11:59:60Z"',
            '"1969-12-31T23:59:59Z"',
            '"8999-12-31T23:59:59.999999Z"',
            '"9000-01-01T00:30:00+01:00"',
            '"20240501T115900Z"',
            '"application/json"',
            '"text/json"',
            '"application/cloudevents+json"',
        ]
    ),
)
_names = st.sampled_from(
    [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "data",
        "datacontenttype",
        "dataschema",
        "data_base64",
        "ext1",
        "Bad",
    ]
)


@st.composite
def raw_events(draw: st.DrawFn) -> bytes:
    """Event bytes, mostly plain and valid, with any attribute replaced, dropped or added, odd
    numbers and nesting in data, duplicate names and broken syntax."""
    members = {
        "specversion": '"1.0"',
        "id": '"evt-1"',
        "source": '"gateway"',
        "type": '"llm.completion"',
        "subject": '"customer-1"',
        "time": '"2024-05-01T11:59:00.5Z"',
        "datacontenttype": '"application/json"',
        "data": '{"model":"gpt-4o","usage":{"total_tokens":1234}}',
    }
    pairs = list(members.items())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        name = draw(_names)
        action = draw(st.sampled_from(["set", "drop", "append"]))
        if action == "drop":
            pairs = [(key, value) for key, value in pairs if key != name]
        elif action == "set":
            value = draw(_attribute_values)
            pairs = [(key, value if key == name else old) for key, old in pairs]
        else:
            pairs.append((name, draw(_attribute_values)))
    text = "{" + ",".join(f'"{key}":{value}' for key, value in pairs) + "}"
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        cut = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:cut] + draw(st.sampled_from(["", ",", "}", " ", "x"])) + text[cut + 1 :]
    return text.encode("utf-8", "surrogatepass")


def _thorough_decode(raw: bytes, ingest_time: datetime) -> UsageEvent | list[str]:
    """The oracle: the exact decoder, then the thorough validator (never the fast paths)."""
    from kmeter.core import events, exactjson  # noqa: PLC0415

    try:
        document = exactjson.loads(raw)
    except exactjson.JSONDecodeError as error:
        return [f"body: is not valid JSON: {error}"]
    result = events._thorough(document, ingest_time.astimezone(UTC), False)
    return [str(problem) for problem in result] if isinstance(result, list) else result


def _typed(value: object) -> object:
    """A value with the type of every number made visible (1 == 1.0 == Decimal(1) otherwise)."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_typed(item) for item in value]
    return (type(value).__name__, repr(value))


@settings(max_examples=2000)
@given(raw_events(), st.sampled_from([INGEST, INGEST.astimezone(timezone(timedelta(hours=2)))]))
def test_the_fast_path_accepts_and_refuses_exactly_as_the_thorough_path(
    raw: bytes, ingest_time: datetime
) -> None:
    expected = _thorough_decode(raw, ingest_time)
    try:
        got: UsageEvent | list[str] = decode_event(raw, ingest_time=ingest_time)
    except InvalidEventError as error:
        got = [str(problem) for problem in error.problems]
    assert _typed(got) == _typed(expected)
    if isinstance(got, UsageEvent):
        assert got.time.tzinfo is UTC
    if isinstance(expected, UsageEvent):  # the batch path agrees too
        assert _typed(decode_events(raw, ingest_time=ingest_time).events) == _typed((expected,))


def test_the_fast_path_sends_every_inexact_or_deep_document_to_the_exact_decoder() -> None:
    base = b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"c","data":'
    long_fraction = decode_event(base + b'{"n":0.10000000000000000001}}', ingest_time=INGEST)
    assert long_fraction.data == {"n": Decimal("0.10000000000000000001")}
    big = decode_event(base + b'{"n":18446744073709551616}}', ingest_time=INGEST)
    assert big.data == {"n": Decimal(18446744073709551616)}
    assert type(big.data["n"]) is Decimal
    short = decode_event(base + b'{"n":0.1}}', ingest_time=INGEST)
    assert short.data is not None
    assert type(short.data["n"]) is float
    with pytest.raises(InvalidEventError, match="deeper"):
        decode_event(base + b'{"a":' * 200 + b"1" + b"}" * 201, ingest_time=INGEST)


def test_a_datacontenttype_that_is_an_object_is_refused_with_its_reason_not_a_crash() -> None:
    raw = orjson.dumps(valid(datacontenttype={"a": 1}))
    with pytest.raises(InvalidEventError) as raised:
        decode_event(raw, ingest_time=INGEST)
    assert str(raised.value) == (
        'datacontenttype: {"a":1} is not a JSON media type; kmeter reads data as JSON'
    )
