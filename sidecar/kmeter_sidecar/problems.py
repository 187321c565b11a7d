"""The sidecar's own answers: RFC 9457 ``application/problem+json`` responses.

The sidecar answers by itself only when the request cannot or must not reach the app: a
malformed request (400), a missing or invalid subject (401), a request head too large (431) or
too slow (408), the app unreachable (502) or too slow to answer (504), and the proxy shutting
down (503); and when enforcement refuses: a subject over its quota or rate limit (429), quota
decisions unavailable with ``--decisions-fail closed`` (503). Everything else is the app's
answer, passed through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson

__all__ = ["TITLES", "problem_response"]

TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def problem_response(
    status: int,
    detail: str,
    *,
    close: bool,
    type_uri: str = "about:blank",
    members: Mapping[str, object] | None = None,
    headers: bytes = b"",
) -> bytes:
    """A complete HTTP/1.1 response with a problem+json body (``type`` is ``about:blank``
    unless given). ``members`` are extension members of the body; ``headers`` are complete
    header lines (``Name: value\\r\\n``) added to the head."""
    title = TITLES.get(status, "Error")
    document: dict[str, object] = {
        "type": type_uri,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if members:
        document.update(members)
    body = orjson.dumps(document)
    extra = headers + (b"Connection: close\r\n" if close else b"")
    if status == 401:
        extra += b'WWW-Authenticate: Bearer realm="kmeter"\r\n'
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, title.encode()),
            b"Content-Type: application/problem+json\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Cache-Control: no-store\r\n",
            extra,
            b"\r\n",
            body,
        )
    )
