"""The event contract: CloudEvents 1.0 in JSON, one codec for everyone.

Producers, the sidecar, the usage API, the worker and ``kmeter dev`` all read and write usage
events through this module, so they all accept and refuse the same things for the same reasons.

An event is a CloudEvents 1.0 JSON object (structured mode)::

    {"specversion": "1.0", "id": "5c10fade", "source": "gateway", "type": "llm.completion",
     "subject": "customer-1", "time": "2024-05-01T12:34:56Z",
     "data": {"model": "gpt-4o", "usage": {"total_tokens": 1234}}}

==================  ========  ===============================================================
attribute           required  rule
==================  ========  ===============================================================
``specversion``     yes       exactly ``"1.0"``
``id``              yes       non-empty string; (``source``, ``id``) identifies the event and
                              is what deduplication keys on
``source``          yes       non-empty string (CloudEvents says URI-reference; not checked)
``type``            yes       non-empty string; a Meter counts one type
``subject``         yes       non-empty string: the customer (optional in CloudEvents,
                              required here, as in OpenMeter)
``time``            no        RFC 3339 timestamp with ``Z`` or a numeric offset, converted to
                              UTC; absent or ``null`` means the ingest time the caller passes.
                              Fractions beyond microseconds are truncated. Must lie in
                              [1970-01-01, 9000-01-01).
``data``            no        a JSON object (absent or ``null``: no data), nested at most 200
                              levels deep
``datacontenttype`` no        a JSON media type (``application/json``, ``text/json``,
                              ``*/*+json``, parameters allowed)
``dataschema``      no        non-empty string
``data_base64``     no        refused: kmeter reads data as JSON
extensions          no        any other attribute; its name must be lower-case ASCII letters
                              and digits (CloudEvents); its value a string, number or boolean
==================  ========  ===============================================================

``null`` for an optional attribute means absent, as the CloudEvents JSON format says.

The event is a :class:`UsageEvent`, an immutable ``NamedTuple`` (building one costs a quarter of
a frozen dataclass; the worker builds >100k a second). Being a tuple, it also compares equal to a
plain tuple of the same fields; compare events with events. ``time`` is always set (UTC), so
re-encoding an event never depends on when it is decoded again: **the ingest side must encode
events with their time filled in** (:func:`encode_event` always writes it).

Validation collects every problem of an event, not just the first: a :class:`Problem` names the
field and gives a reason a person reads (``subject: must be a non-empty string, got 42``).
Single events raise :class:`InvalidEventError`; a batch returns a :class:`Batch` with the valid
events and the problems per index. The checks are plain ``type(x) is str`` tests on the decoded
dict, not a schema library, which keeps decoding at a few microseconds per event.

Numbers in ``data`` are exact (see :mod:`kmeter.core.exactjson`): decode from bytes with
:func:`decode_event` / :func:`decode_events`. The ``*_from_dict`` functions take a dict decoded
elsewhere, whose non-integer numbers are only as exact as that decoder made them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple

import orjson

from kmeter.core import exactjson
from kmeter.core.decimals import describe

__all__ = [
    "EXTENSION_NAME_PATTERN",
    "JSON_MEDIA_TYPE_PATTERN",
    "MAX_TIME",
    "MIN_TIME",
    "TIME_PATTERN",
    "Batch",
    "InvalidEventError",
    "Problem",
    "UsageEvent",
    "decode_event",
    "decode_events",
    "encode_event",
    "event_from_dict",
    "event_to_dict",
    "events_from_list",
    "format_timestamp",
    "parse_timestamp",
]

MIN_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""Earliest event time accepted (inclusive)."""

MAX_TIME: Final = datetime(9000, 1, 1, tzinfo=UTC)
"""Event times must be before this (far enough from ``datetime.max`` for any window arithmetic)."""

SPEC_VERSION: Final = "1.0"

JSONObject = dict[str, Any]


