"""The app side of the proxy: pooled keep-alive connections and response parsing.

:class:`UpstreamPool` keeps idle HTTP/1.1 connections to the app (LIFO, so the warmest socket is
reused and surplus ones age out on the app's own idle timeout) and opens new ones with
``--upstream-connect-timeout``. A connection carries one exchange at a time — no pipelining
towards the app, so a slow response never delays another client's.

:class:`UpstreamConnection` parses the app's responses with ``httptools`` (llhttp) to learn the
status, the headers (hop-by-hop removed, see :mod:`kmeter_sidecar.headers`), and where the body
ends, and writes to the client as it goes: the body is never collected, only shown to the value
reader. Framing towards the client is the proxy's own: a ``Content-Length`` body is passed as
is; a chunked or close-delimited body is re-chunked (or, for an HTTP/1.0 client, sent
close-delimited). Informational ``1xx`` heads (``100 Continue``) are passed on; after a ``101``
both connections become a raw byte tunnel (WebSocket), and bytes are copied verbatim.

Caveats, by design:

* llhttp cannot be told that a response answers ``HEAD``; the connection finishes the exchange
  at the head and starts a fresh parser for the next response.
* A request whose reused pooled connection turns out to be closed by the app (the keep-alive
  race: the app closed it just as the request went out) is retried once on a new connection —
  only when nothing of the response arrived and the request had no body, so nothing is sent
  twice that could matter.
* Trailers of chunked responses are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from kmeter_sidecar.headers import chunk_header, response_head

if TYPE_CHECKING:
    from kmeter_sidecar.proxy import ClientConnection, Exchange

__all__ = ["UpstreamConnection", "UpstreamPool"]

log = logging.getLogger("kmeter_sidecar.upstream")

# How the app delimits a response body.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


class _HeadDone(Exception):
    """Raised from the parser when the response to a HEAD request is complete at its head."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the app; see the module docstring."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.exchange: Exchange | None = None
        self.reused = False
        self.tunnel: asyncio.Transport | None = None
        self.paused_client = False
        self.corked: list[bytes] | None = None  # see send()
        self._reset_response()

    def _reset_response(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.mode = NO_BODY
        self.chunk_out = False
        self.got_response = False
        self.keep_alive = True

    # --- attaching an exchange ------------------------------------------------------------

    def attach(self, client: ClientConnection, exchange: Exchange, *, reused: bool) -> None:
        """Send the exchange's request head and the body received so far."""
        self.client = client
        self.exchange = exchange
        self.reused = reused
        self._reset_response()
        exchange.upstream = self
        assert self.transport is not None
        if client.writing_paused:  # the client is not reading: nothing more from the app yet
            self.transport.pause_reading()
            self.paused_client = True
        pending = exchange.pending
        if pending:
            self.send(exchange.head, *pending)
            pending.clear()
            exchange.pending_size = 0
            client.buffer_drained()
        else:
            self.send(exchange.head)
        exchange.sent_at = client.sidecar.now()

    def send(self, *data: bytes) -> None:
        """Write to the app. While the client's data is being parsed, the writes are held back
        and leave together when it is done (:meth:`uncork`, called by the client): a request
        head and its body that arrived in one read go out in one system call."""
        if self.corked is not None:
            self.corked.extend(data)
            return
        client = self.client
        if client is not None and client.feeding:
            self.corked = list(data)
            client.corked_upstreams.append(self)
            return
        transport = self.transport
        if transport is None:
            return
        if len(data) == 1:
            transport.write(data[0])
        else:
            transport.writelines(data)

    def uncork(self) -> None:
        pending, self.corked = self.corked, None
        transport = self.transport
        # Closed meanwhile (the exchange was abandoned): what was held back has no reader.
        if pending and transport is not None and not transport.is_closing():
            transport.writelines(pending)

    def detach(self) -> None:
        self.client = None
        self.exchange = None

    def close(self) -> None:
        self.detach()
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            return
        client, exchange = self.client, self.exchange
        self.detach()
        if client is None or exchange is None or exchange.finished:
            return
        if not self.got_response:
            client.upstream_lost(exchange, retry=self.reused and exchange.retryable())
        elif self.mode == UNTIL_CLOSE:
            if self.chunk_out:  # re-chunked for an HTTP/1.1 client: the app's close ends it
                client.write(b"0\r\n\r\n")
            client.response_complete(exchange, reusable=False)
        else:
            client.upstream_broke(exchange)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.exchange is None:  # bytes nobody asked for: this connection is unusable
            if self.transport is not None:
                self.transport.close()
            return
        client = self.client
        try:
            if client is None:
                self.parser.feed_data(data)
            else:
                client.cork()  # the response parts this data completes leave in one write
                try:
                    self.parser.feed_data(data)
                finally:
                    client.uncork()  # before any error handling below writes or closes
        except HttpParserUpgrade as upgrade:
            self._switch_protocols(data[upgrade.args[0] :])
        except HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadDone):
                self.parser = HttpResponseParser(self)
            else:
                raise
        except HttpParserError as error:
            self._garbage(error)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.client is not None:
            self.client.pause_for_upstream()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.client is not None:
            self.client.resume_for_upstream()

    # --- httptools callbacks --------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange, client = self.exchange, self.client
        assert exchange is not None
        assert client is not None
        status = self.parser.get_status_code()
        self.got_response = True
        if status < 200 and status != 101:
            client.informational(response_head(status, self.reason, self.headers, chunked=False))
            self.headers = []
            self.reason = b""
            return
        self.keep_alive = self.parser.should_keep_alive()
        mode, content_type, content_encoding, upgrade = _scan(self.headers)
        if exchange.is_head or status in (204, 304) or status == 101:
            mode = NO_BODY
        self.mode = mode
        client.response_started(exchange, status, content_type, content_encoding)
        http11 = exchange.http11
        self.chunk_out = chunk_out = mode == CHUNKED or (mode == UNTIL_CLOSE and http11)
        close = client.must_close(exchange) or (mode == UNTIL_CLOSE and not http11)
        if status == 101 and upgrade is not None and exchange.upgrade is not None:
            head = response_head(status, self.reason, self.headers, chunked=False, upgrade=upgrade)
        else:
            if close:
                client.closing_after(exchange)
            connection = b"close" if close else None if http11 else b"keep-alive"
            head = response_head(
                status, self.reason, self.headers, chunked=chunk_out, connection=connection
            )
        client.write(head)
        if exchange.is_head and status >= 200:
            client.response_complete(exchange, reusable=self.keep_alive and exchange.request_done)
            self._reset_response()
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        client, exchange = self.client, self.exchange
        if client is None or exchange is None:
            return
        exchange.response_bytes += len(body)
        reader = exchange.reader
        if reader is not None:
            reader.feed(body)
        if self.chunk_out:
            client.writelines((chunk_header(len(body)), body, b"\r\n"))
        else:
            client.write(body)

    def on_message_complete(self) -> None:
        client, exchange = self.client, self.exchange
        if client is None or exchange is None or not self.got_response:
            return
        status = self.parser.get_status_code()
        if status < 200 or status == 101:
            return  # an informational head (its message ends here); or the switch below
        if self.chunk_out:
            client.write(b"0\r\n\r\n")
        client.response_complete(exchange, reusable=self.keep_alive and exchange.request_done)

    # --- special cases --------------------------------------------------------------------

    def _switch_protocols(self, rest: bytes) -> None:
        client, exchange = self.client, self.exchange
        if client is None or exchange is None:
            self.close()
            return
        if self.parser.get_status_code() != 101 or exchange.upgrade is None:
            self._garbage(HttpParserError("an upgrade the request did not ask for"))
            return
        client_transport = client.start_tunnel(exchange, self)
        if client_transport is None:
            self.close()
            return
        self.tunnel = client_transport
        self.detach()
        if rest:
            client_transport.write(rest)

    def _garbage(self, error: Exception) -> None:
        client, exchange = self.client, self.exchange
        log.warning("the app sent an invalid HTTP response: %s", error)
        self.close()
        if client is not None and exchange is not None and not exchange.finished:
            if self.got_response:
                client.upstream_broke(exchange)
            else:
                client.upstream_lost(exchange, retry=False)


