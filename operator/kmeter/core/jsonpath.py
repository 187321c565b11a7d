"""JSONPath for ``valueProperty`` and ``groupBy``: the subset meters use, and value conversion.

Grammar (a subset of RFC 9535 that selects at most one value)::

    path     = "$" segment+
    segment  = "." name  |  "[" blank* selector blank* "]"
    name     = [A-Za-z_][A-Za-z0-9_]*            (ASCII; use brackets for anything else)
    selector = index | quoted
    index    = "0" | "-"? [1-9][0-9]*             (negative counts from the end: [-1] is last)
    quoted   = "'" chars "'" | '"' chars '"'      (JSON-style escapes: \\\\ \\' \\" \\/ \\b \\f \\n
                                                  \\r \\t \\uXXXX; no raw control characters)
    blank    = " " | "\\t" | "\\n" | "\\r"

Examples: ``$.usage.total_tokens``, ``$.choices[0].usage``, ``$['key with space']``,
``$["x"]``, ``$.items[-1]``. Not supported, with a reason saying so: wildcards (``*``),
recursive descent (``..``), slices (``[0:2]``), filters (``[?...]``), unions (``[0,1]``), a bare
``$``. Dot names are ASCII only (RFC 9535 also allows non-ASCII) so that the same grammar works
as a Kubernetes CRD ``pattern``: :data:`PATH_PATTERN` is a regular expression that accepts exactly
what :func:`compile_path` accepts, valid in both Python and RE2/ECMA-262 dialects.

Semantics: a name selects an object member (never an array item), an index selects an array item
(never an object member named ``"0"``). A path that does not match gives :data:`MISSING`, which
is different from a JSON ``null``.

Value conversion:

* :func:`number_at` (``valueProperty`` of SUM, AVG, MIN, MAX, LATEST): a JSON number or a
  numeric string becomes an exact :class:`~decimal.Decimal` (see :mod:`kmeter.core.decimals`);
  missing, ``null``, booleans, objects, arrays, NaN/Infinity and non-numeric strings raise
  :class:`ExtractionError`, e.g. ``$.usage.total_tokens: expected a number or numeric string,
  got true``.
* :func:`label_at` (``groupBy`` values): strings stay strings, numbers become their canonical
  decimal text (``1.50`` → ``"1.5"``), booleans ``"true"``/``"false"``. **Missing or ``null`` is
  ``None``**, the "no value" group, as OpenMeter does (its API shows ``null``); objects and arrays
  raise :class:`ExtractionError`.
* :func:`distinct_at` (``valueProperty`` of UNIQUE_COUNT): converted like a label, but missing or
  ``null`` raises :class:`ExtractionError`: there is no value to count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from kmeter.core.decimals import (
    MAX_INTEGER_DIGITS,
    check_range,
    describe,
    format_decimal,
    to_decimal,
)

__all__ = [
    "MISSING",
    "PATH_PATTERN",
    "ExtractionError",
    "JSONPathError",
    "Path",
    "compile_path",
    "distinct_at",
    "extract",
    "label_at",
    "number_at",
    "to_label",
]

_NAME: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_BLANK: Final = r"[ \t\n\r]*"
_ESCAPE: Final = r"\\(?:[bfnrt/\\]|u[0-9a-fA-F]{4})"
_SINGLE: Final = rf"'(?:[^'\\\x00-\x1f]|{_ESCAPE}|\\')*'"
_DOUBLE: Final = rf'"(?:[^"\\\x00-\x1f]|{_ESCAPE}|\\")*"'
_INDEX: Final = r"(?:0|-?[1-9][0-9]*)"
PATH_PATTERN: Final = rf"^\$(?:\.{_NAME}|\[{_BLANK}(?:{_INDEX}|{_SINGLE}|{_DOUBLE}){_BLANK}\])+$"
"""A regular expression accepting exactly the paths :func:`compile_path` accepts."""

_LIMIT: Final = 10**MAX_INTEGER_DIGITS
_NAME_RE: Final = re.compile(_NAME, re.ASCII)
_INDEX_RE: Final = re.compile(r"-?[0-9]+", re.ASCII)
_BLANKS: Final = " \t\n\r"
_SIMPLE_ESCAPES: Final = {
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "/": "/",
    "\\": "\\",
}


class _Missing:
    """The type of :data:`MISSING`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""What :func:`extract` returns when the path selects nothing (not the same as JSON null)."""


class JSONPathError(ValueError):
    """An expression is not a supported JSONPath: ``reason`` says why, ``position`` where (the
    0-based index of the offending character in ``expression``)."""

    def __init__(self, expression: str, reason: str, position: int) -> None:
        self.expression = expression
        self.reason = reason
        self.position = position
        super().__init__(
            f"{expression} is not a supported JSONPath: {reason} (at position {position})"
        )


class ExtractionError(ValueError):
    """A value in an event's data is missing or unusable; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True, slots=True)
