"""The on-disk spool: events kept in append-only files while Kafka cannot take them.

Layout of ``--spool-dir`` (an ``emptyDir`` in Kubernetes, so it survives restarts of the
sidecar container but not the pod)::

    00000000000000000007.spool    records, appended; the newest file is the one being written
    00000000000000000007.acked    how many bytes of .spool Kafka has acknowledged (text)

A record is a frame ``length:u32 crc32:u32 payload`` with payload ``key_length:u16 key value``
(big-endian). A file is only ever appended to; on start, every file found is from an earlier
run and is replayed. A frame that is cut short or whose CRC does not match — the tail of a write
interrupted by a crash — ends the readable part of its file; what follows is not trusted.

**Replay never re-sends what Kafka acknowledged.** Records are read from the ``.acked``
offset, sent, and only when Kafka has acknowledged all of them is the offset advanced (written
to a temporary file and renamed over ``.acked``); a fully acknowledged file is deleted with its
marker. A crash between Kafka's acknowledgement and the rename re-sends at most one replay chunk:
the copies carry the same ``id``, and the worker's dedup on (``source``, ``id``) drops them.
This is the at-least-once-with-stable-ids contract in docs/sidecar.md.

**Bounded**: :meth:`Spool.append` refuses records once the directory holds ``max_bytes``; the
caller counts them as dropped. Files rotate at :data:`SEGMENT_BYTES`. Writes go through a
buffered file object (a record costs a ``write`` into the page cache, no syscall); the caller
flushes after each batch and fsyncs on shutdown.

All methods are synchronous and small; they run on the event loop thread.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["SEGMENT_BYTES", "Segment", "Spool", "decode_records", "encode_record"]

SEGMENT_BYTES: Final = 8 << 20
_FRAME: Final = struct.Struct(">II")
_KEY: Final = struct.Struct(">H")
_SUFFIX: Final = ".spool"
_ACKED: Final = ".acked"


def encode_record(key: bytes, value: bytes) -> bytes:
    """One framed record."""
    payload = _KEY.pack(len(key)) + key + value
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes, start: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, offset after the record) for each intact record from ``start``; stops at
    the first torn or corrupt frame."""
    position = start
    size = len(data)
    while position + _FRAME.size <= size:
        length, crc = _FRAME.unpack_from(data, position)
        begin = position + _FRAME.size
        end = begin + length
        if end > size or length < _KEY.size:
            return
        payload = data[begin:end]
        if zlib.crc32(payload) != crc:
            return
        (key_length,) = _KEY.unpack_from(payload)
        if _KEY.size + key_length > length:
            return
        yield payload[2 : 2 + key_length], payload[2 + key_length :], end
        position = end


@dataclass(frozen=True, slots=True)
class Segment:
    """A closed spool file and how far Kafka has acknowledged it."""

    path: Path
    acked: int

    @property
    def marker(self) -> Path:
        return self.path.with_suffix(_ACKED)


class Spool:
    """Append-only spool files in one directory; see the module docstring."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        existing = sorted(directory.glob("*" + _SUFFIX))
        self._next_seq = int(existing[-1].stem) + 1 if existing else 0
        self._closed: list[Path] = existing  # oldest first
        self._size = sum(path.stat().st_size for path in existing)
        self._active: BinaryIO | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        self.records_pending = sum(self._count(path) for path in existing)
        self._cached: tuple[Path, bytes] | None = None  # the file being replayed, read once

    # --- writing --------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes held in spool files (acknowledged bytes of partly replayed files included)."""
        return self._size

    def append(self, records: Sequence[tuple[bytes, bytes]]) -> int:
        """Append records; returns how many were written (the rest did not fit)."""
        written = 0
        for key, value in records:
            frame = encode_record(key, value)
            if self._size + len(frame) > self.max_bytes:
                break
            if self._active is None or self._active_size >= SEGMENT_BYTES:
                self._rotate()
            assert self._active is not None
            self._active.write(frame)
            self._active_size += len(frame)
            self._size += len(frame)
            written += 1
        self.records_pending += written
        return written

    def flush(self, *, fsync: bool = False) -> None:
        """Hand buffered records to the OS (and to the disk with ``fsync``)."""
        if self._active is not None:
            self._active.flush()
            if fsync:
                os.fsync(self._active.fileno())

    def _rotate(self) -> None:
        self._close_active()
        path = self.directory / f"{self._next_seq:020d}{_SUFFIX}"
        self._next_seq += 1
        self._active = path.open("ab")
        self._active_path = path
        self._active_size = 0

    def _close_active(self) -> None:
        if self._active is not None and self._active_path is not None:
            self._active.flush()
            os.fsync(self._active.fileno())
            self._active.close()
            if self._active_size:
                self._closed.append(self._active_path)
            else:
                self._active_path.unlink(missing_ok=True)
        self._active = None
        self._active_path = None
        self._active_size = 0

    def close(self) -> None:
        """Flush, fsync and close the file being written."""
        self._close_active()

    # --- replaying ------------------------------------------------------------------------

    def oldest(self) -> Segment | None:
        """The oldest file to replay, closing the one being written when it is the only one."""
        if not self._closed and self._active_size:
            self._close_active()
        if not self._closed:
            return None
        path = self._closed[0]
        return Segment(path, self._read_marker(path.with_suffix(_ACKED)))

    def read(self, segment: Segment, max_records: int) -> tuple[list[tuple[bytes, bytes]], int]:
        """Up to ``max_records`` records after the acknowledged offset, and the offset after
        them (equal to ``segment.acked`` when nothing is left)."""
        data = self._contents(segment.path)
        records: list[tuple[bytes, bytes]] = []
        offset = segment.acked
        for key, value, end in decode_records(data, segment.acked):
            records.append((key, value))
            offset = end
            if len(records) >= max_records:
                break
        return records, offset

    def acknowledge(self, segment: Segment, offset: int, count: int) -> Segment | None:
        """Kafka acknowledged the segment up to ``offset`` (``count`` records): persist the
        offset, or delete the file when nothing readable is left. Returns the updated segment
        or None when it was deleted."""
        self.records_pending = max(0, self.records_pending - count)
        data = self._contents(segment.path)
        data_size = len(data)
        remaining = any(True for _ in decode_records(data, offset))
        if not remaining:
            self._cached = None
            segment.path.unlink(missing_ok=True)
            segment.marker.unlink(missing_ok=True)
            self._closed.remove(segment.path)
            self._size -= data_size
            return None
        temporary = segment.marker.with_suffix(".tmp")
        temporary.write_text(str(offset))
        temporary.replace(segment.marker)
        return Segment(segment.path, offset)

    def _contents(self, path: Path) -> bytes:
        if self._cached is None or self._cached[0] != path:
            self._cached = (path, path.read_bytes())
        return self._cached[1]

    @staticmethod
    def _read_marker(marker: Path) -> int:
        try:
            return int(marker.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _count(self, path: Path) -> int:
        acked = self._read_marker(path.with_suffix(_ACKED))
        return sum(1 for _ in decode_records(path.read_bytes(), acked))