def _scan(
    headers: list[tuple[bytes, bytes]],
) -> tuple[int, bytes | None, bytes | None, bytes | None]:
    """(body mode, Content-Type, Content-Encoding, Upgrade) of a response head."""
    content_type = content_encoding = upgrade = None
    mode = UNTIL_CLOSE
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            if mode == UNTIL_CLOSE:
                mode = LENGTH
        elif lower == b"transfer-encoding":
            mode = CHUNKED if value.lower().rstrip().endswith(b"chunked") else UNTIL_CLOSE
        elif lower == b"content-type":
            content_type = value
        elif lower == b"content-encoding":
            content_encoding = value
        elif lower == b"upgrade":
            upgrade = value
    return mode, content_type, content_encoding, upgrade


class UpstreamPool:
    """Idle keep-alive connections to the app, and new ones on demand."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        max_idle: int = 256,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self._connecting: set[asyncio.Task[None]] = set()

    def acquire(self, client: ClientConnection, exchange: Exchange, *, fresh: bool = False) -> None:
        """Attach the exchange to an idle connection now, or to a new one when it is open."""
        idle = self.idle
        while idle and not fresh:
            connection = idle.pop()
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                connection.attach(client, exchange, reused=True)
                return
        task = asyncio.get_running_loop().create_task(self._open(client, exchange))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open(self, client: ClientConnection, exchange: Exchange) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            client.upstream_unreachable(exchange, error)
            return
        if exchange.finished or client.transport is None:
            self.release(connection)
            return
        connection.attach(client, exchange, reused=False)

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool after a complete exchange, or closed when the pool is full."""
        connection.detach()
        transport = connection.transport
        if transport is None or transport.is_closing():
            return
        if len(self.idle) >= self.max_idle:
            transport.close()
        else:
            self.idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
        for task in self._connecting:
            task.cancel()