class UsageEvent(NamedTuple):
    """One validated usage event. ``time`` is timezone-aware UTC; ``data`` a JSON object or None.

    Treat ``data`` as read-only: it is shared, not copied.
    """

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: JSONObject | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: Mapping[str, str | int | float | bool | Decimal] | None = None


class Problem(NamedTuple):
    """Why one field of an event is invalid. ``str(problem)`` is ``"field: reason"``."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class InvalidEventError(ValueError):
    """An event (or a whole request body) failed validation; ``problems`` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


@dataclass(frozen=True, slots=True)
class Batch:
    """The outcome of validating a batch: valid events in input order, problems per input index.

    ``indices[i]`` is the input index of ``events[i]``. ``was_array`` tells whether the input was
    a JSON array (a batch) or a single object (then the batch has one index, 0).
    """

    events: tuple[UsageEvent, ...]
    indices: tuple[int, ...]
    problems: Mapping[int, tuple[Problem, ...]] = field(default_factory=dict)
    was_array: bool = True

    @property
    def ok(self) -> bool:
        """True when every event of the batch is valid."""
        return not self.problems

    def messages(self) -> list[str]:
        """Every problem as ``"[index] field: reason"`` (or without the index for one object)."""
        if not self.was_array:
            return [str(problem) for problems in self.problems.values() for problem in problems]
        return [
            f"[{index}] {problem}"
            for index, problems in sorted(self.problems.items())
            for problem in problems
        ]


# --- timestamps -----------------------------------------------------------------------------

