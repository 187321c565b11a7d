"""The client side of the proxy: an ``asyncio.Protocol`` per connection, parsing with httptools.

Why this shape (DESIGN "Performance notes"): an aiohttp server plus client costs ~0.27 core-s
per 1,000 requests; protocol callbacks with llhttp parsing and uvloop cost ~0.05. Nothing here
awaits on the request path: callbacks parse, rewrite the head, write to the other socket and
return. The only coroutine is opening a new connection to the app (see :mod:`.upstream`).

One :class:`Exchange` per request. Its life:

1. ``on_message_begin`` … ``on_headers_complete``: the head is parsed and checked (size, method),
   the subject resolved (:mod:`.subject`; a refusal becomes a canned 401/400), and the head for
   the app built (:mod:`.headers`).
2. The exchange is attached to a pooled app connection; body bytes go straight through, re-framed
   when chunked. Until attached, up to :data:`BUFFER_LIMIT` body bytes wait in the exchange and
   reading from the client pauses past that.
3. The app's response streams back (:class:`.upstream.UpstreamConnection`), shown to the value
   reader on the way (:mod:`.usage`, :mod:`.sse`).
4. At its end — complete, failed, or cut short by either side — the exchange is *finished*
   exactly once: one usage event, one count in the metrics.

**Backpressure both ways**: when the app's socket buffer is full, reading from the client pauses;
when the client's is full, reading from the app pauses. A 1 GB upload or download never holds
more than the socket buffers and one read (256 KiB) in memory.

**Pipelining** is allowed (requests are answered in order): a request that arrives while another
is answered waits, fully parsed, and reading pauses until its turn.

**Timeouts** are checked by one sweeper for all connections (``Sidecar.sweep``) rather than
per-request timers: a head not complete within ``--header-timeout`` gets 408; an idle
keep-alive connection is closed after ``--keepalive-timeout``; an app that has not answered
within ``--upstream-timeout`` gets the client a 504. Their resolution is the sweep interval.

**Which requests yield an event**: every request whose head was valid and whose subject was
accepted — also when the sidecar answers it itself with 502/504, or the client goes away before
the answer (status 499, ``aborted``). Requests refused before the app (400, 401, 408, 431) yield
none: they have no valid subject or head to bill. Nor do requests refused by quota enforcement
(429, or 503 when failing closed; :mod:`.quotas`): they never reach the app, so they are not
billable; they are counted in ``kmeter_sidecar_requests_refused_total{reason}``. Such a refusal
keeps the connection open when the request has no body (nothing left to discard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from kmeter_sidecar.headers import chunk_header, request_head
from kmeter_sidecar.problems import problem_response
from kmeter_sidecar.subject import SubjectRefused
from kmeter_sidecar.usage import ValueReader, route_of, value_reader

if TYPE_CHECKING:
    from kmeter_sidecar.server import Sidecar
    from kmeter_sidecar.upstream import UpstreamConnection

__all__ = ["BUFFER_LIMIT", "ClientConnection", "Exchange"]

log = logging.getLogger("kmeter_sidecar.proxy")

BUFFER_LIMIT: Final = 256 << 10
"""Body bytes held for a request that is not yet attached to an app connection."""
CLIENT_CLOSED: Final = 499  # nginx's "client closed request": the event of an abandoned request

_PAUSE_UPSTREAM, _PAUSE_BUFFER, _PAUSE_WAIT = 1, 2, 4


class _Refused(Exception):
    """Stops parsing: answer ``status`` with ``detail`` and close."""

    def __init__(self, status: int, detail: str, *, malformed: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.malformed = malformed


_VERSIONS: Final = frozenset({"1.1", "1.0"})


def _scan_request(headers: list[tuple[bytes, bytes]], http11: bool) -> tuple[bool, bytes | None]:
    """(chunked, the Upgrade value) of a request head; raises :class:`_Refused` for what
    HTTP/1.1 does not allow (RFC 9112): no ``Host`` or two, and transfer codings the sidecar
    would lose — it re-frames bodies, so only ``chunked`` can pass."""
    chunked = False
    upgrade: bytes | None = None
    hosts = 0
    for name, value in headers:
        size = len(name)
        if size == 17 and name.lower() == b"transfer-encoding":
            chunked = True
            if value.strip().lower() != b"chunked":
                detail = "transfer codings other than chunked are not supported"
                raise _Refused(501, detail, malformed=True)
        elif size == 7 and name.lower() == b"upgrade":
            upgrade = value
        elif size == 4 and name.lower() == b"host":
            hosts += 1
    if hosts > 1 or (hosts == 0 and http11):
        raise _Refused(400, "an HTTP/1.1 request needs exactly one Host", malformed=True)
    return chunked, upgrade


class Exchange:
    """One request and its response; see the module docstring."""

    __slots__ = (
        "canned",
        "close",
        "finished",
        "head",
        "http11",
        "is_head",
        "method",
        "pending",
        "pending_size",
        "rate_headers",
        "reader",
        "request_bytes",
        "request_chunked",
        "request_done",
        "response_bytes",
        "route",
        "sent_at",
        "started",
        "started_wall",
        "status",
        "subject",
        "upgrade",
        "upstream",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.started_wall = time.time()
        self.method = ""
        self.route = ""
        self.subject = ""
        self.http11 = True
        self.is_head = False
        self.head = b""
        self.canned: bytes | None = None
        self.close = False  # the client asked to close after this exchange
        self.upgrade: bytes | None = None
        self.request_chunked = False
        self.request_done = False
        self.request_bytes = 0
        self.response_bytes = 0
        self.status = 0
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.upstream: UpstreamConnection | None = None
        self.reader: ValueReader | None = None
        self.rate_headers: list[tuple[bytes, bytes]] | None = None  # RateLimit fields to add
        self.sent_at = 0.0
        self.finished = False

    def retryable(self) -> bool:
        """Safe to send again on a new connection: nothing of a body was sent."""
        return self.request_done and self.request_bytes == 0 and self.upgrade is None


class ClientConnection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.client_ip = b"unknown"
        self.current: Exchange | None = None  # being answered
        self.parsing: Exchange | None = None  # being received (may be current)
        self.waiting: list[Exchange] = []  # pipelined, fully parsed, not yet started
        self.in_head = False
        self.head_bytes = 0
        self.head_started = 0.0
        self.idle_since = 0.0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.paused = 0
        self.close_after = False
        self.tunnel: asyncio.Transport | None = None
        self.tunnel_pending = b""
        self.served_any = False
        self.corked: list[bytes] | None = None  # writes held back by cork()
        self.feeding = False  # in data_received: writes to the app are held back until its end
        self.corked_upstreams: list[UpstreamConnection] = []
        # The client's transport is above its high-water mark: an app connection attached
        # from now on starts paused (UpstreamConnection.attach), or a client that sends
        # requests but reads no answers would have each whole next response buffered here.
        self.writing_paused = False

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        self.idle_since = self.sidecar.now()
        self.sidecar.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        sidecar = self.sidecar
        sidecar.connections.discard(self)
        if sidecar.draining and not sidecar.connections:
            sidecar.all_closed.set()
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        current = self.current
        if current is not None and not current.finished:
            upstream = current.upstream
            if upstream is not None:
                upstream.close()
            self._finish(current, CLIENT_CLOSED if not current.status else current.status, True)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.in_head or self.parsing is None:
            self.head_bytes += len(data)
        self.feeding = True
        try:
            self._feed(data)
        finally:
            # What this data gave each app connection (a request head and its body, say)
            # leaves in one write: UpstreamConnection.send holds it back while feeding.
            self.feeding = False
            if self.corked_upstreams:
                for upstream in self.corked_upstreams:
                    upstream.uncork()
                self.corked_upstreams.clear()

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            # The upgrade request is complete; what follows belongs to the new protocol once
            # the app agrees (101). Until then nothing more is read from the client.
            self.tunnel_pending = data[upgrade.args[0] :]
            self._pause(_PAUSE_WAIT)
            return
        except HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, cause.detail, malformed=cause.malformed)
                return
            raise
        except HttpParserError as error:
            self._refuse(400, f"malformed HTTP request: {error}", malformed=True)
            return
        if self.in_head and self.head_bytes > self.sidecar.config.max_header_bytes:
            self._refuse(431, "the request head is larger than the sidecar accepts")

    def eof_received(self) -> bool | None:
        # The client closed its side (FIN): as nginx does, it has left — curl, aiohttp, httpx
        # and the openai client all close so. With an exchange in progress the connection is
        # aborted, not closed (a close would wait for the client to read what is buffered):
        # connection_lost then ends the exchange as cut short (499 or the status so far,
        # aborted) and closes its app connection, so an app streaming an answer to nobody
        # stops now. Pipelined requests not yet passed to the app are dropped unbilled, like
        # refused ones. Waiting for the answer instead would let a stream that hangs hold the
        # event, and the app its work, for as long as the app likes. (A client that sends a
        # request and half-closes on purpose, `nc -N`, gets no answer: the price of this.)
        current = self.current
        if current is not None and not current.finished and self.transport is not None:
            self.transport.abort()
        return None

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
            return
        current = self.current
        if current is not None and current.upstream is not None:
            transport = current.upstream.transport
            if transport is not None:
                transport.pause_reading()
                current.upstream.paused_client = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
            return
        current = self.current
        if current is not None and current.upstream is not None:
            transport = current.upstream.transport
            if transport is not None:
                transport.resume_reading()
                current.upstream.paused_client = False

    # --- httptools callbacks (request) ----------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_started = self.sidecar.now()
        self.url = b""
        self.headers = []
        self.parsing = Exchange(time.perf_counter())  # the loop's clock has 1 ms steps

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        exchange = self.parsing
        assert exchange is not None
        sidecar = self.sidecar
        config = sidecar.config
        parser = self.parser
        url, headers = self.url, self.headers
        if len(url) + sum(len(n) + len(v) + 4 for n, v in headers) > config.max_header_bytes:
            raise _Refused(431, "the request head is larger than the sidecar accepts")
        method = parser.get_method()
        if method == b"CONNECT":
            raise _Refused(400, "CONNECT is not supported: this is a reverse proxy")
        version = parser.get_http_version()
        if version not in _VERSIONS:
            raise _Refused(505, f"HTTP/{version} is not supported", malformed=True)
        exchange.method = method.decode("ascii")
        exchange.is_head = method == b"HEAD"
        exchange.http11 = version == "1.1"
        if not parser.should_keep_alive():
            exchange.close = True
        exchange.route = route_of(url)
        chunked, upgrade_value = _scan_request(headers, exchange.http11)
        exchange.request_chunked = chunked
        if parser.should_upgrade() and upgrade_value is not None:
            exchange.upgrade = upgrade_value
        head, subject_value = request_head(
            method,
            url,
            headers,
            client_ip=self.client_ip,
            chunked=chunked,
            upgrade=exchange.upgrade,
            default_host=sidecar.upstream_host_header,
            want=sidecar.subjects.header_key,
        )
        exchange.head = head
        try:
            exchange.subject = sidecar.subjects.resolve(subject_value, url)
        except SubjectRefused as refused:
            sidecar.metrics.rejected_subject.inc()
            exchange.canned = problem_response(refused.status, refused.detail, close=True)
            exchange.status = refused.status
            exchange.close = True
        else:
            if sidecar.quotas.engaged:
                self._enforce(exchange)
        if self.current is None:
            self._start(exchange)
        else:
            self.waiting.append(exchange)
            self._pause(_PAUSE_WAIT)

    def _enforce(self, exchange: Exchange) -> None:
        """Quotas and rate limits: a refused request is answered here and never reaches the
        app; an admitted one's response gets the RateLimit header fields."""
        sidecar = self.sidecar
        verdict = sidecar.quotas.check(exchange.subject)
        if verdict is None:
            return
        refusal = verdict.refusal
        if refusal is None:
            exchange.rate_headers = verdict.headers or None
            return
        sidecar.metrics.refused[refusal.reason].inc()
        if (
            exchange.request_chunked
            or exchange.upgrade is not None
            or not exchange.http11
            or any(
                len(name) == 14 and name.lower() == b"content-length" and value.strip() != b"0"
                for name, value in self.headers
            )
        ):
            exchange.close = True  # a body would have to be read and discarded: close instead
        exchange.canned = refusal.response(close=exchange.close)
        exchange.status = refusal.status

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.canned is not None:
            return
        exchange.request_bytes += len(body)
        upstream = exchange.upstream
        if upstream is not None and upstream.transport is not None:
            if exchange.request_chunked:
                upstream.send(chunk_header(len(body)), body, b"\r\n")
            else:
                upstream.send(body)
            return
        if exchange.request_chunked:
            exchange.pending += (chunk_header(len(body)), body, b"\r\n")
        else:
            exchange.pending.append(body)
        exchange.pending_size += len(body)
        if exchange.pending_size > BUFFER_LIMIT:
            self._pause(_PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        if exchange is None:
            return
        exchange.request_done = True
        if exchange.request_chunked and exchange.canned is None:
            upstream = exchange.upstream
            if upstream is not None and upstream.transport is not None:
                upstream.send(b"0\r\n\r\n")
            else:
                exchange.pending.append(b"0\r\n\r\n")

    # --- starting and finishing exchanges -------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        if exchange.canned is not None:
            self.write(exchange.canned)
            exchange.finished = True
            self.sidecar.metrics.count_status(exchange.status)
            if exchange.close:
                self._close()
            else:
                # a refusal of a request without a body keeps the connection; the next one
                # starts from the loop, not from here (pipelined refusals must not recurse)
                asyncio.get_running_loop().call_soon(self._next)
            return
        self.sidecar.pool.acquire(self, exchange)

    def _finish(self, exchange: Exchange, status: int, aborted: bool) -> None:
        """The single end of an exchange: its event and its count."""
        if exchange.finished:
            return
        exchange.finished = True
        exchange.status = status
        sidecar = self.sidecar
        sidecar.metrics.count_status(status)
        reader = exchange.reader
        values = None
        if reader is not None:
            values = reader.finish()
            if reader.too_large:
                sidecar.metrics.value_body_too_large.inc()
        sidecar.recorder.finished(exchange, values, aborted)

    def _next(self) -> None:
        """After an exchange: close, start the next pipelined one, or wait idle."""
        current, self.current = self.current, None
        self.served_any = True
        if self.close_after or self.sidecar.draining or (current is not None and current.close):
            self._close()
            return
        if self.waiting:
            exchange = self.waiting.pop(0)
            if not self.waiting:
                self._resume(_PAUSE_WAIT)
            self._start(exchange)
            return
        self.idle_since = self.sidecar.now()

    # --- called by the upstream connection ------------------------------------------------

    def cork(self) -> None:
        """Hold writes back until :meth:`uncork`. One ``data_received`` from the app usually
        holds a whole small response — head, body, end — which then leaves in one system
        call instead of two or three (system calls are most of the sidecar's CPU)."""
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        pending, self.corked = self.corked, None
        transport = self.transport
        if pending and transport is not None and not transport.is_closing():
            transport.writelines(pending)

    def write(self, data: bytes) -> None:
        if self.corked is not None:
            self.corked.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        if self.corked is not None:
            self.corked.extend(data)
        elif self.transport is not None:
            self.transport.writelines(data)

    def informational(self, head: bytes) -> None:
        self.write(head)

    def response_started(
        self,
        exchange: Exchange,
        status: int,
        content_type: bytes | None,
        content_encoding: bytes | None,
    ) -> None:
        exchange.status = status
        rate_headers = exchange.rate_headers
        if rate_headers is not None and exchange.upstream is not None:
            exchange.upstream.headers.extend(rate_headers)  # the head is built from these next
        config = self.sidecar.config
        if config.values:
            exchange.reader = value_reader(
                content_type, content_encoding, config.values, config.value_max_body
            )

    def must_close(self, exchange: Exchange) -> bool:
        """Whether the connection closes after this response (the client asked, the request
        body is not fully read, or the sidecar is shutting down)."""
        return (
            self.close_after
            or exchange.close
            or not exchange.request_done
            or self.sidecar.draining
            or exchange.upgrade is not None
        )

    def closing_after(self, exchange: Exchange) -> None:
        self.close_after = True

    def response_complete(self, exchange: Exchange, *, reusable: bool) -> None:
        self.uncork()  # the client has its response before the bookkeeping below
        upstream = exchange.upstream
        exchange.upstream = None
        if upstream is not None:
            if upstream.paused_client and upstream.transport is not None:
                upstream.transport.resume_reading()
                upstream.paused_client = False
            if reusable:
                self.sidecar.pool.release(upstream)
            else:
                upstream.close()
        self._finish(exchange, exchange.status, False)
        if not exchange.request_done:
            self.close_after = True
        self._resume(_PAUSE_UPSTREAM)
        self._next()

    def upstream_unreachable(self, exchange: Exchange, error: BaseException) -> None:
        sidecar = self.sidecar
        sidecar.metrics.upstream_connect.inc()
        reason = "timed out" if isinstance(error, TimeoutError) else str(error) or "refused"
        log.warning("cannot connect to the app at %s: %s", sidecar.config.upstream, reason)
        self._fail(exchange, 502, f"the app at {sidecar.config.upstream} is unreachable")

    def upstream_lost(self, exchange: Exchange, *, retry: bool) -> None:
        """The app's connection closed before any response."""
        if retry and self.transport is not None:
            exchange.upstream = None
            self.sidecar.pool.acquire(self, exchange, fresh=True)
            return
        self.sidecar.metrics.upstream_reset.inc()
        self._fail(exchange, 502, "the app closed the connection without answering")

    def upstream_timed_out(self, exchange: Exchange) -> None:
        self.sidecar.metrics.upstream_timeout.inc()
        upstream = exchange.upstream
        exchange.upstream = None
        if upstream is not None:
            upstream.close()
        self._fail(exchange, 504, "the app did not answer in time")

    def upstream_broke(self, exchange: Exchange) -> None:
        """The app's connection failed mid-response: the client's response is cut short too."""
        self.sidecar.metrics.upstream_reset.inc()
        exchange.upstream = None
        self._finish(exchange, exchange.status, True)
        self._abort()

    def _fail(self, exchange: Exchange, status: int, detail: str) -> None:
        if exchange.finished:
            return
        exchange.upstream = None
        close = self.must_close(exchange)
        self.write(problem_response(status, detail, close=close))
        if close:
            self.close_after = True
        self._finish(exchange, status, False)
        self._resume(_PAUSE_BUFFER | _PAUSE_UPSTREAM)
        self._next()

    def start_tunnel(
        self, exchange: Exchange, upstream: UpstreamConnection
    ) -> asyncio.Transport | None:
        """The app accepted an upgrade: from now on bytes are copied both ways."""
        transport = self.transport
        if transport is None or upstream.transport is None:
            return None
        self._finish(exchange, 101, False)
        self.current = None
        self.tunnel = upstream.transport
        if self.tunnel_pending:
            self.tunnel.write(self.tunnel_pending)
            self.tunnel_pending = b""
        self.paused = 0
        transport.resume_reading()
        return transport

    # --- flow control ---------------------------------------------------------------------

    def pause_for_upstream(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    def buffer_drained(self) -> None:
        self._resume(_PAUSE_BUFFER)

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reasons: int) -> None:
        if not self.paused & reasons:
            return
        self.paused &= ~reasons
        if not self.paused and self.transport is not None:
            self.transport.resume_reading()

    # --- refusing and closing -------------------------------------------------------------

    def _refuse(self, status: int, detail: str, *, malformed: bool = False) -> None:
        """Answer a request the sidecar cannot pass on, and close. Counted, no event."""
        metrics = self.sidecar.metrics
        if status == 431:
            metrics.rejected_header_too_large.inc()
        elif status == 408:
            metrics.rejected_header_timeout.inc()
        elif malformed:
            metrics.rejected_malformed.inc()
        current = self.current
        if current is not None and not current.finished:
            if current.status or current is not self.parsing:
                # an answer is in progress: this one cannot be sent in order; just stop
                self._abort()
                return
            # The request went bad in its body (a malformed chunk, say) before the app
            # answered: the app gets no more of it (its connection is closed; a head held
            # back with the bad bytes never leaves), the client gets the 400, and there is no
            # valid request to bill.
            current.finished = True
            if current.upstream is not None:
                current.upstream.close()
        self.parsing = None
        metrics.count_status(status)
        self.write(problem_response(status, detail, close=True))
        self._close()

    def sweep(self, now: float) -> None:
        """Apply timeouts (called by the sidecar's sweeper)."""
        if self.transport is None or self.tunnel is not None:
            return
        config = self.sidecar.config
        current = self.current
        if current is not None:
            if (
                current.upstream is not None
                and not current.status
                and current.sent_at
                and now - current.sent_at > config.upstream_timeout
            ):
                self.upstream_timed_out(current)
            return
        if self.in_head:
            if now - self.head_started > config.header_timeout:
                self._refuse(408, "the request head did not arrive in time")
        elif self.parsing is None:
            limit = config.keepalive_timeout if self.served_any else config.header_timeout
            if now - self.idle_since > limit or self.sidecar.draining:
                self._close()

    def _close(self) -> None:
        self.uncork()  # what is held back goes first: close() flushes only the transport
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection now (shutdown after the drain timeout)."""
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
