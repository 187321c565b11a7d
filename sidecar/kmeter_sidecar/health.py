"""The admin port: ``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz`` (serving).

A few lines on the same httptools parser as the proxy rather than a web framework: the admin
port sees a scrape every few seconds, and importing aiohttp would cost the sidecar ~10 MB of RSS
for it. ``/readyz`` is 200 while the proxy accepts requests, and 503 with the reason in the body
while it loads the quota decisions at start (for at most ``--decisions-timeout``) and once it is
draining (SIGTERM), so Kubernetes routes to the pod only when it enforces what it should. It
does not otherwise depend on Kafka — the spool covers a Kafka outage, and failing readiness
then would take the app down with Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from httptools import HttpParserError, HttpRequestParser

__all__ = ["AdminConnection"]


class AdminConnection(asyncio.Protocol):
    """One connection to the admin port; answers GET requests and closes."""

    def __init__(self, metrics: Callable[[], bytes], not_ready: Callable[[], str | None]) -> None:
        """``not_ready()`` is None when the sidecar is ready, else why it is not."""
        self._metrics = metrics
        self._not_ready = not_ready
        self._parser = HttpRequestParser(self)
        self._url = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except HttpParserError:
            self._answer(400, b"text/plain", b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        path = self._url.split(b"?", 1)[0]
        if path == b"/metrics":
            self._answer(200, b"text/plain; version=0.0.4; charset=utf-8", self._metrics())
        elif path == b"/healthz":
            self._answer(200, b"text/plain", b"ok\n")
        elif path == b"/readyz":
            reason = self._not_ready()
            if reason is None:
                self._answer(200, b"text/plain", b"ready\n")
            else:
                self._answer(503, b"text/plain", reason.encode() + b"\n")
        else:
            self._answer(404, b"text/plain", b"not found\n")

    def _answer(self, status: int, content_type: bytes, body: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Unavailable")
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, reason, content_type, len(body))
        )
        transport.write(body)
        transport.close()
        self._transport = None
