"""Exact decimal values: conversion, range, canonical text, the one rounding (AVG)."""

from __future__ import annotations

import math
import re
from decimal import Decimal, Inexact, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter.core.decimals import (
    EXACT,
    MAX_FRACTION_DIGITS,
    MAX_INTEGER_DIGITS,
    divide,
    format_decimal,
    parse_decimal,
    to_decimal,
)

in_range = st.decimals(
    min_value=Decimal("-1e29"),
    max_value=Decimal("1e29"),
    allow_nan=False,
    allow_infinity=False,
    places=MAX_FRACTION_DIGITS,
)


def test_a_json_float_of_0_1_becomes_exactly_one_tenth() -> None:
    assert to_decimal(0.1) == Decimal("0.1")


def test_integers_stay_exact_up_to_30_digits() -> None:
    big = 10**MAX_INTEGER_DIGITS - 1
    assert to_decimal(big) == Decimal(big)
    assert to_decimal(-big) == Decimal(-big)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "expected a number or numeric string, got true"),
        (None, "expected a number or numeric string, got null"),
        ({"a": 1}, 'expected a number or numeric string, got {"a":1}'),
        ([1], "expected a number or numeric string, got [1]"),
        ("abc", 'expected a number or numeric string, got "abc"'),
        (" 1", 'expected a number or numeric string, got " 1"'),
        ("1_000", 'expected a number or numeric string, got "1_000"'),
        ("NaN", 'expected a number or numeric string, got "NaN"'),
        ("Infinity", 'expected a number or numeric string, got "Infinity"'),
        ("\uff11\uff12", 'expected a number or numeric string, got "\uff11\uff12"'),  # full-width
        (math.inf, "expected a finite number, got inf"),
        (math.nan, "expected a finite number, got nan"),
        (Decimal("NaN"), "expected a finite number, got NaN"),
    ],
)
def test_non_numbers_are_refused_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        to_decimal(value)


def test_too_many_decimal_places_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_decimal("0.0000000000000000001")  # 19 places


def test_trailing_zeros_beyond_18_places_do_not_count() -> None:
    assert to_decimal("1.500000000000000000000000") == Decimal("1.5")


def test_too_large_values_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_decimal(10**MAX_INTEGER_DIGITS)
    with pytest.raises(ValueError, match="out of range"):
        to_decimal("1e30")
    with pytest.raises(ValueError, match="out of range"):
        to_decimal(1e30)


def test_very_long_numeric_strings_are_refused_before_parsing() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_decimal("1" * 101)


@given(st.integers(min_value=-(10**30) + 1, max_value=10**30 - 1))
def test_any_integer_in_range_converts_exactly(number: int) -> None:
    assert to_decimal(number) == number
    assert to_decimal(str(number)) == number


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e29, max_value=1e29))
def test_a_float_converts_to_its_shortest_repr_or_is_refused(number: float) -> None:
    exact = Decimal(repr(number))
    places = -int(exact.normalize().as_tuple().exponent)
    if places > MAX_FRACTION_DIGITS:
        with pytest.raises(ValueError, match="out of range"):
            to_decimal(number)
    else:
        assert to_decimal(number) == exact


@given(in_range)
def test_numeric_strings_convert_exactly(value: Decimal) -> None:
    assert to_decimal(str(value)) == value
    assert to_decimal(format_decimal(value)) == value


@given(in_range)
def test_format_decimal_is_plain_canonical_and_exact(value: Decimal) -> None:
    text = format_decimal(value)
    assert "E" not in text
    assert "e" not in text
    assert Decimal(text) == value
    # Equal values, whatever their exponent, give the same text.
    assert format_decimal(EXACT.multiply(value, Decimal("1.000"))) == text
    if "." in text:
        assert not text.endswith("0")


def test_format_decimal_examples() -> None:
    assert format_decimal(Decimal("1.500")) == "1.5"
    assert format_decimal(Decimal("1E+3")) == "1000"
    assert format_decimal(Decimal("-0")) == "0"
    assert format_decimal(Decimal("0E-7")) == "0"
    assert format_decimal(Decimal("-12.340")) == "-12.34"


def test_average_is_rounded_half_even_to_18_places() -> None:
    assert divide(Decimal(1), 3) == Decimal("0.333333333333333333")
    assert divide(Decimal(2), 3) == Decimal("0.666666666666666667")
    assert divide(Decimal("5E-18"), 10) == Decimal(0)  # 0.5e-18 rounds half to even: 0
    assert divide(Decimal("15E-18"), 10) == Decimal("2E-18")  # 1.5e-18 rounds to 2e-18
    assert divide(Decimal(10), 4) == Decimal("2.5")


def test_exact_arithmetic_raises_instead_of_rounding() -> None:
    with pytest.raises(Inexact):
        EXACT.add(Decimal("1e100"), Decimal("1e-100"))


@given(st.lists(in_range, max_size=50))
def test_sums_in_the_exact_context_equal_sums_with_unbounded_precision(
    values: list[Decimal],
) -> None:
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    with localcontext() as wide:
        wide.prec = 500
        assert total == sum(values, Decimal(0))