class Path:
    """A compiled JSONPath: the source ``expression`` and its ``segments`` (names and indexes).

    ``path.get(data)`` is :func:`extract` specialised for the path (the fold calls it per event).
    """

    expression: str
    segments: tuple[str | int, ...]
    get: Callable[[object], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "get", _getter(self.segments))

    def __str__(self) -> str:
        return self.expression


def _walk(segments: tuple[str | int, ...], data: object) -> Any:
    value: Any = data
    for segment in segments:
        if isinstance(segment, str):
            if type(value) is not dict:
                return MISSING
            value = value.get(segment, MISSING)
            if value is MISSING:
                return MISSING
        else:
            if type(value) is not list:
                return MISSING
            try:
                value = value[segment]
            except IndexError:
                return MISSING
    return value


def _getter(segments: tuple[str | int, ...]) -> Callable[[object], Any]:
    """A function selecting ``segments`` in data; unrolled for one or two names (most paths)."""
    if len(segments) == 1 and isinstance(segments[0], str):
        (name,) = segments

        def get_one(data: object) -> Any:
            if type(data) is dict:
                return data.get(name, MISSING)
            return MISSING

        return get_one
    if len(segments) == 2 and isinstance(segments[0], str) and isinstance(segments[1], str):
        first, second = segments

        def get_two(data: object) -> Any:
            if type(data) is dict:
                inner = data.get(first)
                if type(inner) is dict:
                    return inner.get(second, MISSING)
            return MISSING

        return get_two

    def get_any(data: object) -> Any:
        return _walk(segments, data)

    return get_any


def _fail(expression: str, reason: str, position: int) -> JSONPathError:
    return JSONPathError(expression, reason, position)


def _read_quoted(expression: str, start: int) -> tuple[str, int]:
    """Read a quoted name starting at the quote; return the name and the index after the quote."""
    quote = expression[start]
    chars: list[str] = []
    escaped_unicode = False
    position = start + 1
    length = len(expression)
    while position < length:
        char = expression[position]
        if char == quote:
            name = "".join(chars)
            if escaped_unicode:
                name = _join_surrogates(name)
            return name, position + 1
        if char == "\\":
            if position + 1 >= length:
                break
            code = expression[position + 1]
            if code == quote:
                chars.append(quote)
                position += 2
            elif code in _SIMPLE_ESCAPES:
                chars.append(_SIMPLE_ESCAPES[code])
                position += 2
            elif code == "u":
                digits = expression[position + 2 : position + 6]
                if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                    raise _fail(expression, r"\u must be followed by four hex digits", position)
                chars.append(chr(int(digits, 16)))
                escaped_unicode = True
                position += 6
            else:
                raise _fail(expression, f"unknown escape \\{code}", position)
        elif char < " ":
            raise _fail(expression, "control characters must be escaped in a quoted name", position)
        else:
            chars.append(char)
            position += 1
    raise _fail(expression, f"unterminated quoted name (missing {quote})", start)


def _join_surrogates(text: str) -> str:
    """Turn escaped UTF-16 surrogate pairs (\\uD83D\\uDE00) into the character they encode."""
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        return text  # a lone surrogate: keep it (it matches no key orjson decodes)


def _skip_blanks(expression: str, position: int) -> int:
    while position < len(expression) and expression[position] in _BLANKS:
        position += 1
    return position


def _bracket(expression: str, position: int) -> tuple[str | int, int]:
    """Parse ``[ selector ]`` starting at ``[``; return the segment and the index after ``]``."""
    inner = _skip_blanks(expression, position + 1)
    if inner >= len(expression):
        raise _fail(expression, "unterminated [", position)
    char = expression[inner]
    segment: str | int
    if char in "'\"":
        segment, after = _read_quoted(expression, inner)
    elif char == "*":
        raise _fail(expression, "wildcards ([*]) are not supported", inner)
    elif char == "?":
        raise _fail(expression, "filters ([?...]) are not supported", inner)
    else:
        match = _INDEX_RE.match(expression, inner)
        if match is None:
            if char == ":":
                raise _fail(expression, "slices ([a:b]) are not supported", inner)
            raise _fail(expression, "expected an index or a quoted name inside [...]", inner)
        text = match.group()
        digits = text.lstrip("-")
        if (len(digits) > 1 and digits[0] == "0") or text == "-0":
            raise _fail(expression, f"index {text} has a leading zero", inner)
        segment, after = int(text), match.end()
    close = _skip_blanks(expression, after)
    if close >= len(expression):
        raise _fail(expression, "unterminated [", position)
    if expression[close] == ":":
        raise _fail(expression, "slices ([a:b]) are not supported", close)
    if expression[close] == ",":
        raise _fail(expression, "unions ([a,b]) are not supported", close)
    if expression[close] != "]":
        raise _fail(expression, "expected ]", close)
    return segment, close + 1


