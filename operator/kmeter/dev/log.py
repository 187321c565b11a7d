"""An embedded, durable, append-only event log: ``kmeter dev``'s stand-in for a Kafka partition.

**Layout.** A log is a folder of segment files named by the offset of their first record,
zero-padded so that names sort like numbers::

    00000000000000000000.log     records 0 .. n-1 (full, fsynced, never written again)
    00000000000000004711.log     records 4711 ..  (the active segment, appended to)

A record is a frame ``length:u32 crc32:u32 payload`` (big-endian), with payload
``timestamp_ms:i64 key_length:i32 key value``; a key length of -1 is "no key". The CRC
(zlib's CRC-32) covers the payload. A record's **offset** is its position in the log, counted
from 0 across segments; it is not stored, it follows from the segment's name and the order of
its frames. A segment rolls over once it holds ``segment_bytes``.

**Durability (the fsync policy).** :meth:`EventLog.append` writes a batch of records with one
``write`` into the active segment and, unless the log was opened with ``fsync=False``, calls
``fsync`` before it returns: when it returns, the batch is on disk. Callers batch (group commit,
see :mod:`kmeter.dev.transport`), so one fsync covers every record that arrived meanwhile.
Before a segment is closed for good it is fsynced, and the folder is fsynced after a new segment
is created, so a crash can only ever damage the *tail of the active segment*.

**Recovery.** :meth:`EventLog.open` scans every segment. In the active (last) segment, the first
frame that is cut short, has an impossible length, or fails its CRC — the tail of a write that a
crash interrupted — marks the end of the log: the file is truncated there (and fsynced). What
remains is exactly the records whose frames were completely written, in order; offsets continue
from there. A damaged frame in an *earlier* segment cannot come from a crash (those segments
were fsynced before the next one was created), so it is reported as :class:`LogDamaged` rather
than silently dropping everything after it; so is a gap between segments' offsets.

**A clean close is recorded.** The bytes of a torn write and damage to bytes written long
before look alike in the active segment (a crash may persist the pages of its last write in any
order). So :meth:`EventLog.close` writes a ``clean`` file naming the active segment and its
length, and :meth:`EventLog.open` deletes it (durably) before anything is appended. A log opened
with that file present, at that length, was not interrupted: damage in it is reported as
:class:`LogDamaged` too, instead of cutting off everything after a changed byte. After a crash
(no such file, or another length) recovery truncates as above.

Only one process may write a log: :meth:`EventLog.open` takes an exclusive ``flock`` on a
``lock`` file in the folder and refuses (:class:`LogLocked`) when another holds it.

All methods are synchronous file I/O; the asyncio side calls them from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_RECORD_BYTES",
    "EventLog",
    "LogDamaged",
    "LogLocked",
    "LogRecord",
    "encode_frame",
]

DEFAULT_SEGMENT_BYTES: Final = 64 << 20
MAX_RECORD_BYTES: Final = 32 << 20
"""The largest payload accepted; a frame claiming more is treated as torn."""
SUFFIX: Final = ".log"
CLEAN: Final = "clean"
"""Written by a clean close: ``<active segment name> <its length>``."""
_FRAME: Final = struct.Struct(">II")
_HEAD: Final = struct.Struct(">qi")
_MIN_PAYLOAD: Final = _HEAD.size


class LogRecord(NamedTuple):
    """One record as read back: its offset, append time (ms since the epoch), key and value."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


class LogDamaged(Exception):
    """The log holds damage a crash cannot explain; the message names the file and byte."""


class LogLocked(Exception):
    """Another process has the log open."""


def encode_frame(timestamp: int, key: bytes | None, value: bytes) -> bytes:
    """One framed record."""
    head = _HEAD.pack(timestamp, -1 if key is None else len(key))
    payload = head + (key or b"") + value
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"a record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES} bytes")
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes, offset: int) -> LogRecord | None:
    timestamp, key_length = _HEAD.unpack_from(payload)
    start = _HEAD.size
    if key_length == -1:
        return LogRecord(offset, timestamp, None, payload[start:])
    if key_length < 0 or start + key_length > len(payload):
        return None
    return LogRecord(
        offset, timestamp, payload[start : start + key_length], payload[start + key_length :]
    )


