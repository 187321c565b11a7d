"""JSONPath for valueProperty and groupBy: grammar, extraction, value conversion."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kmeter.core.exactjson import loads
from kmeter.core.jsonpath import (
    MISSING,
    PATH_PATTERN,
    ExtractionError,
    JSONPathError,
    compile_path,
    distinct_at,
    extract,
    label_at,
    number_at,
    to_label,
)

PATTERN = re.compile(PATH_PATTERN)


@pytest.mark.parametrize(
    ("expression", "segments"),
    [
        ("$.usage.total_tokens", ("usage", "total_tokens")),
        ("$.a[0].b", ("a", 0, "b")),
        ("$['key with space']", ("key with space",)),
        ('$["x"]', ("x",)),
        ("$.items[-1]", ("items", -1)),
        ("$[ 'a' ][ 2 ]", ("a", 2)),
        ("$['it\\'s']", ("it's",)),
        ('$["say \\"hi\\""]', ('say "hi"',)),
        ("$['\\u00e9t\\u00e9']", ("été",)),
        ("$['\\uD83D\\uDE00']", ("😀",)),
        ("$['a.b']", ("a.b",)),
        ("$._private", ("_private",)),
    ],
)
def test_the_paths_meter_authors_write_compile(expression: str, segments: tuple[Any]) -> None:
    assert compile_path(expression).segments == segments
    assert PATTERN.fullmatch(expression)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("usage.tokens", "must start with $"),
        ("$", "must select a property below $"),
        ("$.a..b", "recursive descent (..) is not supported"),
        ("$..b", "recursive descent (..) is not supported"),
        ("$.a.*", "wildcards (.*) are not supported"),
        ("$.a[*]", "wildcards ([*]) are not supported"),
        ("$.a[?@.b]", "filters ([?...]) are not supported"),
        ("$.a[0:2]", "slices ([a:b]) are not supported"),
        ("$.a[:2]", "slices ([a:b]) are not supported"),
        ("$.a[0,1]", "unions ([a,b]) are not supported"),
        ("$.a[01]", "index 01 has a leading zero"),
        ("$.a[-0]", "index -0 has a leading zero"),
        ("$.a[", "unterminated ["),
        ("$['a", "unterminated quoted name (missing ')"),
        ("$['a\\x']", "unknown escape \\x"),
        ("$['\\u12']", "\\u must be followed by four hex digits"),
        ("$.my-key", "expected . or [ but found '-'"),
        ("$.1abc", "write other names in brackets"),
        ("$.", "a name must follow the dot"),
        ("$.a b", "expected . or [ but found ' '"),
        ("$['a\tb']", "control characters must be escaped"),
    ],
)
def test_unsupported_or_invalid_paths_are_refused_with_a_reason(
    expression: str, reason: str
) -> None:
    with pytest.raises(JSONPathError) as raised:
        compile_path(expression)
    assert reason in raised.value.reason
    assert expression in str(raised.value)
    assert not PATTERN.fullmatch(expression)


alphabet = st.sampled_from([*list("$.[]'\"\\ab_0123-*?:, \tu"), "\\u0041", "\\'", "\n"])


@settings(max_examples=1000)
@given(st.lists(alphabet, max_size=14).map("".join))
def test_the_documented_pattern_accepts_exactly_what_compile_accepts(text: str) -> None:
    try:
        compile_path(text)
    except JSONPathError:
        accepted = False
    else:
        accepted = True
    assert bool(PATTERN.fullmatch(text)) == accepted


def render(segments: list[str | int]) -> str:
    """A path expression for segments, choosing dot or bracket notation."""
    parts = ["$"]
    for segment in segments:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", segment):
            parts.append(f".{segment}")
        else:
            escaped = orjson.dumps(segment).decode()  # JSON escapes are valid path escapes
            parts.append(f"[{escaped}]")
    return "".join(parts)


keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=5) | st.sampled_from(
    ["a", "b", "usage", "0"]
)
segment_lists = st.lists(keys | st.integers(-3, 3), min_size=1, max_size=4)


@given(segment_lists)
def test_any_rendered_path_compiles_back_to_its_segments(segments: list[str | int]) -> None:
    expression = render(segments)
    assert compile_path(expression).segments == tuple(segments)
    assert PATTERN.fullmatch(expression)


documents = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "usage", "0", ""]), children, max_size=4)
    ),
    max_leaves=15,
)


def oracle_extract(document: Any, segments: list[str | int]) -> Any:
    """Plain recursion: a name picks an object member, an index an array item."""
    if not segments:
        return document
    head, *rest = segments
    if isinstance(head, str):
        if isinstance(document, dict) and head in document:
            return oracle_extract(document[head], rest)
        return MISSING
    if isinstance(document, list) and -len(document) <= head < len(document):
        return oracle_extract(document[head], rest)
    return MISSING


@given(documents, segment_lists)
def test_extraction_agrees_with_a_plain_recursive_walk(
    document: Any, segments: list[str | int]
) -> None:
    path = compile_path(render(segments))
    expected = oracle_extract(document, segments)
    assert extract(path, document) == expected or (
        expected is MISSING and extract(path, document) is MISSING
    )
    assert path.get(document) == extract(path, document) or (
        extract(path, document) is MISSING and path.get(document) is MISSING
    )


def test_an_index_never_selects_an_object_member_and_a_name_never_an_array_item() -> None:
    assert extract(compile_path("$[0]"), {"0": 1}) is MISSING
    assert extract(compile_path("$['0']"), [1]) is MISSING
    assert extract(compile_path("$['0']"), {"0": 1}) == 1


def test_a_negative_index_counts_from_the_end() -> None:
    data = {"items": [{"n": 1}, {"n": 2}, {"n": 3}]}
    assert extract(compile_path("$.items[-1].n"), data) == 3
    assert extract(compile_path("$.items[-3].n"), data) == 1
    assert extract(compile_path("$.items[-4].n"), data) is MISSING
    assert extract(compile_path("$.items[3].n"), data) is MISSING


def test_missing_is_not_null() -> None:
    path = compile_path("$.a")
    assert extract(path, {"a": None}) is None
    assert extract(path, {}) is MISSING
    assert extract(path, None) is MISSING


# --- values -------------------------------------------------------------------------------------

TOKENS = compile_path("$.usage.total_tokens")


def test_a_boolean_value_is_refused_with_the_path_and_a_reason() -> None:
    with pytest.raises(ExtractionError) as raised:
        number_at(TOKENS, {"usage": {"total_tokens": True}})
    assert (
        str(raised.value) == "$.usage.total_tokens: expected a number or numeric string, got true"
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "missing: expected a number or numeric string"),
        (None, "missing: expected a number or numeric string"),
        ({"usage": {"total_tokens": None}}, "expected a number or numeric string, got null"),
        ({"usage": {"total_tokens": "many"}}, 'expected a number or numeric string, got "many"'),
        ({"usage": {"total_tokens": [1]}}, "expected a number or numeric string, got [1]"),
        ({"usage": {"total_tokens": {"n": 1}}}, 'expected a number or numeric string, got {"n":1}'),
        ({"usage": 5}, "missing: expected a number or numeric string"),
    ],
)
def test_values_that_are_not_numbers_are_refused(data: Any, reason: str) -> None:
    with pytest.raises(ExtractionError) as raised:
        number_at(TOKENS, data)
    assert raised.value.path == "$.usage.total_tokens"
    assert raised.value.reason == reason


def test_numbers_and_numeric_strings_become_exact_decimals() -> None:
    data = loads(b'{"usage": {"total_tokens": 0.1, "cost": "12.50", "big": 123456789012345678}}')
    assert number_at(TOKENS, data) == Decimal("0.1")
    assert number_at(compile_path("$.usage.cost"), data) == Decimal("12.50")
    assert number_at(compile_path("$.usage.big"), data) == 123456789012345678


def test_group_labels_are_text_and_missing_or_null_is_the_none_group() -> None:
    model = compile_path("$.model")
    assert label_at(model, {"model": "gpt-4o"}) == "gpt-4o"
    assert label_at(model, {"model": 4}) == "4"
    assert label_at(model, {"model": 1.50}) == "1.5"
    assert label_at(model, {"model": True}) == "true"
    assert label_at(model, {"model": None}) is None
    assert label_at(model, {}) is None
    assert label_at(model, None) is None
    with pytest.raises(ExtractionError, match=r"^\$\.model: expected a string, number or boolean"):
        label_at(model, {"model": {"name": "x"}})


@given(
    st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.floats(allow_nan=False, allow_infinity=False)
)
def test_equal_numbers_give_equal_labels(number: int | Decimal | float) -> None:
    exact = Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
    label = to_label(number)
    assert label is not None
    assert Decimal(label) == exact
    assume(exact.is_finite())
    sign, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)
    scaled = Decimal((sign, (*digits, 0), exponent - 1))  # the same number, one more zero
    assert to_label(scaled) == label


def test_a_unique_count_value_is_text_and_missing_is_refused() -> None:
    user = compile_path("$.user")
    assert distinct_at(user, {"user": "u1"}) == "u1"
    assert distinct_at(user, {"user": 7}) == "7"
    with pytest.raises(ExtractionError, match=r"^\$\.user: missing"):
        distinct_at(user, {})
    with pytest.raises(ExtractionError, match=r"^\$\.user: is null"):
        distinct_at(user, {"user": None})
