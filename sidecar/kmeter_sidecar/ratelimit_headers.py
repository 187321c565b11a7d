"""``RateLimit-Policy`` and ``RateLimit`` header fields, as the IETF httpapi draft defines them.

Reference: *RateLimit header fields for HTTP*, draft-ietf-httpapi-ratelimit-headers-11
(23 May 2026; https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/). Both
fields are Structured Field Lists (RFC 9651) of items whose value is the policy's name, a
String, with parameters:

* ``RateLimit-Policy: "free-tier";q=100;w=86400`` — ``q`` the quota (a non-negative Integer, in
  quota units: requests unless ``qu`` says otherwise), ``w`` the window in seconds;
* ``RateLimit: "free-tier";r=0;t=3600`` — ``r`` the quota still available, ``t`` the seconds
  within which the client can use no more than ``r`` (the "effective window").

How kmeter fills them (docs/quotas.md, "Enforcement at the sidecar"):

* a usage quota is the item ``"<quota>"``: ``q`` its limit for the subject, ``w`` the length of
  the current period in seconds; ``r`` what is left in the period, ``t`` the seconds until the
  period ends. Integers are required, so a fractional limit or remainder is rounded *down*.
  A quota whose Meter does not count requests (tokens, bytes, ...) gets the vendor parameter
  ``kmeter-meter="<meter>"``: its units are the Meter's, and the draft's registry of quota
  units (``qu``) has no entry for them;
* a rate limit is the item ``"<quota>/rate"`` (``/`` cannot occur in a Quota's name):
  ``q=requests;w=per`` and the vendor parameter ``kmeter-burst``; ``r`` the whole tokens in
  the subject's bucket, ``t`` the seconds until the next token — within that time the client
  can indeed send no more than ``r``.

No partition key (``pk``) is sent: the partition is the subject, which the client knows, and
the draft advises against keys that carry identifying information.

The 429 body uses the draft's problem type ``quota-exceeded`` with its ``violated-policies``
member (section 5.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

__all__ = [
    "DRAFT",
    "QUOTA_EXCEEDED",
    "delay_seconds",
    "header_fields",
    "policy_item",
    "service_item",
    "sf_string",
]

DRAFT: Final = "draft-ietf-httpapi-ratelimit-headers-11"
QUOTA_EXCEEDED: Final = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The draft's problem type for a request refused by a quota policy (section 5.1)."""


def sf_string(text: str) -> str:
    """``text`` as a Structured Field String (RFC 9651 section 3.3.3): quoted, with ``"`` and
    ``\\`` escaped; ValueError for characters a String cannot hold (outside printable ASCII)."""
    if not all(" " <= char <= "~" for char in text):
        raise ValueError(f"{text!r} cannot be a structured-field string (printable ASCII only)")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_item(name: str, quota: int, window: int, extra: str = "") -> str:
    """One item of ``RateLimit-Policy``: ``name`` is already an sf-string; ``extra`` holds
    further parameters, each starting with ``;``."""
    return f"{name};q={quota};w={window}{extra}"


def service_item(name: str, remaining: int, reset: int) -> str:
    """One item of ``RateLimit``: ``name`` is already an sf-string."""
    return f"{name};r={remaining};t={reset}"


def header_fields(policies: Sequence[str], limits: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """The two header fields (name, value) for these items; none when there are no items."""
    if not policies:
        return []
    return [
        (b"RateLimit-Policy", ", ".join(policies).encode()),
        (b"RateLimit", ", ".join(limits).encode()),
    ]


def delay_seconds(seconds: float, *, minimum: int = 0) -> int:
    """Seconds rounded up to a whole number (``delay-seconds``), at least ``minimum``."""
    return max(minimum, math.ceil(seconds))
