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
kinds it does not know; a change to the framing itself takes a new version. Reading records back
from a segment is `blockio.journal.reader`.

A COMMIT record closes batch `seq` once the agent has committed it: offset 0, flags 0, time_ns the
commit time, length = stored length = the payload, a UTF-8 JSON object (`CommitRecord`): the
batch's source time, flags and tag, and what became of its undo data (`kept`, with the number and
bytes of its records, `discarded` for a resync batch, `missing` when start-up found it lost). With
them the journal describes itself: which batches it holds, from when, and which recovery points it
can still reach, without the state store.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

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
# recovery finds that group (see `blockio.journal.rollback`).
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

ZERO_CHUNK = bytes(1 << 20)


class RecordKind(IntEnum):
    """What a record holds. Later kinds get the next numbers."""

    UNDO = 1
    COMMIT = 2


# What became of a committed batch's undo records (CommitRecord.undo).
UNDO_KEPT = "kept"
UNDO_DISCARDED = "discarded"  # a resync batch: its records are dropped at commit
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
    step = len(ZERO_CHUNK)
    return all(ZERO_CHUNK.startswith(view[i : i + step]) for i in range(0, len(view), step))


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
