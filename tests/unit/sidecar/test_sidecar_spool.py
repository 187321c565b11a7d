"""The spool's file format and replay: nothing acknowledged is sent again, nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter_sidecar import spool as spool_module
from kmeter_sidecar.spool import Spool, decode_records, encode_record

records_strategy = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), max_size=40)


@given(records_strategy)
def test_records_decode_to_what_was_encoded(records: list[tuple[bytes, bytes]]) -> None:
    data = b"".join(encode_record(key, value) for key, value in records)
    assert [(k, v) for k, v, _ in decode_records(data)] == records


@given(records_strategy.filter(bool), st.data())
def test_a_torn_or_corrupt_tail_ends_reading_and_never_yields_garbage(
    records: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    frames = [encode_record(key, value) for key, value in records]
    whole = b"".join(frames)
    cut = data.draw(st.integers(0, len(whole) - 1))
    decoded = [(k, v) for k, v, _ in decode_records(whole[:cut])]
    assert decoded == records[: len(decoded)]
    assert sum(len(f) for f in frames[: len(decoded)]) <= cut
    flip = data.draw(st.integers(8, len(frames[0]) - 1)) if len(frames[0]) > 8 else None
    if flip is not None:
        corrupt = bytearray(whole)
        corrupt[flip] ^= 0xFF
        assert [(k, v) for k, v, _ in decode_records(bytes(corrupt))][:1] != records[:1]


def drain(spool: Spool, chunk: int, fail_every: int = 0) -> list[tuple[bytes, bytes]]:
    """Replay like the emitter: read, 'send', acknowledge — every fail_every-th send fails."""
    sent: list[tuple[bytes, bytes]] = []
    attempt = 0
    while (segment := spool.oldest()) is not None:
        records, offset = spool.read(segment, chunk)
        attempt += 1
        if fail_every and attempt % fail_every == 0:
            continue  # not acknowledged: nothing is marked, it is read again
        sent.extend(records)
        spool.acknowledge(segment, offset, len(records))
    return sent


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=50)), max_size=30)),
    st.integers(1, 7),
    st.integers(0, 3),
)
def test_replay_sends_every_spooled_record_once_in_order_despite_failed_sends(
    batches: list[list[tuple[bytes, bytes]]], chunk: int, fail_every: int
) -> None:
    import tempfile  # noqa: PLC0415 (hypothesis and the tmp_path fixture do not mix)

    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(Path(directory), max_bytes=1 << 30)
        for batch in batches:
            assert spool.append(batch) == len(batch)
            spool.flush()
        expected = [record for batch in batches for record in batch]
        assert spool.records_pending == len(expected)
        assert drain(spool, chunk, fail_every if fail_every > 1 else 0) == expected
        assert spool.records_pending == 0
        assert spool.size_bytes == 0
        assert list(Path(directory).iterdir()) == []


def test_a_restart_resumes_after_the_acknowledged_offset_without_resending(
    tmp_path: Path,
) -> None:
    first = Spool(tmp_path, max_bytes=1 << 30)
    records = [(b"k%d" % i, b"v%d" % i) for i in range(10)]
    first.append(records)
    segment = first.oldest()
    assert segment is not None
    sent, offset = first.read(segment, 4)
    first.acknowledge(segment, offset, len(sent))
    first.close()  # the process ends here

    second = Spool(tmp_path, max_bytes=1 << 30)
    assert second.records_pending == 6
    assert sent + drain(second, 3) == records


def test_new_records_go_to_a_new_file_while_an_old_one_replays(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.append([(b"a", b"1")])
    segment = spool.oldest()
    assert segment is not None
    spool.append([(b"b", b"2")])  # written while 'a' is being sent
    records, offset = spool.read(segment, 10)
    assert records == [(b"a", b"1")]
    spool.acknowledge(segment, offset, 1)
    assert drain(spool, 10) == [(b"b", b"2")]


def test_a_full_spool_refuses_records_and_says_how_many_it_took(tmp_path: Path) -> None:
    frame = len(encode_record(b"k", b"v" * 100))
    spool = Spool(tmp_path, max_bytes=frame * 3 + 1)
    assert spool.append([(b"k", b"v" * 100)] * 5) == 3
    assert spool.size_bytes == frame * 3


def test_files_rotate_once_they_reach_the_segment_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([(b"k", b"x" * 60)] * 5)  # 71-byte frames: two fit under 100 bytes
    spool.flush()
    assert len(list(tmp_path.glob("*.spool"))) == 3
    assert len(drain(spool, 2)) == 5
