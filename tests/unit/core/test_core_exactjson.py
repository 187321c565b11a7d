"""JSON with exact numbers: the fast (orjson) and slow (stdlib) paths agree and are exact."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter.core import exactjson


def as_decimal(value: Any) -> Decimal:
    """The value a decoded number stands for (float via its shortest repr)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    assert isinstance(value, int | Decimal), value
    return Decimal(value)


digits = st.text("0123456789", min_size=1, max_size=25)


@st.composite
def number_literals(draw: st.DrawFn) -> str:
    """JSON number texts: sign, integer part, optional fraction and exponent."""
    sign = draw(st.sampled_from(["", "-"]))
    integer = draw(digits).lstrip("0") or "0"
    fraction = draw(st.one_of(st.just(""), digits.map(lambda d: "." + d)))
    exponent = draw(
        st.one_of(
            st.just(""),
            st.tuples(
                st.sampled_from(["e", "E"]),
                st.sampled_from(["", "+", "-"]),
                st.integers(0, 400).map(str),
            ).map("".join),
        )
    )
    return sign + integer + fraction + exponent


@given(number_literals())
def test_every_decoded_number_is_exactly_the_value_of_its_text(literal: str) -> None:
    oracle = Decimal(literal)
    try:
        decoded = exactjson.loads(f'{{"v": {literal}, "w": [1, {literal}]}}')
    except exactjson.JSONDecodeError:
        pytest.fail(f"{literal} is valid JSON")
    assert as_decimal(decoded["v"]) == oracle
    assert as_decimal(decoded["w"][1]) == oracle
    assert as_decimal(exactjson.loads(literal)) == oracle  # a bare number as the document


@given(number_literals())
def test_the_slow_path_gives_the_same_python_values_as_the_fast_path(literal: str) -> None:
    plain = exactjson.loads(f'{{"v": {literal}}}')
    # A string that merely looks like a long number sends the document down the slow path.
    forced = exactjson.loads(f'{{"v": {literal}, "s": "x:12345678901234567890"}}')
    assert type(forced["v"]) is type(plain["v"])
    assert as_decimal(forced["v"]) == as_decimal(plain["v"])


def test_a_long_fraction_is_kept_exactly_where_orjson_would_round() -> None:
    raw = b'{"v": 0.10000000000000000001}'
    assert orjson.loads(raw)["v"] == 0.1  # what plain orjson does
    assert exactjson.loads(raw)["v"] == Decimal("0.10000000000000000001")


def test_sixteen_digits_with_an_exponent_are_kept_exactly() -> None:
    # 2**53 + 1: a double cannot hold it, and the mantissa is exactly 16 characters long.
    assert exactjson.loads(b"[9007199254740993e0]") == [Decimal(9007199254740993)]


def test_a_bare_number_document_is_exact_too() -> None:
    assert exactjson.loads(b" 6.1233223243299293E-10") == Decimal("6.1233223243299293E-10")
    assert exactjson.loads(b"0.5") == 0.5


def test_integers_beyond_64_bits_stay_exact() -> None:
    assert exactjson.loads(b"[18446744073709551617]") == [18446744073709551617]


def test_tiny_and_huge_exponents_are_not_flushed_to_zero_or_infinity() -> None:
    assert exactjson.loads(b"[1e-400, 1e400]") == [Decimal("1e-400"), Decimal("1e400")]


def test_short_numbers_stay_floats_equal_to_their_text() -> None:
    assert exactjson.loads(b"[0.1, 2.5e-3, 1.0, -0.0]") == [0.1, 2.5e-3, 1.0, -0.0]


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b"[Infinity]", b'{"a": -Infinity, "s": "x:12345678901234567890"}', b'"\\ud800"'],
)
def test_nan_infinity_and_lone_surrogates_are_refused(raw: bytes) -> None:
    with pytest.raises(exactjson.JSONDecodeError):
        exactjson.loads(raw)


def test_lone_surrogates_are_refused_on_the_slow_path_too() -> None:
    with pytest.raises(exactjson.JSONDecodeError):
        exactjson.loads(b'{"a": "\\ud800", "n": 0.10000000000000000001}')


def test_documents_nested_deeper_than_the_limit_are_refused() -> None:
    depth = exactjson.MAX_DEPTH + 1
    with pytest.raises(exactjson.JSONDecodeError, match="nested deeper"):
        exactjson.loads(b"[" * depth + b"]" * depth)
    fine = exactjson.MAX_DEPTH
    assert exactjson.nesting_depth(exactjson.loads(b"[" * fine + b"]" * fine)) == fine


def depth_by_recursion(value: Any) -> int:
    """The plain definition: one more than the deepest child, for arrays and objects."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max((depth_by_recursion(child) for child in value), default=0)
    return 0


nested_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=2),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=40,
)


@given(nested_values)
def test_nesting_depth_is_one_more_than_the_deepest_child(value: Any) -> None:
    assert exactjson.nesting_depth(value) == depth_by_recursion(value)


def test_invalid_json_gets_orjson_s_reason() -> None:
    with pytest.raises(exactjson.JSONDecodeError, match="line 1"):
        exactjson.loads(b'{"a": ')


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def normalized(value: Any) -> Any:
    """Numbers compared by value, containers recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        return ("number", as_decimal(value).normalize() if value else Decimal(0))
    if isinstance(value, list):
        return [normalized(item) for item in value]
    return {key: normalized(item) for key, item in value.items()}


@given(json_values)
def test_dumps_then_loads_gives_back_equal_values(value: Any) -> None:
    decoded = exactjson.loads(exactjson.dumps(value))
    assert normalized(decoded) == normalized(value)
    # ...and the stdlib, reading numbers as Decimals, agrees on what was written.
    oracle = json.loads(exactjson.dumps(value), parse_float=Decimal)
    assert normalized(decoded) == normalized(oracle)
