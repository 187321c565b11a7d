"""Exact decimal numbers for usage values: the context, the accepted range, the conversions.

Customers are billed by these numbers, so they are :class:`decimal.Decimal`, never binary floats.
Three rules make every sum exact:

1. **A bounded input range.** A usage value has at most :data:`MAX_INTEGER_DIGITS` (30) digits
   before the decimal point and at most :data:`MAX_FRACTION_DIGITS` (18) after it (trailing zeros
   do not count: ``1.50000000000000000000`` is ``1.5``). Anything else is refused with a reason.
   18 places is what ERC-20 tokens use; 30 integer digits is far beyond any meter.
2. **A wide context.** :data:`EXACT` has :data:`PRECISION` (80) significant digits. A sum of values
   in the range above needs at most ``30 + 18 + log10(number of values)`` digits, so up to 10**32
   values sum exactly.
3. **A trap instead of silent rounding.** :data:`EXACT` traps ``Inexact``: should an operation ever
   need rounding (it cannot within the bounds above), it raises instead of rounding quietly.

Do not use the ``+`` operator on usage values: it uses the *thread's* current context (28 digits
by default, which rounds silently). Use ``EXACT.add(a, b)`` and friends.

The one inexact result is an average (``AVG``): ``sum / count`` is rounded half-even to
:data:`MAX_FRACTION_DIGITS` places by :func:`divide`; sum and count themselves stay exact.

Conversions from JSON values (:func:`to_decimal`):

* ``int`` (not ``bool``) — exact.
* ``float`` — through its shortest ``repr``: ``0.1`` becomes ``Decimal("0.1")``. This is the exact
  value of the JSON text whenever that text had at most 15 significant digits; the event codec
  (:mod:`kmeter.core.exactjson`) hands over a ``Decimal`` instead of a ``float`` for longer texts,
  so numbers decoded by kmeter are always exact.
* ``Decimal`` — as is (it must be finite).
* ``str`` — a *numeric string*: ASCII, optional sign, digits with an optional fraction and
  exponent (``"12"``, ``"-0.5"``, ``".5"``, ``"1e3"``), at most :data:`MAX_NUMERIC_STRING_LENGTH`
  characters. No whitespace, underscores, ``NaN`` or ``Infinity``.
* anything else (``true``, ``null``, objects, arrays) is refused.

Errors are :class:`ValueError` whose message is a reason a person reads, e.g.
``expected a number or numeric string, got true``; callers prefix the field or JSONPath.
"""

from __future__ import annotations

import math
import re
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from typing import Final

import orjson

__all__ = [
    "EXACT",
    "MAX_FRACTION_DIGITS",
    "MAX_INTEGER_DIGITS",
    "MAX_NUMERIC_STRING_LENGTH",
    "NUMERIC_STRING_PATTERN",
    "PRECISION",
    "ZERO",
    "check_range",
    "describe",
    "divide",
    "format_decimal",
    "parse_decimal",
    "to_decimal",
]

PRECISION: Final = 80
"""Significant digits of :data:`EXACT`."""

MAX_INTEGER_DIGITS: Final = 30
"""A usage value's magnitude is below ``10**MAX_INTEGER_DIGITS``."""

MAX_FRACTION_DIGITS: Final = 18
"""A usage value has at most this many significant decimal places."""

MAX_NUMERIC_STRING_LENGTH: Final = 100
"""Numeric strings longer than this are refused before they are parsed."""

EXACT: Final = Context(
    prec=PRECISION,
    rounding=ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
"""The context for every arithmetic operation on usage values; it raises rather than rounds."""

_ROUNDING: Final = Context(
    prec=PRECISION,
    rounding=ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[InvalidOperation, DivisionByZero, Overflow],
)

ZERO: Final = Decimal(0)

NUMERIC_STRING_PATTERN: Final = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
"""The grammar of a numeric string (a regular expression, anchored)."""

_NUMERIC_STRING = re.compile(NUMERIC_STRING_PATTERN, re.ASCII)
_INT_LIMIT: Final = 10**MAX_INTEGER_DIGITS
_FLOAT_LIMIT: Final = 1e30
_QUANTUM: Final = Decimal(1).scaleb(-MAX_FRACTION_DIGITS)
_RANGE_REASON: Final = (
    f"is out of range (at most {MAX_INTEGER_DIGITS} digits before and "
    f"{MAX_FRACTION_DIGITS} after the decimal point)"
)


def describe(value: object, limit: int = 40) -> str:
    """Render a JSON value for an error message: compact JSON, shortened to ``limit`` chars."""
    if isinstance(value, Decimal):
        text = str(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def check_range(value: Decimal) -> Decimal:
    """Return ``value`` if it is finite and within the usage-value range, else raise ValueError.

    A value with more than 18 places that are all trailing zeros is returned normalized.
    """
    if not value.is_finite():
        raise ValueError(f"expected a finite number, got {value}")
    if value.is_zero():
        return ZERO
    if value.adjusted() >= MAX_INTEGER_DIGITS:
        raise ValueError(f"{describe(value)} {_RANGE_REASON}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_FRACTION_DIGITS:
        normalized = value.normalize(_ROUNDING)
        normal_exponent = normalized.as_tuple().exponent
        if isinstance(normal_exponent, int) and normal_exponent < -MAX_FRACTION_DIGITS:
            raise ValueError(f"{describe(value)} {_RANGE_REASON}")
        return normalized
    return value


def parse_decimal(text: str) -> Decimal:
    """Parse a numeric string (see :data:`NUMERIC_STRING_PATTERN`) into an in-range Decimal."""
    if len(text) > MAX_NUMERIC_STRING_LENGTH:
        raise ValueError(
            f"{describe(text)} is too long for a numeric string "
            f"(at most {MAX_NUMERIC_STRING_LENGTH} characters)"
        )
    if _NUMERIC_STRING.match(text) is None:
        raise ValueError(f"expected a number or numeric string, got {describe(text)}")
    return check_range(Decimal(text))


def to_decimal(value: object) -> Decimal:
    """Convert a decoded JSON value (number or numeric string) to an exact, in-range Decimal."""
    if type(value) is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return Decimal(value)
        raise ValueError(f"{describe(value)} {_RANGE_REASON}")
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        if not -_FLOAT_LIMIT < value < _FLOAT_LIMIT:
            raise ValueError(f"{describe(value)} {_RANGE_REASON}")
        return check_range(Decimal(repr(value)))
    if type(value) is str:
        return parse_decimal(value)
    if isinstance(value, Decimal):
        return check_range(value)
    raise ValueError(f"expected a number or numeric string, got {describe(value)}")


def divide(numerator: Decimal, denominator: Decimal | int) -> Decimal:
    """``numerator / denominator`` rounded half-even to :data:`MAX_FRACTION_DIGITS` places.

    This is the one rounding operation in kmeter (used by ``AVG``). Trailing zeros are removed.
    """
    quotient = _ROUNDING.divide(numerator, Decimal(denominator))
    rounded = quotient.quantize(_QUANTUM, context=_ROUNDING)
    if rounded.is_zero():
        return ZERO
    return rounded.normalize(_ROUNDING)


def format_decimal(value: Decimal) -> str:
    """The canonical text of a Decimal: plain notation, no exponent, no trailing zeros.

    ``Decimal("1.500")`` → ``"1.5"``, ``Decimal("1E+3")`` → ``"1000"``, ``Decimal("-0")`` → ``"0"``.
    Equal values give equal texts, so the text is usable in keys and JSON output.
    """
    if value.is_zero():
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
