"""The undo record format: round trips, how old data is stored, and what damage is detected."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from blockio.journal.reader import read_record, scan_headers
from blockio.journal.records import (
    FLAG_GROUP_START,
    FLAG_LZ4,
    FLAG_ZERO,
    HEADER,
    HEADER_BYTES,
    HEADER_DIGESTED_BYTES,
    MAGIC,
    JournalCorrupt,
    RecordKind,
    UndoRecord,
    encode_record,
)

SEGMENT = Path("/retention/d0/seg-00000001.undo")


def record(data: bytes, *, seq: int = 7, offset: int = 4096, disk: str = "vm1-disk0") -> UndoRecord:
    return UndoRecord(
        disk=disk, seq=seq, offset=offset, length=len(data), time_ns=1_700_000_000_123, data=data
    )


def segment_of(*records: UndoRecord) -> io.BytesIO:
    return io.BytesIO(b"".join(encode_record(r) for r in records))


def compressible(length: int) -> bytes:
    return (b"ext4 superblock " + bytes(48)) * (length // 64)


def test_header_layout_is_the_documented_one() -> None:
    rec = UndoRecord(disk="d0", seq=3, offset=8192, length=512, time_ns=99, data=os.urandom(512))
    raw = encode_record(rec)
    assert HEADER_BYTES == 64
    assert raw[:4] == MAGIC == b"MTUJ"
    assert raw[4:8] == bytes([1, RecordKind.UNDO, 0, 0])  # version, kind, flags, reserved
    assert struct.unpack_from("<HHIQQQIIQ", raw, 8) == (
        2,  # disk id length
        0,
        512,  # length
        3,  # seq
        8192,  # offset
        99,  # time_ns
        512,  # stored bytes
        0,
        xxhash.xxh3_64_intdigest(rec.data),
    )
    digest = struct.unpack_from("<Q", raw, HEADER_DIGESTED_BYTES)[0]
    assert digest == xxhash.xxh3_64_intdigest(raw[:HEADER_DIGESTED_BYTES] + b"d0")
    assert raw[64:66] == b"d0"
    assert raw[66:] == rec.data
    assert len(raw) == 64 + 2 + 512


@pytest.mark.parametrize(
    ("data", "flags"),
    [
        (os.urandom(64 * 1024), 0),
        (compressible(64 * 1024), FLAG_LZ4),
        (bytes(64 * 1024), FLAG_ZERO),
        (os.urandom(1024 * 1024), 0),  # large enough to be judged on a sample
        (compressible(1024 * 1024), FLAG_LZ4),
    ],
    ids=["raw", "lz4", "zero", "raw-large", "lz4-large"],
)
def test_record_round_trips_through_a_segment(data: bytes, flags: int) -> None:
    rec = record(data)
    segment = segment_of(rec)
    headers, torn_at = scan_headers(segment, SEGMENT)
    assert torn_at is None
    [header] = headers
    assert header.flags == flags
    assert (header.disk, header.seq, header.offset, header.length, header.time_ns) == (
        "vm1-disk0",
        7,
        4096,
        len(data),
        1_700_000_000_123,
    )
    assert header.total_bytes == len(segment.getvalue())
    assert read_record(segment, header, SEGMENT) == rec


def test_lz4_is_used_only_when_it_shrinks_the_data() -> None:
    [raw], _ = scan_headers(segment_of(record(os.urandom(4096))), SEGMENT)
    [packed], _ = scan_headers(segment_of(record(compressible(4096))), SEGMENT)
    assert raw.flags == 0 and raw.stored_bytes == 4096
    assert packed.flags == FLAG_LZ4 and packed.stored_bytes < 4096 // 4


def test_all_zero_old_data_is_stored_without_payload() -> None:
    segment = segment_of(record(bytes(4 << 20)))
    assert len(segment.getvalue()) == HEADER_BYTES + len("vm1-disk0")


def test_a_single_nonzero_byte_at_the_end_is_not_taken_for_zeros() -> None:
    data = bytes((2 << 20) - 1) + b"\x01"
    segment = segment_of(record(data))
    [header], _ = scan_headers(segment, SEGMENT)
    assert header.flags & FLAG_ZERO == 0
    assert read_record(segment, header, SEGMENT).data == data


def test_group_start_is_recorded_in_the_flags() -> None:
    rec = UndoRecord("d0", 1, 0, 512, 0, os.urandom(512), group_start=True)
    segment = segment_of(rec)
    [header], _ = scan_headers(segment, SEGMENT)
    assert header.flags == FLAG_GROUP_START
    assert read_record(segment, header, SEGMENT) == rec


def test_records_are_walked_in_file_order_with_their_positions() -> None:
    records = [record(os.urandom(512), seq=1), record(bytes(4096), seq=2), record(b"ab" * 512)]
    segment = segment_of(*records)
    headers, torn_at = scan_headers(segment, SEGMENT)
    assert torn_at is None
    assert [h.seq for h in headers] == [1, 2, 7]
    assert headers[0].position == 0
    assert [h.position for h in headers[1:]] == [h.end for h in headers[:-1]]
    assert headers[-1].end == len(segment.getvalue())
    assert [read_record(segment, h, SEGMENT) for h in reversed(headers)] == records[::-1]


def test_scan_starts_at_the_given_position() -> None:
    segment = segment_of(record(os.urandom(512), seq=1), record(os.urandom(512), seq=2))
    first_end = scan_headers(segment, SEGMENT)[0][0].end
    headers, _ = scan_headers(segment, SEGMENT, first_end)
    assert [h.seq for h in headers] == [2]


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "lz4"])
def test_flipped_payload_byte_fails_the_digest_on_read(compressed: bool) -> None:
    data = compressible(8192) if compressed else os.urandom(8192)
    raw = bytearray(encode_record(record(data)))
    raw[-10] ^= 0x01
    segment = io.BytesIO(bytes(raw))
    [header], _ = scan_headers(segment, SEGMENT)  # headers alone cannot see payload damage
    with pytest.raises(JournalCorrupt) as caught:
        read_record(segment, header, SEGMENT)
    assert caught.value.position == 0
    assert str(caught.value).startswith(f"segment {SEGMENT} at byte 0: ")


@pytest.mark.parametrize(
    ("byte", "reason"),
    [(0, "bad magic"), (4, "record format version 0"), (24, "header digest mismatch")],
    ids=["magic", "version", "offset"],
)
def test_flipped_header_byte_before_the_tail_is_corrupt(byte: int, reason: str) -> None:
    first = encode_record(record(os.urandom(512), seq=1))
    second = bytearray(encode_record(record(os.urandom(512), seq=2)))
    third = encode_record(record(os.urandom(512), seq=3))
    second[byte] ^= 0x01
    segment = io.BytesIO(first + bytes(second) + third)
    with pytest.raises(JournalCorrupt) as caught:
        scan_headers(segment, SEGMENT)
    assert caught.value.position == len(first)
    assert str(caught.value).startswith(f"segment {SEGMENT} at byte {len(first)}: {reason}")


def test_damaged_header_of_a_complete_last_record_is_corrupt_not_torn() -> None:
    first = encode_record(record(os.urandom(512), seq=1))
    last = bytearray(encode_record(record(os.urandom(512), seq=2)))
    last[16] ^= 0x80  # seq
    with pytest.raises(JournalCorrupt, match="header digest mismatch"):
        scan_headers(io.BytesIO(first + bytes(last)), SEGMENT)


@pytest.mark.parametrize(
    "kept", [0, 1, HEADER_BYTES - 1, HEADER_BYTES + 3, HEADER_BYTES + 9 + 100], ids=str
)
def test_truncated_tail_is_torn_not_corrupt(kept: int) -> None:
    first = encode_record(record(os.urandom(512), seq=1))
    last = encode_record(record(os.urandom(512), seq=2))
    segment = io.BytesIO(first + last[:kept])
    headers, torn_at = scan_headers(segment, SEGMENT)
    assert [h.seq for h in headers] == [1]
    assert torn_at == (len(first) if kept else None)


def test_zero_filled_tail_is_torn_not_corrupt() -> None:
    first = encode_record(record(os.urandom(512), seq=1))
    headers, torn_at = scan_headers(io.BytesIO(first + bytes(8192)), SEGMENT)
    assert [h.seq for h in headers] == [1]
    assert torn_at == len(first)


def test_inconsistent_lengths_behind_a_good_digest_are_corrupt() -> None:
    raw = bytearray(encode_record(record(os.urandom(512))))
    struct.pack_into("<I", raw, 40, 100)  # stored bytes of a raw record must equal its length
    disk_len = struct.unpack_from("<H", raw, 8)[0]
    digest = xxhash.xxh3_64_intdigest(bytes(raw[:56]) + bytes(raw[64 : 64 + disk_len]))
    struct.pack_into("<Q", raw, 56, digest)
    with pytest.raises(JournalCorrupt, match="raw payload of 100 bytes for 512 bytes of data"):
        scan_headers(io.BytesIO(bytes(raw)), SEGMENT)


def with_kind(raw: bytes, kind: int) -> bytes:
    changed = bytearray(raw)
    changed[5] = kind
    disk_len = struct.unpack_from("<H", changed, 8)[0]
    digest = xxhash.xxh3_64_intdigest(bytes(changed[:56]) + bytes(changed[64 : 64 + disk_len]))
    struct.pack_into("<Q", changed, 56, digest)
    return bytes(changed)


def test_records_of_a_later_kind_are_walked_past_but_not_read_as_undo() -> None:
    before = encode_record(record(os.urandom(512), seq=1))
    later_kind = with_kind(encode_record(record(os.urandom(100), seq=1)), 9)
    after = encode_record(record(os.urandom(512), seq=2))
    segment = io.BytesIO(before + later_kind + after)
    headers, torn_at = scan_headers(segment, SEGMENT)
    assert torn_at is None
    assert [h.kind for h in headers] == [RecordKind.UNDO, 9, RecordKind.UNDO]
    assert read_record(segment, headers[2], SEGMENT).seq == 2
    with pytest.raises(ValueError, match="of kind 9"):
        read_record(segment, headers[1], SEGMENT)


def test_disk_id_longer_than_the_format_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        encode_record(record(b"", disk="x" * 256))


def test_record_length_must_match_its_data() -> None:
    with pytest.raises(ValueError, match="holds 3 bytes, length 4"):
        UndoRecord("d0", 1, 0, 4, 0, b"abc")


def test_header_struct_is_64_bytes() -> None:
    assert HEADER.size == 64


old_data = st.one_of(
    st.binary(max_size=5000),
    st.integers(0, 70_000).map(bytes),
    st.tuples(st.binary(min_size=1, max_size=16), st.integers(1, 20_000)).map(
        lambda pair: pair[0] * pair[1]
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(
        st.builds(
            lambda disk, seq, offset, time_ns, data, group_start: UndoRecord(
                disk, seq, offset, len(data), time_ns, data, group_start
            ),
            st.text(max_size=60),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            old_data,
            st.booleans(),
        ),
        max_size=6,
    )
)
def test_any_records_round_trip(records: list[UndoRecord]) -> None:
    segment = segment_of(*records)
    headers, torn_at = scan_headers(segment, SEGMENT)
    assert torn_at is None
    assert [read_record(segment, h, SEGMENT) for h in headers] == records
