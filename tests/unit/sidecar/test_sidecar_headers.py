"""Hop-by-hop headers, framing and X-Forwarded-* as the proxy rewrites heads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kmeter_sidecar.headers import connection_tokens, is_hop_by_hop, request_head, response_head


def lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_hop_by_hop_headers_and_those_connection_names_are_not_forwarded() -> None:
    head, _ = request_head(
        b"GET",
        b"/v1/x?y=1",
        [
            (b"Host", b"api.example"),
            (b"Connection", b"keep-alive, X-Secret-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Secret-Hop", b"1"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Proxy-Authorization", b"Basic abc"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Upgrade", b"h2c"),
            (b"Accept", b"*/*"),
        ],
        client_ip=b"10.0.0.9",
        chunked=False,
        upgrade=None,
        default_host=b"127.0.0.1:8080",
    )
    assert lines(head) == [
        b"GET /v1/x?y=1 HTTP/1.1",
        b"Host: api.example",
        b"Accept: */*",
        b"X-Forwarded-For: 10.0.0.9",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: api.example",
    ]


def test_x_forwarded_for_is_appended_and_earlier_proto_and_host_are_kept() -> None:
    head, _ = request_head(
        b"POST",
        b"/",
        [
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"public.example"),
        ],
        client_ip=b"10.0.0.9",
        chunked=True,
        upgrade=None,
        default_host=b"127.0.0.1:8080",
    )
    assert lines(head) == [
        b"POST / HTTP/1.1",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: public.example",
        b"Host: 127.0.0.1:8080",
        b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9",
        b"Transfer-Encoding: chunked",
    ]


def test_a_websocket_upgrade_keeps_its_upgrade_header_and_the_subject_header_is_found() -> None:
    head, found = request_head(
        b"GET",
        b"/ws",
        [
            (b"Host", b"h"),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"X-Customer-Id", b"acme"),
            (b"X-Customer-Id", b"second"),
        ],
        client_ip=b"::1",
        chunked=False,
        upgrade=b"websocket",
        default_host=b"x",
        want=b"x-customer-id",
    )
    assert found == b"acme"
    assert lines(head)[-2:] == [b"Connection: upgrade", b"Upgrade: websocket"]


def test_response_heads_get_the_proxys_framing_and_connection_header() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
    ]
    assert lines(response_head(200, b"OK", upstream, chunked=True)) == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/event-stream",
        b"Transfer-Encoding: chunked",
    ]
    assert lines(response_head(200, b"", upstream, chunked=False, connection=b"close")) == [
        b"HTTP/1.1 200 -",
        b"Content-Type: text/event-stream",
        b"Connection: close",
    ]
    switching = response_head(
        101, b"Switching Protocols", [(b"Upgrade", b"websocket")], chunked=False,
        upgrade=b"websocket",
    )  # fmt: skip
    assert lines(switching)[-2:] == [b"Connection: upgrade", b"Upgrade: websocket"]


header_names = st.from_regex(rb"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
header_values = st.from_regex(rb"[ -~]{0,20}", fullmatch=True).map(bytes.strip)


@given(st.lists(st.tuples(header_names, header_values), max_size=12))
def test_no_hop_by_hop_header_ever_survives_and_every_end_to_end_one_does(
    headers: list[tuple[bytes, bytes]],
) -> None:
    named = connection_tokens(v for n, v in headers if n.lower() == b"connection")
    head = response_head(200, b"OK", headers, chunked=False)
    forwarded = [tuple(line.split(b": ", 1)) for line in lines(head)[1:]]
    expected = [
        (name, value)
        for name, value in headers
        if not is_hop_by_hop(name.lower()) and name.lower() not in named
    ]
    assert forwarded == expected