_CLOCK: Final = (
    r"-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_RFC3339: Final = re.compile(r"[0-9]{4}" + _CLOCK, re.ASCII)

TIME_PATTERN: Final = r"^(?:19[7-9][0-9]|[2-8][0-9]{3})" + _CLOCK + "$"
"""``time`` as the OpenAPI document states it: RFC 3339 with an offset, in the years
1970 to 8999. (The bound applies in UTC: ``1970-01-01T00:30:00+01:00`` matches and is refused.)"""


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime, or raise ValueError with a reason.

    The offset is required (``Z`` or ``±hh:mm``); ``T``, ``t`` or a space separate date and time.
    Fractions beyond microseconds are truncated. Leap seconds (``:60``) are refused.
    """
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(f"{exactjson.dumps(text).decode()} is not an RFC 3339 timestamp")
    try:
        parsed = _fromisoformat(text if text[-1] != "z" else text[:-1] + "Z")
    except ValueError as error:
        raise ValueError(
            f"{exactjson.dumps(text).decode()} is not a valid RFC 3339 timestamp: {error}"
        ) from None
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.utcoffset():
        return parsed.astimezone(UTC)
    return parsed.replace(tzinfo=UTC)


_fromisoformat: Final = datetime.fromisoformat


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``: ``2024-05-01T12:34:56Z`` or ``…56.789000Z``."""
    if moment.tzinfo is not UTC:
        if moment.utcoffset() is None:
            raise ValueError("cannot format a naive datetime as RFC 3339")
        moment = moment.astimezone(UTC)
    return moment.isoformat()[:-6] + "Z"


# --- validation -------------------------------------------------------------------------------

_KNOWN: Final = frozenset(
    {
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
    }
)
EXTENSION_NAME_PATTERN: Final = "^[a-z0-9]+$"
"""CloudEvents extension attribute names: lower-case ASCII letters and digits."""
_EXTENSION_NAME: Final = re.compile(EXTENSION_NAME_PATTERN, re.ASCII)
_EXTENSION_TYPES: Final = (str, int, float, bool, Decimal)


def _string_problem(name: str, value: object) -> Problem:
    if value is None:
        return Problem(name, "must be a non-empty string, but it is missing")
    return Problem(name, f"must be a non-empty string, got {describe(value)}")


def _any_case(word: str) -> str:
    """``word`` in any letter case, written without flags: the same expression serves Python's
    ``re`` and the OpenAPI document (ECMA 262)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


_SPACE: Final = r"[ \t\n\v\f\r]*"
JSON_MEDIA_TYPE_PATTERN: Final = (
    rf"^{_SPACE}(?:{_any_case('application/json')}|{_any_case('text/json')}"
    rf"|[^;]*\+{_any_case('json')}){_SPACE}(?:;[\s\S]*)?$"
)
"""A ``datacontenttype`` kmeter accepts: ``application/json``, ``text/json`` or ``*/*+json``,
any case, parameters allowed, ASCII white space around. Used as is by validation and by the
OpenAPI document. (Before 2026-12-06 any Unicode white space around was accepted.)"""
_JSON_MEDIA_TYPE: Final = re.compile(JSON_MEDIA_TYPE_PATTERN)


def _is_json_media_type(media_type: str) -> bool:
    return _JSON_MEDIA_TYPE.fullmatch(media_type) is not None


def _slow_checks(obj: JSONObject, problems: list[Problem]) -> dict[str, Any] | None:
    """Extensions, data_base64 and other rarely present attributes."""
    extensions: dict[str, Any] = {}
    for name, value in obj.items():
        if name in _KNOWN:
            continue
        if not (type(name) is str and _EXTENSION_NAME.fullmatch(name)):
            problems.append(
                Problem(
                    name,
                    "is not a valid attribute name: CloudEvents extension names are lower-case "
                    "ASCII letters and digits",
                )
            )
        elif value is None:
            continue
        elif not isinstance(value, _EXTENSION_TYPES):
            problems.append(
                Problem(
                    name,
                    "extension attributes must be a string, number or boolean, "
                    f"got {describe(value)}",
                )
            )
        else:
            extensions[name] = value
    if obj.get("data_base64") is not None:
        problems.append(
            Problem("data_base64", "binary data is not supported; send a JSON object in data")
        )
    return extensions or None


def _required_problems(obj: JSONObject, problems: list[Problem]) -> None:
    spec = obj.get("specversion")
    if spec is None:
        problems.append(Problem("specversion", 'must be "1.0", but it is missing'))
    elif spec != SPEC_VERSION:
        problems.append(Problem("specversion", f'must be "1.0", got {describe(spec)}'))
    for name in ("id", "source", "type", "subject"):
        value = obj.get(name)
        if type(value) is not str or not value:
            problems.append(_string_problem(name, value))


def _time_problems(raw_time: object, problems: list[Problem]) -> datetime | None:
    if type(raw_time) is not str:
        problems.append(
            Problem("time", f"must be an RFC 3339 timestamp string, got {describe(raw_time)}")
        )
        return None
    try:
        time = parse_timestamp(raw_time)
    except ValueError as error:
        problems.append(Problem("time", str(error)))
        return None
    if not MIN_TIME <= time < MAX_TIME:
        problems.append(
            Problem(
                "time",
                f"{raw_time} is outside the supported range "
                f"[{format_timestamp(MIN_TIME)}, {format_timestamp(MAX_TIME)})",
            )
        )
    return time


def _optional_problems(obj: JSONObject, check_depth: bool, problems: list[Problem]) -> None:
    data = obj.get("data")
    if data is not None:
        if type(data) is not dict:
            problems.append(Problem("data", f"must be a JSON object, got {describe(data)}"))
        elif check_depth and exactjson.nesting_depth(data) > exactjson.MAX_DEPTH:
            problems.append(Problem("data", f"is nested deeper than {exactjson.MAX_DEPTH} levels"))
    content_type = obj.get("datacontenttype")
    if content_type is not None and (
        type(content_type) is not str or not _is_json_media_type(content_type)
    ):
        problems.append(
            Problem(
                "datacontenttype",
                f"{describe(content_type)} is not a JSON media type; kmeter reads data as JSON",
            )
        )
    schema = obj.get("dataschema")
    if schema is not None and (type(schema) is not str or not schema):
        problems.append(_string_problem("dataschema", schema))


def _thorough(obj: object, ingest_time: datetime, check_depth: bool) -> UsageEvent | list[Problem]:
    """Full validation collecting every problem; the fallback of :func:`_validate`."""
    if type(obj) is not dict:
        return [Problem("event", f"must be a JSON object, got {describe(obj)}")]
    problems: list[Problem] = []
    _required_problems(obj, problems)
    raw_time = obj.get("time")
    time = ingest_time if raw_time is None else _time_problems(raw_time, problems)
    _optional_problems(obj, check_depth, problems)
    extensions = _slow_checks(obj, problems)
    if problems or time is None:
        return problems
    return UsageEvent(
        obj["id"],
        obj["source"],
        obj["type"],
        obj["subject"],
        time,
        obj.get("data"),
        obj.get("datacontenttype"),
        obj.get("dataschema"),
        extensions,
    )


# The attributes of a plain event (no extensions, no dataschema, no data_base64).
_PLAIN: Final = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype"}
)


def _plain(obj: JSONObject, ingest_time: datetime) -> UsageEvent | None:  # noqa: PLR0911
    """The hot path: the event of a plain, valid event object, or None when anything is unusual
    (then :func:`_thorough` decides, with reasons). Property-tested to agree with it."""
    if not _PLAIN.issuperset(obj):
        return None
    get = obj.get
    event_id: Any = get("id")
    source: Any = get("source")
    event_type: Any = get("type")
    subject: Any = get("subject")
    data: Any = get("data")
    content_type: Any = get("datacontenttype")
    raw_time: Any = get("time")
    if not (
        get("specversion") == SPEC_VERSION
        and type(event_id) is str
        and event_id
        and type(source) is str
        and source
        and type(event_type) is str
        and event_type
        and type(subject) is str
        and subject
        and (data is None or type(data) is dict)
        and (content_type is None or content_type == "application/json")
    ):
        return None
    if raw_time is None:
        return UsageEvent(event_id, source, event_type, subject, ingest_time, data, content_type)
    if type(raw_time) is not str or _RFC3339.fullmatch(raw_time) is None:
        return None
    try:
        time = _fromisoformat(raw_time)
    except ValueError:
        return None
    if time.tzinfo is not UTC:
        time = time.astimezone(UTC)
    if MIN_TIME <= time < MAX_TIME:
        return UsageEvent(event_id, source, event_type, subject, time, data, content_type)
    return None


def _validate(obj: object, ingest_time: datetime, check_depth: bool) -> UsageEvent | list[Problem]:
    """The hot path for plain, valid events; anything unusual goes to :func:`_thorough`."""
    if type(obj) is dict and not check_depth:
        event = _plain(obj, ingest_time)
        if event is not None:
            return event
    return _thorough(obj, ingest_time, check_depth)


def _check_ingest_time(ingest_time: datetime) -> datetime:
    if ingest_time.tzinfo is UTC:
        return ingest_time
    if ingest_time.utcoffset() is None:
        raise ValueError("ingest_time must be timezone-aware")
    return ingest_time.astimezone(UTC)


def event_from_dict(obj: object, *, ingest_time: datetime) -> UsageEvent:
    """Validate one decoded event; raise :class:`InvalidEventError` listing every problem.

    ``ingest_time`` (timezone-aware) becomes the event's time when it has none.
    """
    result = _validate(obj, _check_ingest_time(ingest_time), True)
    if isinstance(result, list):
        raise InvalidEventError(result)
    return result


def events_from_list(objs: Sequence[object], *, ingest_time: datetime) -> Batch:
    """Validate a decoded batch (a list of event objects); see :class:`Batch`."""
    return _batch(objs, _check_ingest_time(ingest_time), check_depth=True, was_array=True)


def _batch(
    objs: Sequence[object], ingest_time: datetime, *, check_depth: bool, was_array: bool
) -> Batch:
    events: list[UsageEvent] = []
    indices: list[int] = []
    problems: dict[int, tuple[Problem, ...]] = {}
    for index, obj in enumerate(objs):
        result = _validate(obj, ingest_time, check_depth)
        if isinstance(result, list):
            problems[index] = tuple(result)
        else:
            events.append(result)
            indices.append(index)
    return Batch(tuple(events), tuple(indices), problems, was_array)


def _loads(raw: bytes | str) -> Any:
    try:
        return exactjson.loads(raw)
    except exactjson.JSONDecodeError as error:
        raise InvalidEventError([Problem("body", f"is not valid JSON: {error}")]) from None


def decode_event(raw: bytes | str, *, ingest_time: datetime) -> UsageEvent:
    """Decode and validate one JSON event; raise :class:`InvalidEventError` (field ``body`` for JSON
    syntax errors)."""
    if type(raw) is bytes and raw[:1] == b"{":
        # The fast path for a plain event object: orjson, then _plain. orjson's values are
        # exactly exactjson's when the data holds no float (orjson makes every non-integer
        # number, and every integer beyond 64 bits, a float) and nests shallowly. Anything
        # unusual (a float, deep data, a syntax error, any problem) falls through to the
        # thorough path below, which decides the same way, with reasons. Property-tested.
        try:
            document = _orjson_loads(raw)
        except _OrjsonError:
            pass
        else:
            if ingest_time.tzinfo is not UTC:
                ingest_time = _check_ingest_time(ingest_time)
            event = _plain(document, ingest_time)
            if event is not None and (event.data is None or _integers_only(event.data, 2)):
                return event
    try:
        document = exactjson.loads(raw)
    except exactjson.JSONDecodeError as error:
        raise InvalidEventError([Problem("body", f"is not valid JSON: {error}")]) from None
    result = _validate(document, _check_ingest_time(ingest_time), False)
    if isinstance(result, list):
        raise InvalidEventError(result)
    return result


_orjson_loads: Final = orjson.loads
_OrjsonError: Final = orjson.JSONDecodeError
_FAST_DEPTH: Final = 8
"""The deepest data the fast path takes (levels, the event object being 1)."""


def _integers_only(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether ``value`` (decoded by orjson, at nesting level ``depth``) holds no float and
    nests at most :data:`_FAST_DEPTH` levels."""
    if depth > _FAST_DEPTH:
        return False
    items: Any = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if kind is float:
            return False
        if (kind is dict or kind is list) and not _integers_only(item, depth + 1):
            return False
    return True


def decode_events(raw: bytes | str, *, ingest_time: datetime) -> Batch:
    """Decode a request body holding one event object or a JSON array of them.

    Raises :class:`InvalidEventError` only when the body as a whole is unusable (not JSON, not an
    object or array); problems of single events are in the returned :class:`Batch`.
    """
    document = _loads(raw)
    when = _check_ingest_time(ingest_time)
    if type(document) is list:
        return _batch(document, when, check_depth=False, was_array=True)
    if type(document) is dict:
        return _batch([document], when, check_depth=False, was_array=False)
    raise InvalidEventError(
        [
            Problem(
                "body", f"must be an event object or an array of events, got {describe(document)}"
            )
        ]
    )


# --- encoding --------------------------------------------------------------------------------


def event_to_dict(event: UsageEvent) -> JSONObject:
    """The CloudEvents JSON object of an event (``time`` always written, in UTC with ``Z``)."""
    obj: JSONObject = {
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": format_timestamp(event.time),
    }
    if event.datacontenttype is not None:
        obj["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        obj["dataschema"] = event.dataschema
    if event.extensions:
        for name, value in event.extensions.items():
            obj.setdefault(name, value)
    if event.data is not None:
        obj["data"] = event.data
    return obj


def encode_event(event: UsageEvent) -> bytes:
    """Encode an event as CloudEvents JSON bytes; :func:`decode_event` gives it back equal."""
    return exactjson.dumps(event_to_dict(event))
