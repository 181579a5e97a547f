"""Putting a target back as it was before a batch: the open batch after a failure, or, at
start-up, the batch a crash cut off.

The undo records of a batch are applied newest first, so where two records cover the same bytes
the oldest data wins, and the target is synced before the records are cut off the journal. A
crash in the middle leaves the records in place and start-up does it again: the records are the
old data of one consistent state, and applying them twice gives the same bytes.

Only the last sync group of the journal's tail may be incomplete (see `blockio.journal.writer`);
such a group never touched the target, so a damaged record there is skipped. A damaged record
anywhere else of the batch is `UndoLost`: only a resync closes that gap.

At start-up the journal's newest segment may also end in bytes that were written but never
synced, which a power cut leaves in any mix: each page kept, lost (zeros) or, with a volatile
write cache, anything. Since the last sync, the writer appended at most the COMMIT record of the
newest committed batch (written after the state commit, synced by the next group) and one
group of the batch in flight. So damage in the newest segment is taken for that torn,
never-synced tail, and cut off, unless what follows the damage proves that it was synced: a
record of a committed batch after it (a committed batch's records were synced before its
COMMIT record was written, and records are appended in order), or a group start of the batch in
flight after another of its records (a group starts after a sync), or its first group start
after more than the lost COMMIT record of the batch before could have held. The batch in flight
is then
rolled back from its records that can be read, on both sides of the damage: a record of its
last group that was lost never touched the target, and putting back one that was read from a
target the group never reached writes the bytes already there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from blockio.disks.target import TargetDisk
from blockio.journal.reader import (
    read_record,
    scan_headers,
    scan_headers_into,
    scan_headers_past_damage,
    verify_payload,
)
from blockio.journal.records import (
    FLAG_GROUP_START,
    HEADER_BYTES,
    MAX_COMMIT_PAYLOAD,
    MAX_DISK_ID_BYTES,
    JournalCorrupt,
    RecordHeader,
    RecordKind,
)
from blockio.journal.segments import segment_numbers, segment_path, truncate

log = logging.getLogger(__name__)


class UndoLost(JournalCorrupt):
    """The undo records of batch `seq`, never committed, cannot all be read back (`path`,
    `position`, `reason`: the damage, as JournalCorrupt says it): the target may keep part of what
    that batch wrote, and nothing tells which part. Only a resync closes that gap.

    The records are left in place; `UndoJournal.discard_lost` cuts them off, unapplied, from
    `batch_start` (their first byte in segment `path`). `str()`: `batch <seq> cannot be rolled
    back: segment <path> at byte <position>: <reason>`.
    """

    def __init__(self, seq: int, damage: JournalCorrupt, batch_start: int) -> None:
        super().__init__(damage.path, damage.position, damage.reason)
        self.args = (f"batch {seq} cannot be rolled back: {damage}",)
        self.seq = seq
        self.batch_start = batch_start


def roll_back_batch(target: TargetDisk, path: Path, disk: str, seq: int, batch_start: int) -> int:
    """Apply to `target` the records of batch `seq` of `disk`, which start at byte `batch_start`
    of segment `path` and run to its end (the journal's tail), newest first, then sync the
    target. The records stay in the segment. Returns the number of records applied.

    Raises UndoLost when a record that may have been synced cannot be read; TargetError.
    """
    with open(path, "rb") as f:
        # A failed append may have left part of a record: that part was never synced.
        try:
            headers, _torn_at = scan_headers(f, path, batch_start)
        except JournalCorrupt as exc:
            raise UndoLost(seq, exc, batch_start) from exc
        return apply_newest_first(target, f, path, disk, headers, at_tail=True)


def roll_back_tail(
    directory: Path,
    disk: str,
    target: TargetDisk,
    committed_seq: int,
    current: tuple[int, int],
) -> tuple[int, set[int]]:
    """At start-up: cut a torn tail off the journal in `directory` (in the newest segment, the
    never-synced bytes a power cut may have left: see the module docstring), then roll back and
    cut off the records at its tail whose seq is above `committed_seq` (a batch cut off by a
    crash). `current` is (number, descriptor) of the segment the journal holds open. Returns
    (records applied, numbers of the segments truncated). The caller holds the journal lock
    exclusively.

    Raises UndoLost when the batch cut off cannot be rolled back; JournalCorrupt when a segment
    is damaged elsewhere than in an unsynced tail; TargetError; JournalIOError.
    """
    current_number, current_fd = current
    undone = 0
    touched: set[int] = set()
    numbers = segment_numbers(directory)
    # Only the journal's very last records can be an unsynced group.
    at_tail = True
    for number in reversed(numbers):
        path = segment_path(directory, number)
        fd = current_fd if number == current_number else os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            with open(path, "rb") as f:
                # A segment is sealed with a sync before the next one is created: only the
                # newest can hold bytes that were never synced.
                if number == numbers[-1]:
                    tail = _scan_newest(f, path, committed_seq)
                else:
                    tail = _scan_sealed(f, path, committed_seq)
                if tail.cut_off:
                    undone += apply_newest_first(target, f, path, disk, tail.cut_off, at_tail)
                if tail.lost is not None:
                    raise tail.lost
                if tail.end is not None:
                    truncate(fd, path, tail.end)
                    touched.add(number)
                at_tail = at_tail and not tail.headers
        finally:
            if fd != current_fd:
                os.close(fd)
        # The batch cut off by the crash ends here once a committed record is found.
        if any(h.seq <= committed_seq for h in tail.headers):
            break
    return undone, touched


@dataclass(frozen=True, slots=True)
class _SegmentTail:
    """What start-up found at the end of one segment: its readable record headers, the records
    of the batch cut off to apply (file order), and the size to cut the segment to (None: leave
    it); or, `lost`, the batch cut off cannot be rolled back whole: `cut_off` then holds its
    readable records newer than the damage, put back before `lost` is raised."""

    headers: list[RecordHeader]
    cut_off: list[RecordHeader]
    end: int | None
    lost: UndoLost | None = None


def _scan_sealed(f: BinaryIO, path: Path, committed_seq: int) -> _SegmentTail:
    headers, torn_at = _scan_for_recovery(f, path, committed_seq)
    if torn_at is not None:
        log.warning("undo journal %s: cut a torn tail at byte %d", path, torn_at)
    cut_off = headers[_first_uncommitted(headers, committed_seq) :]
    return _SegmentTail(headers, cut_off, cut_off[0].position if cut_off else torn_at)


def _scan_newest(f: BinaryIO, path: Path, committed_seq: int) -> _SegmentTail:
    """The newest segment's tail, where damage is the torn, never-synced tail unless what
    follows it proves it was synced (module docstring). Damage proven synced in the batch cut
    off comes back as `lost`. Raises JournalCorrupt for damage among committed records."""
    headers, holes, torn_at = scan_headers_past_damage(f, path)
    first_open = _first_uncommitted(headers, committed_seq)
    cut_off = headers[first_open:]
    # The bytes since the last sync end in COMMIT records and the batch in flight: check what
    # a scan of headers alone cannot (a payload torn under an intact header).
    last_undo = max(
        (i for i, h in enumerate(headers[:first_open]) if h.kind == RecordKind.UNDO), default=-1
    )
    damage = holes[:1]
    checked: set[int] = set()
    for header in headers[last_undo + 1 :]:
        if damage and header.position > damage[0].position:
            break
        try:
            verify_payload(f, header, path)
        except JournalCorrupt as exc:
            damage = [exc]
        else:
            checked.add(header.position)
    if not damage:
        if torn_at is not None:
            log.warning("undo journal %s: cut a torn tail at byte %d", path, torn_at)
        return _SegmentTail(headers, cut_off, cut_off[0].position if cut_off else torn_at)
    first = damage[0]
    after = [h for h in headers if h.position > first.position]
    if any(h.seq <= committed_seq for h in after):
        raise first
    for i, header in enumerate(cut_off):
        if header.position <= first.position or not header.flags & FLAG_GROUP_START:
            continue
        # A group start after another record of the batch follows a sync; the batch's first
        # may follow the lost COMMIT record of the batch before, and nothing else.
        if i > 0 or not _where_a_commit_was(headers, first.position, header, committed_seq):
            lost = UndoLost(cut_off[-1].seq, first, min(first.position, cut_off[0].position))
            lost.__cause__ = first
            newer = [h for h in _readable(f, path, cut_off, checked) if h.position > first.position]
            return _SegmentTail(headers, newer, None, lost)
    end = min(first.position, cut_off[0].position) if cut_off else first.position
    log.warning(
        "undo journal %s: cut the unsynced tail at byte %d (%s): written after the last sync, "
        "torn by a power cut",
        path,
        end,
        first.reason,
    )
    return _SegmentTail(headers, _readable(f, path, cut_off, checked), end)


def _readable(
    f: BinaryIO, path: Path, headers: list[RecordHeader], checked: set[int]
) -> list[RecordHeader]:
    """`headers` less those whose payload is torn (`checked`: positions already found whole)."""
    readable = []
    for header in headers:
        if header.position not in checked:
            try:
                verify_payload(f, header, path)
            except JournalCorrupt:
                continue
        readable.append(header)
    return readable


def tail_segment(directory: Path, lost: UndoLost) -> int:
    """The number of the segment of `lost`, the journal's tail (every newer one is empty).
    Raises ValueError when it is not."""
    numbers = segment_numbers(directory)
    tail = [n for n in numbers if segment_path(directory, n) == lost.path]
    if not tail or any(
        segment_path(directory, n).stat().st_size > 0 for n in numbers if n > tail[0]
    ):
        raise ValueError(f"undo journal {directory}: {lost.path} is not its tail")
    return tail[0]


def cut_off_lost(lost: UndoLost, fd: int | None) -> None:
    """Cut the records `lost` names off its segment, unapplied, durably; `fd`: the segment's
    descriptor if the journal holds it open. The caller holds the journal lock exclusively.
    Raises JournalIOError."""
    own = os.open(lost.path, os.O_RDWR | os.O_CLOEXEC) if fd is None else fd
    try:
        truncate(own, lost.path, lost.batch_start)
    finally:
        if fd is None:
            os.close(own)


def _first_uncommitted(headers: list[RecordHeader], committed_seq: int) -> int:
    """The index of the first of the trailing headers whose seq is above `committed_seq`."""
    first_open = len(headers)
    while first_open > 0 and headers[first_open - 1].seq > committed_seq:
        first_open -= 1
    return first_open


def _scan_for_recovery(
    f: BinaryIO, path: Path, committed_seq: int
) -> tuple[list[RecordHeader], int | None]:
    """`scan_headers` of a whole segment, where a damaged header that follows records of a
    batch above `committed_seq` is that batch's: nothing is written after a batch cut off."""
    headers: list[RecordHeader] = []
    try:
        torn_at = scan_headers_into(f, path, headers)
    except JournalCorrupt as exc:
        if not headers or headers[-1].seq <= committed_seq:
            raise
        first_open = _first_uncommitted(headers, committed_seq)
        raise UndoLost(headers[-1].seq, exc, headers[first_open].position) from exc
    return headers, torn_at


# The most a COMMIT record takes: header, disk id and payload.
_MAX_COMMIT_RECORD_BYTES = HEADER_BYTES + MAX_DISK_ID_BYTES + MAX_COMMIT_PAYLOAD


def _where_a_commit_was(
    headers: list[RecordHeader], damaged_at: int, first: RecordHeader, committed_seq: int
) -> bool:
    """Whether the damaged bytes from `damaged_at` up to `first`, the first record found of the
    batch cut off (a group start), can be the COMMIT record of the newest committed batch: the
    one record appended after a sync and before the next batch's first group. They follow that
    batch's undo records, synced before it, and are no longer than a COMMIT record."""
    before = [h for h in headers if h.position < damaged_at]
    return (
        bool(before)
        and before[-1].kind == RecordKind.UNDO
        and before[-1].seq == committed_seq
        and first.position - damaged_at <= _MAX_COMMIT_RECORD_BYTES
    )


def apply_newest_first(
    target: TargetDisk,
    f: BinaryIO,
    path: Path,
    disk: str,
    headers: list[RecordHeader],
    at_tail: bool,
) -> int:
    """Write the old data of `headers` (records of the open batch of `disk`, file order) to the
    target, newest first, then sync the target. Returns the number of records applied.
    Raises UndoLost when a record that may have been synced cannot be read; JournalCorrupt for
    a record of another disk.

    at_tail: these are the journal's last records, so their last sync group may never have
    been synced; a damaged record there means the group never touched the target.
    """
    for header in headers:
        if header.disk != disk:
            raise JournalCorrupt(
                path,
                header.position,
                f"record of disk {header.disk!r} in the journal of {disk!r}",
            )
    last_group = max((i for i, h in enumerate(headers) if h.flags & FLAG_GROUP_START), default=0)
    applied = 0
    i = len(headers) - 1
    while i >= 0:
        header = headers[i]
        if header.kind != RecordKind.UNDO:
            i -= 1
            continue
        try:
            record = read_record(f, header, path)
        except JournalCorrupt as exc:
            if not at_tail or i < last_group:
                raise UndoLost(header.seq, exc, headers[0].position) from exc
            # A damaged record in the last sync group: that group was never synced, so it
            # never touched the target. The newer records of it already applied rewrote the
            # bytes they were read from.
            log.warning(
                "undo journal %s: skipping the unsynced last group at byte %d (%s)",
                path,
                headers[last_group].position,
                exc.reason,
            )
            i = last_group - 1
            continue
        target.write(record.offset, record.data)
        applied += 1
        i -= 1
    target.sync()
    return applied
