"""Usage from Server-Sent Events streams: the values of the last data chunk that has them.

LLM APIs stream completions as SSE (``text/event-stream``) and report usage in a late chunk,
OpenAI-style::

    data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}

    data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}

    data: [DONE]

:class:`SSEValueReader` is fed the response body as it streams by (the proxy forwards every byte
untouched and gives the reader a look), splits it into events per the SSE rules (lines end in
``\\n``, ``\\r\\n`` or ``\\r``; ``data:`` lines of one event are joined with ``\\n``; a blank line
ends the event), decodes each event's data as JSON and evaluates every configured path on it.
For each value name the **last** non-null value seen wins — so the final usage chunk wins, and
when the client disconnects mid-stream the values seen so far are what the event reports.

Cost and bounds: an event is decoded only when its data starts with ``{`` or ``[`` and contains
the first key of some path in quotes (``"usage"``); an event or line longer than
``max_event_bytes`` is skipped, not buffered, so a hostile stream cannot grow memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from kmeter.core import exactjson
from kmeter.core.jsonpath import MISSING, Path

__all__ = ["SSEValueReader"]

_DONE: Final = b"[DONE]"


def _needles(paths: Sequence[tuple[str, Path]]) -> tuple[bytes, ...] | None:
    """Quoted first keys that must occur for a path to match; None when any path has none."""
    needles: list[bytes] = []
    for _, path in paths:
        first = path.segments[0]
        if not isinstance(first, str):
            return None
        needles.append(exactjson.dumps(first))
    return tuple(needles)


class SSEValueReader:
    """Reads configured values from an SSE stream, incrementally and with bounded memory."""

    def __init__(self, paths: Sequence[tuple[str, Path]], max_event_bytes: int) -> None:
        self._paths = tuple(paths)
        self._needles = _needles(paths)
        self._max = max_event_bytes
        self._pending = b""  # an incomplete line
        self._skipping = False  # inside an over-long line: drop until its end
        self._data: list[bytes] = []
        self._data_size = 0
        self._oversized = False  # the current event's data exceeded the bound
        self.too_large = False  # some event was skipped for its size
        self.values: dict[str, Any] = {}
        self.events = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the body."""
        buffer = self._pending + chunk if self._pending else chunk
        hold_cr = buffer.endswith(b"\r")  # maybe the first half of a \r\n: decide next time
        if hold_cr:
            buffer = buffer[:-1]
        lines = buffer.splitlines(keepends=True)
        tail = b""
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            tail = lines.pop()
        if lines:
            self._lines([line.rstrip(b"\r\n") for line in lines])
        if len(tail) > self._max:  # an over-long line: drop it, and its rest when it comes
            self._skipping = self._oversized = self.too_large = True
            tail = b""
        self._pending = tail + b"\r" if hold_cr else tail

    def _lines(self, lines: list[bytes]) -> None:
        for line in lines:
            if self._skipping:  # the rest of an over-long line ends here
                self._skipping = False
                continue
            if not line:
                self._dispatch()
            elif line.startswith(b"data"):
                if line == b"data":
                    value = b""
                elif line[4:5] == b":":
                    value = line[6:] if line[5:6] == b" " else line[5:]
                else:
                    continue
                self._data_size += len(value) + 1
                if self._data_size > self._max:
                    self._oversized = self.too_large = True
                    self._data.clear()
                elif not self._oversized:
                    self._data.append(value)

    def _dispatch(self) -> None:
        data, oversized = self._data, self._oversized
        self._data, self._data_size, self._oversized = [], 0, False
        if not data or oversized:
            return
        self.events += 1
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload == _DONE or payload[:1] not in (b"{", b"["):
            return
        if self._needles is not None and not any(n in payload for n in self._needles):
            return
        try:
            document = exactjson.loads(payload)
        except exactjson.JSONDecodeError:
            return
        for name, path in self._paths:
            value = path.get(document)
            if value is not MISSING and value is not None:
                self.values[name] = value

    def finish(self) -> dict[str, Any]:
        """The values seen; an event not terminated by a blank line (the stream ended or the
        client went away) still counts when its data lines are complete."""
        if self._pending and not self._skipping:
            pending, self._pending = self._pending.rstrip(b"\r"), b""
            self._lines([pending] if pending else [])
        self._dispatch()
        return self.values
