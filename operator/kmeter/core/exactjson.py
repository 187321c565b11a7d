"""JSON with exact numbers: orjson's speed, without its binary-float rounding.

orjson parses every non-integer number into a binary ``float`` (and integers beyond 64 bits too),
so ``0.10000000000000000001`` would silently become ``0.1``. kmeter bills by these numbers, so
:func:`loads` guarantees that every decoded number is *exactly* the value of its JSON text:

* integers are ``int`` (those beyond orjson's 64-bit range, which it cannot encode again, are
  integral :class:`~decimal.Decimal` values);
* a non-integer number is a ``float`` when the float's shortest ``repr`` is exactly the text's
  value (``0.1``, ``2.5e-3``, ``1.0``), and a :class:`~decimal.Decimal` otherwise.

How: a JSON number text with at most 15 significant digits and an exponent below 100 always
round-trips through a double (IEEE 754 guarantees 15 decimal digits), so orjson's float is exact.
A quick scan of the raw bytes (one ``bytes.translate`` and one regular expression, ~0.8 µs for a
300-byte event) looks for a number token whose mantissa is 16 or more characters long, or whose
exponent has three or more digits. Only then is the document decoded by the standard library with
``parse_float=Decimal`` (~5x slower) and each Decimal that a float represents exactly is turned
back into that float, so both paths produce the very same Python values for the same text. The
scan may also fire on a string like ``"a:1234567890123456"``; that costs time, never exactness.

``NaN``, ``Infinity`` and lone surrogates (``"\\ud800"``) are refused on both paths, as is any
integer with more than 4300 digits (Python's int-to-string limit) and any document nested deeper
than :data:`MAX_DEPTH` levels (orjson cannot *encode* more than 254, so a deeper document could be
decoded but never written again; :func:`nesting_depth` checks values decoded elsewhere).

:func:`dumps` writes Decimals as JSON numbers (their exact text), floats as their shortest repr.
Decoding what :func:`dumps` wrote gives back equal values.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, Final

import orjson

__all__ = ["MAX_DEPTH", "JSONDecodeError", "dumps", "loads", "nesting_depth"]

MAX_DEPTH: Final = 200
"""Deepest nesting of arrays and objects accepted by :func:`loads`."""


class JSONDecodeError(ValueError):
    """The bytes are not a JSON document; the message says why."""


def _translation() -> bytes:
    table = bytearray(b"_" * 256)
    for char in b"0123456789.":
        table[char] = ord("D")
    for char in b":,[":
        table[char] = ord("P")
    for char in b" \t\r\n":
        table[char] = ord("W")
    for char in b"eE":
        table[char] = ord("E")
    for char in b"+-":
        table[char] = ord("S")
    for char in b"]}":
        table[char] = ord("C")
    return bytes(table)


_TABLE: Final = _translation()
# After translation: a number token starts after ':', ',' or '[' (P), maybe blanks (W) and a sign
# (S); it is risky when its mantissa has 16+ characters or its exponent 3+ digits.
_RISKY: Final = re.compile(rb"P[WS]*D(?:D{15}|D*ES?DDD)")


def _refuse_constant(name: str) -> object:
    raise JSONDecodeError(f"{name} is not a JSON number")


_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {key: _canonical(item) for key, item in value.items()}
    if kind is list:
        return [_canonical(item) for item in value]
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else Decimal(value)
    if kind is Decimal:
        as_float = float(value)
        if Decimal(repr(as_float)) == value and as_float not in (float("inf"), float("-inf")):
            return as_float
        return value
    return value


def _slow_loads(raw: bytes | str) -> Any:
    try:
        value = json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    except JSONDecodeError:
        raise
    except (ValueError, TypeError, RecursionError) as error:
        raise JSONDecodeError(str(error)) from None
    value = _canonical(value)
    try:  # orjson refuses what the standard library lets through, e.g. lone surrogates
        orjson.dumps(value, default=_default)
    except (TypeError, orjson.JSONEncodeError) as error:
        raise JSONDecodeError(str(error)) from None
    return value


def loads(raw: bytes | str) -> Any:
    """Decode a JSON document, keeping every number exact (see the module docstring)."""
    raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    shape = raw_bytes.translate(_TABLE)
    # A bare number as the whole document has no ':', ',' or '[' before it: take the slow path.
    if _RISKY.search(shape) is not None or shape.lstrip(b"W")[:1] in (b"D", b"S"):
        value = _slow_loads(raw_bytes)
    else:
        try:
            value = orjson.loads(raw_bytes)
        except orjson.JSONDecodeError as error:
            raise JSONDecodeError(str(error)) from None
    # Depth can only exceed MAX_DEPTH when there are that many closing brackets.
    if (
        len(raw_bytes) > 2 * MAX_DEPTH
        and shape.count(b"C") > MAX_DEPTH
        and (nesting_depth(value) > MAX_DEPTH)
    ):
        raise JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels")
    return value


_CONTAINERS: Final = (dict, list)  # a tuple: isinstance with `dict | list` is slower in 3.11


def nesting_depth(value: object) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0, ``[]`` is 1).

    Only containers go on the stack: a batch of events is mostly scalars, and pushing each of
    them too made this walk cost more than decoding the batch (~360 µs for 100 events, against
    ~95 µs now and ~75 µs for orjson to decode them)."""
    if not isinstance(value, _CONTAINERS):
        return 0
    deepest = 0
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return deepest


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"{value} is not a JSON number")
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: object, *, sort_keys: bool = False) -> bytes:
    """Encode to compact JSON bytes; Decimals become JSON numbers with their exact text."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(value, default=_default, option=option)
    except orjson.JSONEncodeError as error:
        if "64-bit" not in str(error):
            raise
        # orjson cannot encode integers beyond 64 bits: write them as integral Decimals.
        return orjson.dumps(_canonical(value), default=_default, option=option)
