"""RateLimit-Policy and RateLimit fields as draft-ietf-httpapi-ratelimit-headers-11 writes them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmeter_sidecar.ratelimit_headers import (
    delay_seconds,
    header_fields,
    policy_item,
    service_item,
    sf_string,
)

# RFC 9651: sf-string = DQUOTE *( unescaped / "%" / escaped ) DQUOTE, escaped = "\" ( DQUOTE / "\" )
SF_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"')
KEY = r"[a-z*][a-z0-9_\-.*]*"
ITEM = re.compile(rf"{SF_STRING.pattern}(?:;{KEY}=(?:[0-9]{{1,15}}|{SF_STRING.pattern}))*")


def unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_any_printable_text_becomes_a_structured_field_string_that_reads_back(text: str) -> None:
    quoted = sf_string(text)
    assert SF_STRING.fullmatch(quoted)
    assert unquote(quoted) == text


@pytest.mark.parametrize("text", ["caf\u00e9", "tab\there", "new\nline"])
def test_text_a_string_cannot_hold_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        sf_string(text)


def test_the_fields_are_lists_of_items_in_the_drafts_syntax() -> None:
    policies = [
        policy_item(sf_string("free-tier"), 100, 86400),
        policy_item(sf_string("free-tier/rate"), 10, 1, ";kmeter-burst=20"),
    ]
    limits = [service_item(sf_string("free-tier"), 0, 3600), service_item('"free-tier/rate"', 3, 1)]
    fields = dict(header_fields(policies, limits))
    assert fields[b"RateLimit-Policy"] == (
        b'"free-tier";q=100;w=86400, "free-tier/rate";q=10;w=1;kmeter-burst=20'
    )
    assert fields[b"RateLimit"] == b'"free-tier";r=0;t=3600, "free-tier/rate";r=3;t=1'
    for value in fields.values():
        for item in value.decode().split(", "):
            assert ITEM.fullmatch(item), item


def test_no_items_means_no_fields() -> None:
    assert header_fields([], []) == []


@pytest.mark.parametrize(
    ("seconds", "minimum", "expected"),
    [(0.0, 0, 0), (0.0, 1, 1), (0.001, 1, 1), (1.0, 1, 1), (1.2, 0, 2), (3599.5, 1, 3600)],
)
def test_delays_round_up_to_whole_seconds(seconds: float, minimum: int, expected: int) -> None:
    assert delay_seconds(seconds, minimum=minimum) == expected
