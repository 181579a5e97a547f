"""Reading records back from a segment: walking the headers (and finding a torn tail), then
reading and verifying a record's payload against its digest. The format is
`blockio.journal.records`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import BinaryIO

import lz4.block
import xxhash

from blockio.journal.records import (
    FLAG_GROUP_START,
    FLAG_LZ4,
    FLAG_ZERO,
    FORMAT_VERSION,
    HEADER,
    HEADER_BYTES,
    HEADER_DIGESTED_BYTES,
    KNOWN_FLAGS,
    MAGIC,
    MAX_COMMIT_PAYLOAD,
    MAX_DISK_ID_BYTES,
    UNDO_STATES,
    ZERO_CHUNK,
    CommitRecord,
    JournalCorrupt,
    RecordHeader,
    RecordKind,
    UndoRecord,
    is_zero,
)


def _zeros_to_end(f: BinaryIO, position: int, end: int) -> bool:
    f.seek(position)
    while position < end:
        chunk = f.read(min(end - position, len(ZERO_CHUNK)))
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
        try:
            header = _header_at(f, path, position, end)
        except JournalCorrupt:
            if _zeros_to_end(f, position, end):
                return position
            raise
        if header is None or header.end > end:
            return position
        headers.append(header)
        position = header.end
    return None


def scan_headers_past_damage(
    f: BinaryIO, path: Path
) -> tuple[list[RecordHeader], list[JournalCorrupt], int | None]:
    """Walk the headers of a whole segment like `scan_headers`, but go on past damage: after a
    header that cannot be read, the walk resumes at the next position that holds a header whose
    digest matches (`find_header`). Returns (headers in file order, the damage met in file order,
    torn_at). What follows a damaged stretch tells whether it was ever synced (see
    `blockio.journal.rollback`)."""
    headers: list[RecordHeader] = []
    damage: list[JournalCorrupt] = []
    position: int | None = 0
    while position is not None:
        try:
            return headers, damage, scan_headers_into(f, path, headers, position)
        except JournalCorrupt as exc:
            damage.append(exc)
            position = find_header(f, path, exc.position + 1)
    return headers, damage, None


_FIND_CHUNK = 1 << 20


def find_header(f: BinaryIO, path: Path, start: int) -> int | None:
    """The first position at or after `start` that holds a record header whose digest matches
    (the record may still run past the end of the file), or None. A 64-bit digest over the
    header makes a chance match in damaged bytes or in old data negligible."""
    end = f.seek(0, io.SEEK_END)
    position = start
    while position < end:
        f.seek(position)
        chunk = f.read(min(_FIND_CHUNK, end - position))
        hit = chunk.find(MAGIC)
        while hit >= 0:
            try:
                if _header_at(f, path, position + hit, end) is not None:
                    return position + hit
            except JournalCorrupt:
                pass
            hit = chunk.find(MAGIC, hit + 1)
        # A magic cut by the chunk's end is found again at the start of the next chunk.
        position += max(len(chunk) - (len(MAGIC) - 1), 1)
    return None


def _header_at(f: BinaryIO, path: Path, position: int, end: int) -> RecordHeader | None:
    """The header of the record at `position`, its digest and fields checked; the record may
    run past `end` (its `end` says). None when the file ends inside the header or the disk id.
    Raises JournalCorrupt for a bad magic, an unknown version, a digest mismatch or
    inconsistent fields."""
    f.seek(position)
    raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        return None
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
        raise JournalCorrupt(path, position, fault)
    if position + HEADER_BYTES + disk_len > end:
        return None
    disk = f.read(disk_len)
    if xxhash.xxh3_64_intdigest(raw[:HEADER_DIGESTED_BYTES] + disk) != header_digest:
        raise JournalCorrupt(path, position, "header digest mismatch")
    # The digest matched: a fault from here on was written so, not damaged on the way.
    fault = _field_fault(kind, flags, length, stored, reserved_a | reserved_b | reserved_c)
    if fault is not None:
        raise JournalCorrupt(path, position, fault)
    try:
        disk_id = disk.decode()
    except UnicodeDecodeError:
        raise JournalCorrupt(path, position, "disk id is not UTF-8") from None
    return RecordHeader(
        position=position,
        total_bytes=HEADER_BYTES + disk_len + stored,
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


def verify_payload(f: BinaryIO, header: RecordHeader, path: Path) -> None:
    """Read the payload of the record `header` describes and check it as `read_record` or
    `read_commit` does (a kind this version does not know is not checked). Raises
    JournalCorrupt."""
    if header.kind == RecordKind.UNDO:
        read_record(f, header, path)
    elif header.kind == RecordKind.COMMIT:
        read_commit(f, header, path)
