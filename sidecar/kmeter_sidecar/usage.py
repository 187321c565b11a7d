"""One usage event per request: what the proxy measured, plus values read from the response.

The event (CloudEvents 1.0, encoded by :mod:`kmeter.core.events`)::

    {"specversion": "1.0", "id": "3f9c0a8e5b7d1c24-42", "source": "kmeter-sidecar/ns/pod-1",
     "type": "http.request", "subject": "customer-1", "time": "2026-11-25T10:00:00.123456Z",
     "data": {"method": "POST", "route": "/v1/chat/completions", "status": 200,
              "duration_ms": 812.345, "request_bytes": 312, "response_bytes": 5120,
              "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}}

* ``id`` is ``<64 random bits in hex>-<counter>``: unique without a uuid4 per request (the random
  part is drawn once per process start), and fixed once built, so a re-sent event keeps its id
  and the worker's dedup on (``source``, ``id``) drops the copy.
* ``time`` is when the request head arrived; ``duration_ms`` runs until the last response byte
  was handed to the client's socket (or the exchange ended otherwise).
* ``route`` is the request target's path without the query, as sent (percent-encoding kept).
* ``request_bytes`` / ``response_bytes`` count body bytes (without chunked framing).
* ``aborted: true`` is added when the exchange did not finish normally (the client went away, the
  app's connection broke mid-response): the values are then those seen so far.
* Each ``--value NAME=PATH`` adds ``NAME``: the JSON value at PATH (numbers exact, objects kept)
  in a JSON response body (``application/json`` or ``*+json``, at most ``--value-max-body``
  bytes, gzip/deflate decoded) or in the SSE data chunks (see :mod:`kmeter_sidecar.sse`). A path
  that matches nothing adds nothing.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from kmeter.core import exactjson
from kmeter.core.events import UsageEvent, encode_event
from kmeter.core.jsonpath import MISSING, Path
from kmeter_sidecar.sse import SSEValueReader

__all__ = ["EventFactory", "JSONValueReader", "ValueReader", "route_of", "value_reader"]


class ValueReader(Protocol):
    """Sees the response body as it streams by; :meth:`finish` gives the values found."""

    @property
    def too_large(self) -> bool:
        """Whether a body (or an SSE event) was beyond the bound, so its values were not read."""
        ...

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> dict[str, Any]: ...


class JSONValueReader:
    """Buffers a JSON body up to a bound, then evaluates the paths on it once."""

    def __init__(self, paths: Sequence[tuple[str, Path]], max_bytes: int) -> None:
        self._paths = paths
        self._max = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self.too_large = False

    def feed(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self._size += len(chunk)
        if self._size > self._max:
            self.too_large = True
            self._parts.clear()
        else:
            self._parts.append(chunk)

    def finish(self) -> dict[str, Any]:
        if self.too_large or not self._parts:
            return {}
        try:
            document = exactjson.loads(b"".join(self._parts))
        except exactjson.JSONDecodeError:
            return {}
        found: dict[str, Any] = {}
        for name, path in self._paths:
            value = path.get(document)
            if value is not MISSING and value is not None:
                found[name] = value
        return found


class _Decoding:
    """Decompresses (gzip or deflate) before another reader, never beyond its bound."""

    def __init__(self, inner: JSONValueReader | SSEValueReader, wbits: int, max_bytes: int):
        self._inner = inner
        # a JSON body past its bound is read no further; an SSE stream skips the event only
        self._whole_body = isinstance(inner, JSONValueReader)
        self._zlib = zlib.decompressobj(wbits)
        self._max = max_bytes
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken:
            return
        try:
            # inflate at most the bound per step: a zip bomb never sits in memory whole
            data = self._zlib.decompress(chunk, self._max + 1)
            while True:
                self._inner.feed(data)
                tail = self._zlib.unconsumed_tail
                if not tail or (self._whole_body and self._inner.too_large):
                    return
                data = self._zlib.decompress(tail, self._max + 1)
        except zlib.error:
            self._broken = True

    @property
    def too_large(self) -> bool:
        return self._inner.too_large

    def finish(self) -> dict[str, Any]:
        return {} if self._broken else self._inner.finish()


_ENCODINGS: Final = {
    b"gzip": 16 + zlib.MAX_WBITS,
    b"x-gzip": 16 + zlib.MAX_WBITS,
    b"deflate": zlib.MAX_WBITS,
}


def value_reader(
    content_type: bytes | None,
    content_encoding: bytes | None,
    paths: Sequence[tuple[str, Path]],
    max_bytes: int,
) -> ValueReader | None:
    """The reader for a response, or None when it has no values to read."""
    if not paths or content_type is None:
        return None
    essence = content_type.split(b";", 1)[0].strip().lower()
    inner: JSONValueReader | SSEValueReader
    if essence == b"text/event-stream":
        inner = SSEValueReader(paths, max_bytes)
    elif essence in (b"application/json", b"text/json") or essence.endswith(b"+json"):
        inner = JSONValueReader(paths, max_bytes)
    else:
        return None
    if content_encoding is None or content_encoding.strip().lower() == b"identity":
        return inner
    wbits = _ENCODINGS.get(content_encoding.strip().lower())
    if wbits is None:
        return None  # br, zstd, or stacked codings: not read
    return _Decoding(inner, wbits, max_bytes)


def route_of(target: bytes) -> str:
    """The path of a request target, without query or fragment (absolute-form reduced)."""
    if target[:1] != b"/":
        if b"://" in target:
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        elif target == b"*":
            return "*"
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    try:
        return path.decode("ascii")
    except UnicodeDecodeError:
        return path.decode("latin-1")


class EventFactory:
    """Builds and encodes the event of one exchange; ids are ``<random>-<counter>``."""

    def __init__(self, *, source: str, event_type: str) -> None:
        self.source = source
        self.event_type = event_type
        self._prefix = os.urandom(8).hex() + "-"
        self._counter = 0

    def next_id(self) -> str:
        self._counter += 1
        return self._prefix + str(self._counter)

    def build(
        self,
        *,
        subject: str,
        started: float,
        method: str,
        route: str,
        status: int,
        duration: float,
        request_bytes: int,
        response_bytes: int,
        values: dict[str, Any] | None = None,
        aborted: bool = False,
    ) -> UsageEvent:
        """The event; ``started`` is a ``time.time()``, ``duration`` seconds."""
        data: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
        }
        if aborted:
            data["aborted"] = True
        if values:
            data.update(values)
        return UsageEvent(
            self.next_id(),
            self.source,
            self.event_type,
            subject,
            datetime.fromtimestamp(started, UTC),
            data,
        )

    @staticmethod
    def encode(event: UsageEvent) -> tuple[bytes, bytes]:
        """(Kafka key, value): the subject and the CloudEvents JSON."""
        return event.subject.encode(), encode_event(event)


def now() -> float:
    """Wall-clock seconds, the ``started`` of :meth:`EventFactory.build`."""
    return time.time()
