"""The undo record: one extent's old data, as it lies in a journal segment.

A record is self-describing, so a segment can be walked and checked alone:

    header (HEADER, 64 bytes, little-endian) | disk id (UTF-8) | payload

| offset | size | field |
|---|---|---|
| 0 | 4 | magic `MTUJ` |
| 4 | 1 | format version (1) |
| 5 | 1 | kind (`RecordKind`; 1 = UNDO, 2 = COMMIT) |
| 6 | 1 | flags: bit 0 LZ4 payload, bit 1 all-zero old data (no payload), bit 2 group start |
| 7 | 1 | reserved, 0 |
| 8 | 2 | disk id length in bytes |
| 10 | 2 | reserved, 0 |
| 12 | 4 | length: bytes of old data (uncompressed) |
| 16 | 8 | seq of the batch that overwrote the extent |
| 24 | 8 | offset on the disk |
| 32 | 8 | time_ns when the old data was read |
| 40 | 4 | stored payload length |
| 44 | 4 | reserved, 0 |
| 48 | 8 | XXH3-64 of the old data (uncompressed) |
| 56 | 8 | XXH3-64 of bytes 0..55 followed by the disk id |

The framing (header, disk id, stored length) is the same for every kind, so a reader walks past
kinds it does not know; a change to the framing itself takes a new version.

A COMMIT record closes batch `seq` once the agent has committed it: offset 0, flags 0, time_ns the
commit time, length = stored length = the payload, a UTF-8 JSON object (`CommitRecord`): the
batch's source time, flags and tag, and what became of its undo data (`kept`, with the number and
bytes of its records, `discarded` for a resync batch, `missing` when start-up found it lost). With
them the journal describes itself: which batches it holds, from when, and which recovery points it
can still reach, without the state store.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO

import lz4.block
import xxhash

from blockio.errors import BlockIOError

MAGIC = b"MTUJ"
FORMAT_VERSION = 1

# magic, version, kind, flags, reserved, disk id length, reserved, length, seq, offset, time_ns,
# stored length, reserved, data digest, header digest
HEADER = struct.Struct("<4sBBBBHHIQQQIIQQ")
HEADER_BYTES = HEADER.size  # 64
HEADER_DIGESTED_BYTES = 56

FLAG_LZ4 = 0x01
FLAG_ZERO = 0x02
# Set on the first record appended after a journal sync. Only the last sync group of a batch can
# be unsynced after a power loss, and an unsynced group never touched the target: this bit is how
# recovery finds that group (see UndoJournal).
FLAG_GROUP_START = 0x04
KNOWN_FLAGS = FLAG_LZ4 | FLAG_ZERO | FLAG_GROUP_START

# Disk ids are short config names; a small bound keeps a damaged length field from posing as
# a torn tail (a record the file ends inside).
MAX_DISK_ID_BYTES = 255
MAX_RECORD_LENGTH = 0xFFFFFFFF

# Compression is tried on a sample first: LZ4 runs at ~0.5 GB/s on incompressible data, which
# would be most of a core at the agent's rate, and the old data of a disk is often incompressible.
_SAMPLE_THRESHOLD = 256 * 1024
_SAMPLE_BYTES = 64 * 1024
_SAMPLE_MAX_RATIO = 0.95

_ZERO_CHUNK = bytes(1 << 20)


class RecordKind(IntEnum):
    """What a record holds. Later kinds get the next numbers."""

    UNDO = 1
    COMMIT = 2


# What became of a committed batch's undo records (CommitRecord.undo).
UNDO_KEPT = "kept"
UNDO_DISCARDED = "discarded"  # a resync batch: its records are dropped at commit (PROTOCOL.md 5)
UNDO_MISSING = "missing"  # start-up found the batch committed but its records gone
UNDO_STATES = frozenset({UNDO_KEPT, UNDO_DISCARDED, UNDO_MISSING})
# A commit record's payload is a few hundred bytes; a TAG payload is at most 64 KiB.
MAX_COMMIT_PAYLOAD = 128 * 1024


class JournalCorrupt(BlockIOError):
    """A segment holds bytes that are not a valid record. `str()`:
    `segment <path> at byte <position>: <reason>`."""

    def __init__(self, path: Path, position: int, reason: str) -> None:
        super().__init__(f"segment {path} at byte {position}: {reason}")
        self.path = path
        self.position = position
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UndoRecord:
    """The old data of `[offset, offset + length)` on `disk`, before batch `seq` overwrote it."""

    disk: str
    seq: int
    offset: int
    length: int
    time_ns: int
    data: bytes
    # First record appended after a journal sync (FLAG_GROUP_START).
    group_start: bool = False

    def __post_init__(self) -> None:
        if len(self.data) != self.length:
            raise ValueError(f"undo record data holds {len(self.data)} bytes, length {self.length}")


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """Batch `seq` of `disk` is committed. `records` and `undo_bytes` count its UNDO records and
    the old data they hold (for a kept batch, `undo_bytes` equals the batch's data bytes). `tag` is
    the batch's TAG as a JSON object (tag_id, name, kind, group, time_ns), or None."""

    disk: str
    seq: int
    source_time_ns: int
    committed_ns: int
    flags: tuple[str, ...] = ()
    tag: dict[str, Any] | None = None
    undo: str = UNDO_KEPT
    records: int = 0
    undo_bytes: int = 0

    def payload(self) -> bytes:
        """The JSON payload of the record (without disk and seq, which are in the header)."""
        return json.dumps(
            {
                "source_time_ns": self.source_time_ns,
                "committed_ns": self.committed_ns,
                "flags": sorted(self.flags),
                "tag": self.tag,
                "undo": self.undo,
                "records": self.records,
                "undo_bytes": self.undo_bytes,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A record's header as found in a segment: where it is and what it describes."""

    position: int
    total_bytes: int
    kind: int
    disk: str
    seq: int
    offset: int
    length: int
    time_ns: int
    flags: int
    stored_bytes: int
    data_digest: int

    @property
    def end(self) -> int:
        """Position of the byte after this record."""
        return self.position + self.total_bytes

    @property
    def payload_position(self) -> int:
        return self.end - self.stored_bytes


def is_zero(data: bytes | memoryview) -> bool:
    """True if every byte of `data` is 0 (memcmp against a shared zero buffer, no copies)."""
    view = memoryview(data).cast("B")
    step = len(_ZERO_CHUNK)
    return all(_ZERO_CHUNK.startswith(view[i : i + step]) for i in range(0, len(view), step))


def _pack_payload(data: bytes | memoryview) -> tuple[int, bytes | memoryview]:
    """Choose how old data is stored: (flags, payload)."""
    if is_zero(data):
        return FLAG_ZERO, b""
    length = len(data)
    if length > _SAMPLE_THRESHOLD:
        sample = memoryview(data)[:_SAMPLE_BYTES]
        if len(lz4.block.compress(sample, store_size=False)) > _SAMPLE_MAX_RATIO * _SAMPLE_BYTES:
            return 0, data
    packed = lz4.block.compress(data, store_size=False)
    if len(packed) < length:
        return FLAG_LZ4, packed
    return 0, data


def encode_record_parts(record: UndoRecord) -> tuple[bytes, bytes | memoryview]:
    """The record as (header and disk id, payload): for `os.writev`, which saves copying the
    payload. `b"".join` of them is `encode_record(record)`.

    Raises ValueError for a disk id or length the format cannot hold.
    """
    disk = record.disk.encode()
    if len(disk) > MAX_DISK_ID_BYTES:
        raise ValueError(f"disk id {record.disk!r} is longer than {MAX_DISK_ID_BYTES} bytes")
    if record.length > MAX_RECORD_LENGTH:
        raise ValueError(f"undo record of {record.length} bytes exceeds {MAX_RECORD_LENGTH}")
    flags, payload = _pack_payload(record.data)
    if record.group_start:
        flags |= FLAG_GROUP_START
    head = bytearray(HEADER_BYTES + len(disk))
    HEADER.pack_into(
        head,
        0,
        MAGIC,
        FORMAT_VERSION,
        RecordKind.UNDO,
        flags,
        0,
        len(disk),
        0,
        record.length,
        record.seq,
        record.offset,
        record.time_ns,
        len(payload),
        0,
        xxhash.xxh3_64_intdigest(record.data),
        0,
    )
    head[HEADER_BYTES:] = disk
    digest = xxhash.xxh3_64_intdigest(bytes(head[:HEADER_DIGESTED_BYTES]) + disk)
    struct.pack_into("<Q", head, HEADER_DIGESTED_BYTES, digest)
    return bytes(head), payload


def encode_commit(commit: CommitRecord) -> bytes:
    """The bytes of one COMMIT record.

    Raises ValueError for a disk id the format cannot hold, an unknown undo state or a payload
    over MAX_COMMIT_PAYLOAD.
    """
    disk = commit.disk.encode()
    if len(disk) > MAX_DISK_ID_BYTES:
        raise ValueError(f"disk id {commit.disk!r} is longer than {MAX_DISK_ID_BYTES} bytes")
    if commit.undo not in UNDO_STATES:
        raise ValueError(f"undo state {commit.undo!r} is not one of {sorted(UNDO_STATES)}")
    payload = commit.payload()
    if len(payload) > MAX_COMMIT_PAYLOAD:
        raise ValueError(f"commit record of {len(payload)} bytes exceeds {MAX_COMMIT_PAYLOAD}")
    head = bytearray(HEADER_BYTES + len(disk))
    HEADER.pack_into(
        head,
        0,
        MAGIC,
        FORMAT_VERSION,
        RecordKind.COMMIT,
        0,
        0,
        len(disk),
        0,
        len(payload),
        commit.seq,
        0,
        commit.committed_ns,
        len(payload),
        0,
        xxhash.xxh3_64_intdigest(payload),
        0,
    )
    head[HEADER_BYTES:] = disk
    digest = xxhash.xxh3_64_intdigest(bytes(head[:HEADER_DIGESTED_BYTES]) + disk)
    struct.pack_into("<Q", head, HEADER_DIGESTED_BYTES, digest)
    return bytes(head) + payload


def encode_record(record: UndoRecord) -> bytes:
    """The bytes of one record. LZ4 only when it shrinks the data; all-zero data has no payload.

    Raises ValueError for a disk id or length the format cannot hold.
    """
    head, payload = encode_record_parts(record)
    return head + bytes(payload)


def _zeros_to_end(f: BinaryIO, position: int, end: int) -> bool:
    f.seek(position)
    while position < end:
        chunk = f.read(min(end - position, len(_ZERO_CHUNK)))
        if not chunk or not is_zero(chunk):
            return False
        position += len(chunk)
    return True


def _frame_fault(magic: bytes, version: int, disk_len: int) -> str | None:
    """What makes a header unreadable before its digest can be checked, or None."""
    if magic != MAGIC:
        return f"bad magic {magic!r}, expected {MAGIC!r}"
    if version != FORMAT_VERSION:
        return f"record format version {version}, this mtagent reads version {FORMAT_VERSION}"
    if disk_len > MAX_DISK_ID_BYTES:
        return f"disk id length {disk_len} exceeds {MAX_DISK_ID_BYTES}"
    return None


def _field_fault(kind: int, flags: int, length: int, stored: int, reserved: int) -> str | None:
    """What makes a header's fields inconsistent with each other, or None."""
    if reserved:
        return "reserved header fields are not zero"
    if kind == RecordKind.COMMIT:
        if flags:
            return f"commit record with flags {flags:#04x}"
        if stored != length or stored > MAX_COMMIT_PAYLOAD:
            return f"commit record payload of {stored} bytes for length {length}"
        return None
    if flags & ~KNOWN_FLAGS:
        return f"unknown flags {flags:#04x}"
    if flags & FLAG_ZERO:
        if flags & FLAG_LZ4 or stored != 0:
            return f"zero record with a payload of {stored} bytes"
    elif flags & FLAG_LZ4:
        if stored == 0 or stored > length:
            return f"LZ4 payload of {stored} bytes for {length} bytes of data"
    elif kind == RecordKind.UNDO and stored != length:
        return f"raw payload of {stored} bytes for {length} bytes of data"
    return None


def scan_headers(f: BinaryIO, path: Path, start: int = 0) -> tuple[list[RecordHeader], int | None]:
    """Walk the records of a segment from `start`, reading headers only.

    Returns (headers in file order, torn_at). `torn_at` is the position of an incomplete record
    at the very tail, left by a crash in the middle of an append, or None. A record is incomplete
    when the file ends inside it, or when everything from its position to the end is zeros (a
    file system may extend a file before its data reaches the disk).

    Raises JournalCorrupt for a bad magic, an unknown version, a header digest mismatch or
    inconsistent fields anywhere else.
    """
    headers: list[RecordHeader] = []
    torn_at = scan_headers_into(f, path, headers, start)
    return headers, torn_at


def scan_headers_into(
    f: BinaryIO, path: Path, headers: list[RecordHeader], start: int = 0
) -> int | None:
    """`scan_headers`, appending to `headers` as it goes: when it raises JournalCorrupt,
    `headers` still holds every record before the damage. Returns torn_at."""
    end = f.seek(0, io.SEEK_END)
    position = start
    while position < end:
        f.seek(position)
        raw = f.read(HEADER_BYTES)
        if len(raw) < HEADER_BYTES:
            return position
        (
            magic,
            version,
            kind,
            flags,
            reserved_a,
            disk_len,
            reserved_b,
            length,
            seq,
            offset,
            time_ns,
            stored,
            reserved_c,
            data_digest,
            header_digest,
        ) = HEADER.unpack(raw)

        fault = _frame_fault(magic, version, disk_len)
        if fault is not None:
            if _zeros_to_end(f, position, end):
                return position
            raise JournalCorrupt(path, position, fault)
        if position + HEADER_BYTES + disk_len > end:
            return position
        disk = f.read(disk_len)
        if xxhash.xxh3_64_intdigest(raw[:HEADER_DIGESTED_BYTES] + disk) != header_digest:
            if _zeros_to_end(f, position, end):
                return position
            raise JournalCorrupt(path, position, "header digest mismatch")
        # The digest matched: a fault from here on was written so, not damaged on the way.
        fault = _field_fault(kind, flags, length, stored, reserved_a | reserved_b | reserved_c)
        if fault is not None:
            raise JournalCorrupt(path, position, fault)
        try:
            disk_id = disk.decode()
        except UnicodeDecodeError:
            raise JournalCorrupt(path, position, "disk id is not UTF-8") from None
        total = HEADER_BYTES + disk_len + stored
        if position + total > end:
            return position
        headers.append(
            RecordHeader(
                position=position,
                total_bytes=total,
                kind=kind,
                disk=disk_id,
                seq=seq,
                offset=offset,
                length=length,
                time_ns=time_ns,
                flags=flags,
                stored_bytes=stored,
                data_digest=data_digest,
            )
        )
        position += total
    return None


def read_record(f: BinaryIO, header: RecordHeader, path: Path) -> UndoRecord:
    """Read the record `header` describes (from `scan_headers` on the same file) and verify its
    old data against the recorded XXH3-64.

    Raises JournalCorrupt when the payload is cut short, does not decompress to exactly `length`
    bytes, or does not match its digest; ValueError for a record that is not an UNDO record.
    """
    if header.kind != RecordKind.UNDO:
        raise ValueError(f"record at byte {header.position} of {path} is of kind {header.kind}")
    at = header.position
    if header.flags & FLAG_ZERO:
        data = bytes(header.length)
    else:
        f.seek(header.payload_position)
        payload = f.read(header.stored_bytes)
        if len(payload) != header.stored_bytes:
            raise JournalCorrupt(
                path, at, f"payload cut short: {len(payload)} of {header.stored_bytes} bytes"
            )
        if header.flags & FLAG_LZ4:
            try:
                data = lz4.block.decompress(payload, uncompressed_size=header.length)
            except lz4.block.LZ4BlockError as exc:
                raise JournalCorrupt(path, at, f"LZ4 payload does not decompress: {exc}") from None
            if len(data) != header.length:
                raise JournalCorrupt(
                    path, at, f"LZ4 payload gives {len(data)} bytes, expected {header.length}"
                )
        else:
            data = payload
    if xxhash.xxh3_64_intdigest(data) != header.data_digest:
        raise JournalCorrupt(
            path,
            at,
            f"old data digest mismatch (disk offset {header.offset}, length {header.length})",
        )
    return UndoRecord(
        disk=header.disk,
        seq=header.seq,
        offset=header.offset,
        length=header.length,
        time_ns=header.time_ns,
        data=data,
        group_start=bool(header.flags & FLAG_GROUP_START),
    )


def read_commit(f: BinaryIO, header: RecordHeader, path: Path) -> CommitRecord:
    """Read the COMMIT record `header` describes (from `scan_headers` on the same file) and verify
    its payload against the recorded XXH3-64.

    Raises JournalCorrupt when the payload is cut short, does not match its digest or is not a
    commit payload; ValueError for a record that is not a COMMIT record.
    """
    if header.kind != RecordKind.COMMIT:
        raise ValueError(f"record at byte {header.position} of {path} is of kind {header.kind}")
    at = header.position
    f.seek(header.payload_position)
    payload = f.read(header.stored_bytes)
    if len(payload) != header.stored_bytes:
        raise JournalCorrupt(
            path, at, f"payload cut short: {len(payload)} of {header.stored_bytes} bytes"
        )
    if xxhash.xxh3_64_intdigest(payload) != header.data_digest:
        raise JournalCorrupt(path, at, f"commit record of batch {header.seq}: digest mismatch")
    try:
        fields = json.loads(payload)
        commit = CommitRecord(
            disk=header.disk,
            seq=header.seq,
            source_time_ns=int(fields["source_time_ns"]),
            committed_ns=int(fields["committed_ns"]),
            flags=tuple(str(flag) for flag in fields["flags"]),
            tag=fields["tag"],
            undo=str(fields["undo"]),
            records=int(fields["records"]),
            undo_bytes=int(fields["undo_bytes"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise JournalCorrupt(path, at, f"commit record of batch {header.seq}: {exc}") from None
    if commit.undo not in UNDO_STATES or (
        commit.tag is not None and not isinstance(commit.tag, dict)
    ):
        raise JournalCorrupt(path, at, f"commit record of batch {header.seq}: unknown fields")
    return commit
