"""Putting a target back as it was before a batch: the open batch after a failure, or, at
start-up, the batch a crash cut off.

The undo records of a batch are applied newest first, so where two records cover the same bytes
the oldest data wins, and the target is synced before the records are cut off the journal. A
crash in the middle leaves the records in place and start-up does it again: the records are the
old data of one consistent state, and applying them twice gives the same bytes.

Only the last sync group of the journal's tail may be incomplete (see `blockio.journal.writer`);
such a group never touched the target, so a damaged record there is skipped. A damaged record
anywhere else of the batch is `UndoLost`: only a resync closes that gap.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

from blockio.disks.target import TargetDisk
from blockio.journal.reader import read_record, scan_headers, scan_headers_into
from blockio.journal.records import FLAG_GROUP_START, JournalCorrupt, RecordHeader, RecordKind
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
    """At start-up: cut a torn tail off the journal in `directory`, then roll back and cut off
    the records at its tail whose seq is above `committed_seq` (a batch cut off by a crash).
    `current` is (number, descriptor) of the segment the journal holds open. Returns (records
    applied, numbers of the segments truncated). The caller holds the journal lock exclusively.

    Raises UndoLost when the batch cut off cannot be rolled back; JournalCorrupt when a segment
    is damaged elsewhere than in an unsynced tail; TargetError; JournalIOError.
    """
    current_number, current_fd = current
    undone = 0
    touched: set[int] = set()
    # Only the journal's very last records can be an unsynced group.
    at_tail = True
    for number in reversed(segment_numbers(directory)):
        path = segment_path(directory, number)
        fd = current_fd if number == current_number else os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            with open(path, "rb") as f:
                headers, torn_at = _scan_for_recovery(f, path, committed_seq)
                if torn_at is not None:
                    log.warning("undo journal %s: cut a torn tail at byte %d", path, torn_at)
                    truncate(fd, path, torn_at)
                    touched.add(number)
                first_open = _first_uncommitted(headers, committed_seq)
                cut_off = headers[first_open:]
                if cut_off:
                    undone += apply_newest_first(target, f, path, disk, cut_off, at_tail)
                    truncate(fd, path, cut_off[0].position)
                    touched.add(number)
                at_tail = at_tail and not headers
        finally:
            if fd != current_fd:
                os.close(fd)
        # The batch cut off by the crash ends here once a committed record is found.
        if first_open > 0:
            break
    return undone, touched


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
