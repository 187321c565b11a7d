"""HTTP/1.1 heads as a proxy rewrites them: hop-by-hop headers out, framing and X-Forwarded-* in.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so a proxy
must not pass them on: ``Connection`` and every header it names, ``Keep-Alive``, ``TE``,
``Trailer``, ``Transfer-Encoding``, ``Upgrade``, and everything starting with ``Proxy-``
(``Proxy-Connection``, ``Proxy-Authorization``, ``Proxy-Authenticate``). Each side's framing is
the proxy's own: the parser gives the body de-chunked, and the proxy re-frames it for the other
side (``Transfer-Encoding: chunked`` when the length is not known in advance). ``Upgrade`` and
``Connection: upgrade`` are passed only for protocol upgrades (WebSocket), in the request that
asks and the ``101`` that accepts. Trailers of chunked messages are not forwarded.

Header names keep their case and values their bytes; only names are compared lower-cased.

``X-Forwarded-For`` gets the client's address appended (the previous hops are kept, as an
ingress sent them); ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set when absent
(``http`` and the request's ``Host``) and kept when a previous hop set them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "chunk_header",
    "connection_tokens",
    "is_hop_by_hop",
    "request_head",
    "response_head",
]

Headers = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})


def is_hop_by_hop(lower_name: bytes) -> bool:
    """Whether a (lower-case) header name is hop-by-hop by itself."""
    return lower_name in HOP_BY_HOP or lower_name.startswith(b"proxy-")


def connection_tokens(values: Iterable[bytes]) -> set[bytes]:
    """The lower-case option names listed in ``Connection`` header values."""
    tokens: set[bytes] = set()
    for value in values:
        for raw in value.split(b","):
            token = raw.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def _end_to_end(
    headers: Headers, want: bytes | None = None
) -> tuple[list[tuple[bytes, bytes, bytes]], bytes | None]:
    """(name, lower name, value) of the end-to-end headers, and the first value of ``want``."""
    kept: list[tuple[bytes, bytes, bytes]] = []
    named: list[bytes] = []
    found: bytes | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == want and found is None:
            found = value
        if lower == b"connection":
            named.append(value)
        elif not (lower in HOP_BY_HOP or lower.startswith(b"proxy-")):
            kept.append((name, lower, value))
    if named:
        extra = connection_tokens(named) - _CONNECTION_OPTIONS
        if extra:
            kept = [header for header in kept if header[1] not in extra]
    return kept, found


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    client_ip: bytes,
    chunked: bool,
    upgrade: bytes | None,
    default_host: bytes,
    want: bytes | None = None,
) -> tuple[bytes, bytes | None]:
    """The request head to send upstream (always HTTP/1.1, keep-alive) and the first value of
    header ``want`` (lower-case; the subject's header), found in the same pass.

    ``upgrade`` is the ``Upgrade`` value of a protocol-upgrade request, else None.
    """
    kept, found = _end_to_end(headers, want)
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    forwarded_for: bytes | None = None
    host: bytes | None = None
    has_proto = has_host = False
    for name, lower, value in kept:
        if lower == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            continue
        if lower == b"host":
            host = value
        elif lower == b"x-forwarded-proto":
            has_proto = True
        elif lower == b"x-forwarded-host":
            has_host = True
        lines += (name, b": ", value, b"\r\n")
    if host is None:
        host = default_host
        lines += (b"Host: ", host, b"\r\n")
    lines += (
        b"X-Forwarded-For: ",
        client_ip if forwarded_for is None else forwarded_for + b", " + client_ip,
        b"\r\n",
    )
    if not has_proto:
        lines.append(b"X-Forwarded-Proto: http\r\n")
    if not has_host:
        lines += (b"X-Forwarded-Host: ", host, b"\r\n")
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), found


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    chunked: bool,
    connection: bytes | None = None,
    upgrade: bytes | None = None,
) -> bytes:
    """The response head for the client: end-to-end headers of the app's response, plus the
    proxy's framing (``chunked``), a ``Connection`` header when given (``close`` when the proxy
    closes after it, ``keep-alive`` for HTTP/1.0 clients), and ``Connection: upgrade`` /
    ``Upgrade`` for a 101."""
    kept, _ = _end_to_end(headers)
    lines = [b"HTTP/1.1 %d " % status, reason or b"-", b"\r\n"]
    for name, _, value in kept:
        lines += (name, b": ", value, b"\r\n")
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    elif connection is not None:
        lines += (b"Connection: ", connection, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk_header(size: int) -> bytes:
    """The line that starts a chunk of ``size`` bytes in chunked transfer coding."""
    return b"%x\r\n" % size
