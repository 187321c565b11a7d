"""The OpenAPI document's Event schema and the API's validation agree on which events are valid.

Hypothesis builds events from parts that are each valid or not (attribute names, extension
values, times across the accepted range and beyond, media types, empty strings); an event must
be valid by the schema (``jsonschema_rs``, with formats checked) exactly when
:func:`kmeter.core.events.decode_event` accepts it. Two rules the schema states only in words
are kept out of the generated events: data nested deeper than 200 levels, and a time whose
offset moves it across 1970-01-01 or 9000-01-01 in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema_rs
import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kmeter.api.openapi import SCHEMAS
from kmeter.core.events import MAX_TIME, MIN_TIME, InvalidEventError, decode_event

VALIDATOR = jsonschema_rs.validator_for(SCHEMAS["Event"], validate_formats=True)
NOW = datetime(2026, 12, 6, tzinfo=UTC)

texts = st.one_of(st.just(""), st.text(min_size=1, max_size=8))
offsets = st.sampled_from(["Z", "z", "+00:00", "+05:30", "-14:00", "+01:00"])


@st.composite
def times(draw: st.DrawFn) -> str:
    year = draw(st.sampled_from([1, 1969, 1970, 2024, 8999, 9000, 9999]))
    moment = draw(st.datetimes(datetime(year, 1, 1), datetime(year, 12, 31, 23, 59, 59)))
    offset = draw(offsets)
    text = moment.isoformat(timespec=draw(st.sampled_from(["seconds", "microseconds"])))
    if offset in ("Z", "z"):
        return text + offset
    sign, hours, minutes = offset[0], int(offset[1:3]), int(offset[4:6])
    delta = timedelta(hours=hours, minutes=minutes) * (1 if sign == "+" else -1)
    utc = moment - delta
    # the schema bounds the year as written; validation bounds the instant in UTC
    assume((MIN_TIME.replace(tzinfo=None) <= moment) == (MIN_TIME.replace(tzinfo=None) <= utc))
    assume((moment < MAX_TIME.replace(tzinfo=None)) == (utc < MAX_TIME.replace(tzinfo=None)))
    return text + offset


attribute_names = st.one_of(
    st.sampled_from(["ext", "region7", "Region", "my-ext", "a_b", "", "é", "data_base64"]),
    st.text(max_size=6),
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.just([1]),
    st.just({"a": 1}),
)
media_types = st.sampled_from(
    [
        "application/json",
        "Application/JSON; charset=utf-8",
        " text/json ",
        "application/cloudevents+json",
        "text/plain",
        "application/jsonx",
        "",
        "application/json\n",
    ]
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "1.0", "0.3"])),
        "id": draw(texts),
        "source": draw(texts),
        "type": draw(texts),
        "subject": draw(texts),
    }
    for name in ("id", "source", "type", "subject"):
        if draw(st.integers(0, 9)) == 0:
            del event[name]
    if draw(st.booleans()):
        event["time"] = draw(st.one_of(st.none(), times(), st.just("2024-02-30T00:00:00Z")))
    if draw(st.booleans()):
        event["datacontenttype"] = draw(st.one_of(st.none(), media_types))
    if draw(st.booleans()):
        event["dataschema"] = draw(st.one_of(st.none(), texts))
    if draw(st.booleans()):
        event["data"] = draw(st.one_of(st.none(), st.just({"tokens": 5}), st.just([1]), texts))
    for name in draw(st.lists(attribute_names, max_size=3)):
        event.setdefault(name, draw(values))
    return event


def accepted(event: dict[str, Any]) -> bool:
    try:
        decode_event(orjson.dumps(event), ingest_time=NOW)
    except InvalidEventError:
        return False
    return True


@settings(max_examples=2000)
@given(events())
def test_an_event_is_valid_by_the_openapi_schema_exactly_when_the_api_accepts_it(
    event: dict[str, Any],
) -> None:
    assert VALIDATOR.is_valid(event) == accepted(event), event


def test_the_schema_and_validation_agree_on_some_events_written_out() -> None:
    base = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "acme"}
    cases: list[tuple[dict[str, Any], bool]] = [
        (base, True),
        ({**base, "region": "eu", "tier": 2, "beta": True}, True),
        ({**base, "Region": "eu"}, False),
        ({**base, "region": {"a": 1}}, False),
        ({**base, "time": "1969-12-31T23:59:59Z"}, False),
        ({**base, "time": "2024-05-01T12:00:00+05:30"}, True),
        ({**base, "datacontenttype": "text/plain"}, False),
        ({**base, "data_base64": "AAAA"}, False),
        ({**base, "dataschema": ""}, False),
    ]
    for event, valid in cases:
        assert VALIDATOR.is_valid(event) is valid, event
        assert accepted(event) is valid, event