def compile_path(expression: str) -> Path:
    """Parse a JSONPath of the supported grammar, or raise :class:`JSONPathError` with a reason."""
    if not isinstance(expression, str):
        raise TypeError("a JSONPath is a string")
    if not expression.startswith("$"):
        raise _fail(expression, "must start with $", 0)
    segments: list[str | int] = []
    position = 1
    length = len(expression)
    while position < length:
        char = expression[position]
        if char == ".":
            if expression.startswith("..", position):
                raise _fail(expression, "recursive descent (..) is not supported", position)
            match = _NAME_RE.match(expression, position + 1)
            if match is None:
                following = expression[position + 1 : position + 2]
                if following == "*":
                    raise _fail(expression, "wildcards (.*) are not supported", position + 1)
                if following == "":
                    raise _fail(expression, "a name must follow the dot", position + 1)
                raise _fail(
                    expression,
                    "after a dot, a name is ASCII letters, digits and _ and does not start with "
                    "a digit; write other names in brackets, e.g. $['my-key']",
                    position + 1,
                )
            segments.append(match.group())
            position = match.end()
        elif char == "[":
            segment, position = _bracket(expression, position)
            segments.append(segment)
        else:
            raise _fail(expression, f"expected . or [ but found {char!r}", position)
    if not segments:
        raise _fail(expression, "must select a property below $, e.g. $.tokens", 1)
    return Path(expression, tuple(segments))


def extract(path: Path, data: object) -> Any:
    """The value ``path`` selects in ``data`` (decoded JSON), or :data:`MISSING`."""
    return _walk(path.segments, data)


def number_at(path: Path, data: object) -> Decimal:
    """The exact number at ``path`` (a JSON number or numeric string); else ExtractionError."""
    value = path.get(data)
    if type(value) is int and -_LIMIT < value < _LIMIT:
        return Decimal(value)
    if value is MISSING:
        raise ExtractionError(path.expression, "missing: expected a number or numeric string")
    try:
        return to_decimal(value)
    except ValueError as error:
        raise ExtractionError(path.expression, str(error)) from None


def _number_label(number: Decimal) -> str:
    """Canonical text of a finite number: plain within the usage-value range, else scientific."""
    try:
        return format_decimal(check_range(number))
    except ValueError:
        sign, digits, exponent = number.as_tuple()
        assert isinstance(exponent, int)
        kept = list(digits)
        while len(kept) > 1 and kept[-1] == 0:
            kept.pop()
            exponent += 1
        return str(Decimal((sign, tuple(kept), exponent)))


def to_label(value: object) -> str | None:
    """Convert a JSON scalar to its label text; raise ValueError (a reason) for anything else.

    ``None`` (JSON null) and :data:`MISSING` give ``None``. Strings are kept verbatim; equal
    numbers give equal labels (``1``, ``1.0`` and ``1e0`` all give ``"1"``), but the string
    ``"1.0"`` stays ``"1.0"``.
    """
    if isinstance(value, str) or value is None:
        return value
    if value is MISSING:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    number: Decimal | None = None
    if isinstance(value, int):
        if -_LIMIT < value < _LIMIT:
            return str(value)
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))
    elif isinstance(value, Decimal) and value.is_finite():
        number = value
    if number is None:
        raise ValueError(f"expected a string, number or boolean, got {describe(value)}")
    return _number_label(number)


def label_at(path: Path, data: object) -> str | None:
    """The ``groupBy`` label at ``path``: text, or ``None`` when missing or null."""
    value = path.get(data)
    if type(value) is str:
        return value
    try:
        return to_label(value)
    except ValueError as error:
        raise ExtractionError(path.expression, str(error)) from None


def distinct_at(path: Path, data: object) -> str:
    """The UNIQUE_COUNT value at ``path`` as text; missing or null raise ExtractionError."""
    value = path.get(data)
    if type(value) is str:
        return value
    if value is MISSING or value is None:
        reason = "missing" if value is MISSING else "is null"
        raise ExtractionError(
            path.expression, f"{reason}: expected a string, number or boolean to count"
        )
    try:
        label = to_label(value)
    except ValueError as error:
        raise ExtractionError(path.expression, str(error)) from None
    assert label is not None
    return label
