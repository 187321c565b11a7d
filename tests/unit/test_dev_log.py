"""The local event log of ``kmeter dev``: what was appended is read back, in order, with its
offsets; a crash — the files cut at any byte — recovers to exactly the records fully written;
reopening keeps everything.

The oracle is plain: the list of records appended, and the length of each record's frame
(:func:`encode_frame`), from which the records wholly inside a prefix of the log's bytes follow.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.dev.log import EventLog, LogDamaged, LogLocked, LogRecord, encode_frame

Row = tuple[int, bytes | None, bytes]

rows = st.tuples(
    st.integers(min_value=0, max_value=2**53),
    st.none() | st.binary(max_size=12),
    st.binary(max_size=60),
)
batches = st.lists(st.lists(rows, min_size=1, max_size=6), min_size=1, max_size=8)


@contextmanager
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kmeter-log-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def expected(appended: list[Row]) -> list[LogRecord]:
    return [LogRecord(offset, *row) for offset, row in enumerate(appended)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.log"))


def write(path: Path, appends: list[list[Row]], segment_bytes: int) -> list[Row]:
    appended: list[Row] = []
    with EventLog.open(path, segment_bytes=segment_bytes, fsync=False) as log:
        for batch in appends:
            assert log.append(batch) == len(appended)
            appended += batch
    return appended


def crash_at(path: Path, cut: int, *, keep_empty: bool) -> None:
    """Keep only the first ``cut`` bytes of the log's segments taken end to end: the segment
    holding the cut is truncated there, the ones after it disappear — except that, when the cut
    falls at the end of a segment, the next one may have been created: it remains, empty
    (``keep_empty``)."""
    files = segments(path)
    remaining, index = cut, 0
    while index < len(files) and 0 < files[index].stat().st_size <= remaining:
        remaining -= files[index].stat().st_size
        index += 1
    if index < len(files):
        with files[index].open("r+b") as file:
            file.truncate(remaining)
        for later in files[index + 1 :]:
            later.unlink()
        if remaining == 0 and index > 0 and not keep_empty:
            files[index].unlink()


@settings(max_examples=150, deadline=None)
@given(batches, st.integers(min_value=30, max_value=400))
def test_every_record_appended_is_read_back_in_order_after_reopening(
    appends: list[list[Row]], segment_bytes: int
) -> None:
    with folder() as path:
        appended = write(path, appends, segment_bytes)
        with EventLog.open(path, segment_bytes=segment_bytes, fsync=False) as log:
            assert list(log.read()) == expected(appended)
            assert log.next_offset == len(appended)
            assert log.truncated_bytes == 0
            start = len(appended) // 2
            assert list(log.read(start)) == expected(appended)[start:]


@settings(max_examples=300, deadline=None)
@given(batches, st.integers(min_value=30, max_value=400), st.data())
def test_a_crash_cutting_the_log_at_any_byte_recovers_exactly_the_records_fully_written(
    appends: list[list[Row]], segment_bytes: int, data: st.DataObject
) -> None:
    with folder() as path:
        appended = write(path, appends, segment_bytes)
        ends = []
        total = 0
        for row in appended:
            total += len(encode_frame(*row))
            ends.append(total)
        assert sum(segment.stat().st_size for segment in segments(path)) == total
        cut = data.draw(st.integers(min_value=0, max_value=total), label="cut")
        crash_at(path, cut, keep_empty=data.draw(st.booleans(), label="keep an empty segment"))
        survivors = appended[: sum(1 for end in ends if end <= cut)]

        with EventLog.open(path, segment_bytes=segment_bytes, fsync=False) as log:
            assert list(log.read()) == expected(survivors)
            assert log.truncated_bytes == cut - (ends[len(survivors) - 1] if survivors else 0)
            more: list[Row] = [(1, b"k", b"after the crash")]
            assert log.append(more) == len(survivors)
        with EventLog.open(path, segment_bytes=segment_bytes, fsync=False) as log:
            assert list(log.read()) == expected(survivors + more)


@settings(max_examples=100, deadline=None)
@given(batches, st.integers(min_value=1, max_value=64))
def test_a_tail_of_zeros_left_by_a_crash_is_cut_off(appends: list[list[Row]], zeros: int) -> None:
    with folder() as path:
        appended = write(path, appends, 1 << 20)
        with segments(path)[-1].open("ab") as file:
            file.write(b"\0" * zeros)
        with EventLog.open(path, fsync=False) as log:
            assert list(log.read()) == expected(appended)
            assert log.truncated_bytes == zeros


def test_after_a_crash_a_record_whose_bytes_changed_ends_the_log_there() -> None:
    with folder() as path:
        appended = write(path, [[(1, b"a", b"first"), (2, b"b", b"second")]], 1 << 20)
        (path / "clean").unlink()  # as a crash leaves it: the log was never closed
        segment = segments(path)[0]
        data = bytearray(segment.read_bytes())
        data[-1] ^= 0xFF  # the last byte of the second record's value
        segment.write_bytes(bytes(data))
        with EventLog.open(path, fsync=False) as log:
            assert list(log.read()) == expected(appended[:1])


def test_a_changed_byte_in_a_log_closed_cleanly_is_reported_not_cut_off() -> None:
    with folder() as path:
        write(path, [[(1, b"a", b"first"), (2, b"b", b"second"), (3, b"c", b"third")]], 1 << 20)
        segment = segments(path)[0]
        data = bytearray(segment.read_bytes())
        data[10] ^= 0xFF  # inside the first record: nothing a crash could have torn
        segment.write_bytes(bytes(data))
        with pytest.raises(LogDamaged, match=r"damaged record at byte 0 of \d+ in a log that was"):
            EventLog.open(path, fsync=False)


def test_the_record_of_a_clean_close_is_gone_once_the_log_is_open_again() -> None:
    with folder() as path:
        write(path, [[(1, b"a", b"first")]], 1 << 20)
        assert (path / "clean").exists()
        with EventLog.open(path, fsync=False) as log:
            # a crash from now on may tear a write: it must not read as a clean close
            assert not (path / "clean").exists()
            log.append([(2, b"b", b"second")])
        assert (path / "clean").read_text().split() == [
            segments(path)[-1].name,
            str(segments(path)[-1].stat().st_size),
        ]


def test_damage_before_the_last_segment_is_reported_not_silently_dropped() -> None:
    with folder() as path:
        write(path, [[(1, None, b"x" * 40)] for _ in range(4)], 60)
        assert len(segments(path)) == 4
        first = segments(path)[0]
        first.write_bytes(first.read_bytes()[:-3])
        with pytest.raises(LogDamaged, match=r"00000000000000000000\.log: damaged record at byte"):
            EventLog.open(path, fsync=False)


def test_a_log_is_opened_by_one_process_at_a_time() -> None:
    with (
        folder() as path,
        EventLog.open(path, fsync=False),
        pytest.raises(LogLocked, match="in use by another process"),
    ):
        EventLog.open(path, fsync=False)


def test_appends_are_durable_with_fsync_and_segments_roll_over() -> None:
    with folder() as path:
        with EventLog.open(path, segment_bytes=100) as log:
            for number in range(10):
                log.append([(number, str(number).encode(), b"v" * 50)])
            assert log.segment_count == 10
        names = [segment.name for segment in segments(path)]
        assert names[:2] == ["00000000000000000000.log", "00000000000000000001.log"]
        with EventLog.open(path) as log:
            assert [record.key for record in log.read()] == [str(n).encode() for n in range(10)]