def _scan(data: bytes, base: int) -> tuple[list[LogRecord], int]:
    """The intact records of a segment's bytes, and where the first damaged frame starts (the
    length of the data when there is none)."""
    records: list[LogRecord] = []
    position = 0
    size = len(data)
    while position < size:
        if position + _FRAME.size > size:
            break
        length, crc = _FRAME.unpack_from(data, position)
        end = position + _FRAME.size + length
        if length < _MIN_PAYLOAD or length > MAX_RECORD_BYTES or end > size:
            break
        payload = data[position + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            break
        record = _decode_payload(payload, base + len(records))
        if record is None:
            break
        records.append(record)
        position = end
    return records, position


def _segment_name(base: int) -> str:
    return f"{base:020d}{SUFFIX}"


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class _Segment:
    base: int
    path: Path
    count: int
    size: int


class EventLog:
    """An open log; see the module docstring. Use :meth:`open`, then :meth:`close`."""

    def __init__(
        self,
        folder: Path,
        segments: list[_Segment],
        lock: BinaryIO,
        *,
        segment_bytes: int,
        fsync: bool,
        truncated_bytes: int,
    ) -> None:
        self.folder = folder
        self._segments = segments
        self._lock = lock
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.truncated_bytes = truncated_bytes
        """How many bytes of torn tail recovery cut off when the log was opened."""
        active = segments[-1]
        self._file: BinaryIO | None = active.path.open("ab")

    # --- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
    ) -> EventLog:
        """Open (creating it if need be) and recover the log in ``folder``."""
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / "lock").open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise LogLocked(f"{folder} is in use by another process") from None
        try:
            segments, truncated = cls._recover(folder, fsync=fsync)
            clean = folder / CLEAN
            if clean.exists():  # from now on, writes happen: a crash may tear them
                clean.unlink()
                if fsync:
                    _fsync_folder(folder)
        except BaseException:
            lock.close()
            raise
        return cls(
            folder,
            segments,
            lock,
            segment_bytes=segment_bytes,
            fsync=fsync,
            truncated_bytes=truncated,
        )

    @staticmethod
    def _recover(folder: Path, *, fsync: bool) -> tuple[list[_Segment], int]:
        paths = sorted(path for path in folder.iterdir() if path.name.endswith(SUFFIX))
        segments: list[_Segment] = []
        truncated = 0
        expected = 0
        try:
            closed_cleanly = (folder / CLEAN).read_text().split()
        except OSError:
            closed_cleanly = []
        for index, path in enumerate(paths):
            stem = path.name.removesuffix(SUFFIX)
            if not stem.isdigit():
                raise LogDamaged(f"{path}: not a segment name (expected <offset>{SUFFIX})")
            base = int(stem)
            if base != expected:
                raise LogDamaged(
                    f"{path}: starts at offset {base}, but the segment before ends at {expected}"
                )
            data = path.read_bytes()
            records, good = _scan(data, base)
            if good < len(data):
                if index < len(paths) - 1:
                    raise LogDamaged(
                        f"{path}: damaged record at byte {good} of {len(data)}, before the last "
                        "segment (not the tail of an interrupted write); move the folder away "
                        "to start a new log"
                    )
                if closed_cleanly == [path.name, str(len(data))]:
                    raise LogDamaged(
                        f"{path}: damaged record at byte {good} of {len(data)} in a log that was "
                        "closed cleanly (not the tail of an interrupted write); move the folder "
                        "away to start a new log"
                    )
                with path.open("r+b") as file:
                    file.truncate(good)
                    if fsync:
                        os.fsync(file.fileno())
                truncated = len(data) - good
            segments.append(_Segment(base, path, len(records), good))
            expected = base + len(records)
        if not segments:
            path = folder / _segment_name(0)
            path.touch()
            if fsync:
                _fsync_folder(folder)
            segments.append(_Segment(0, path, 0, 0))
        return segments, truncated

    # --- writing --------------------------------------------------------------------------

    @property
    def next_offset(self) -> int:
        """The offset the next record appended gets (= the number of records in the log)."""
        active = self._segments[-1]
        return active.base + active.count

    def append(self, records: Sequence[tuple[int, bytes | None, bytes]]) -> int:
        """Append ``(timestamp_ms, key, value)`` records; durable (fsynced) on return unless the
        log was opened with ``fsync=False``. Returns the offset of the first record."""
        if self._file is None:
            raise ValueError("the log is closed")
        first = self.next_offset
        frames = [encode_frame(timestamp, key, value) for timestamp, key, value in records]
        chunk: list[bytes] = []
        chunk_bytes = 0
        for frame in frames:
            active = self._segments[-1]
            if active.size + chunk_bytes > 0 and (
                active.size + chunk_bytes + len(frame) > self.segment_bytes
            ):
                self._write(chunk, chunk_bytes)
                chunk, chunk_bytes = [], 0
                if self._segments[-1].size > 0:
                    self._roll()
            chunk.append(frame)
            chunk_bytes += len(frame)
        self._write(chunk, chunk_bytes)
        if self.fsync and self._file is not None:
            os.fsync(self._file.fileno())
        return first

    def _write(self, frames: list[bytes], size: int) -> None:
        if not frames:
            return
        assert self._file is not None
        self._file.write(b"".join(frames))
        self._file.flush()
        active = self._segments[-1]
        active.count += len(frames)
        active.size += size

    def _roll(self) -> None:
        assert self._file is not None
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        base = self.next_offset
        path = self.folder / _segment_name(base)
        self._file = path.open("ab")
        if self.fsync:
            _fsync_folder(self.folder)
        self._segments.append(_Segment(base, path, 0, 0))

    def sync(self) -> None:
        """fsync the active segment (for logs opened with ``fsync=False``)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush, fsync and close; record the clean close; release the lock (always)."""
        try:
            if self._file is not None:
                self._file.flush()
                if self.fsync:
                    os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
                self._record_clean_close()
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()

    def _record_clean_close(self) -> None:
        active = self._segments[-1]
        with (self.folder / CLEAN).open("w") as clean:
            clean.write(f"{active.path.name} {active.size}\n")
            if self.fsync:
                clean.flush()
                os.fsync(clean.fileno())
        if self.fsync:
            _fsync_folder(self.folder)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- reading --------------------------------------------------------------------------

    def read(self, start: int = 0) -> Iterator[LogRecord]:
        """Every record from offset ``start`` to the end as it is now, in order."""
        if self._file is not None:
            self._file.flush()
        for segment in list(self._segments):
            if segment.base + segment.count <= start:
                continue
            with segment.path.open("rb") as file:
                data = file.read(segment.size)
            records, _ = _scan(data, segment.base)
            for record in records[: segment.count]:
                if record.offset >= start:
                    yield record

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)
