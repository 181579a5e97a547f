"""Appending to the journal's newest segment: the undo records of the open batch, commit
records, the syncs that make them durable, and the roll to a new segment.

Durability rule the batch writer relies on: the records of a group are synced (`sync()`) before
any byte of that group touches the target. So after a crash, every record whose extent may have
been written is durable, and only the last sync group of the open batch may be incomplete; such a
group never touched the target. Its first record carries FLAG_GROUP_START, so that a rollback can
tell it (`blockio.journal.rollback`).

Small records are gathered and written with one writev; large ones go out almost at once. A
record is counted in the segment's tally as it is appended, so the journal's summaries never
need the segment read back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from blockio.journal.index import SegmentSummary, SegmentTally, walk_segment
from blockio.journal.records import (
    UNDO_DISCARDED,
    UNDO_KEPT,
    CommitRecord,
    UndoRecord,
    encode_commit,
    encode_record_parts,
)
from blockio.journal.segments import (
    JournalIOError,
    datasync,
    open_segment,
    segment_numbers,
    segment_path,
    truncate,
)

log = logging.getLogger(__name__)

_FLUSH_BYTES = 1 << 20
# Linux IOV_MAX is 1024; each record is two buffers.
_IOV_MAX = 1024
_FLUSH_BUFFERS = 512


class SegmentWriter:
    """The open end of one disk's journal: segment `number`, open as `fd`, and the batch being
    appended. Knows nothing of locks or sealed segments: `UndoJournal` joins those."""

    def __init__(
        self, directory: Path, disk_id: str, number: int, fd: int, tally: SegmentTally
    ) -> None:
        self.directory = directory
        self.disk_id = disk_id
        self.number = number
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.tally = tally
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._unsynced = False
        self.batch_seq: int | None = None
        self._batch_start = 0
        self._next_starts_group = False
        # A copy of the tally to go back to when the open batch is undone, and its counts.
        self._tally_at_begin: SegmentTally | None = None
        self._batch_records = 0
        self._batch_undo_bytes = 0
        # Commit records whose write failed (a full drive): written before anything else.
        self._unwritten: list[CommitRecord] = []
        # A failed append could not be cut off: the segment may end in bytes `size` does not
        # count, so nothing may be appended until the journal is opened again (and recovered).
        self.torn = False

    @classmethod
    def open(
        cls, directory: Path, disk_id: str, summaries: Sequence[SegmentSummary]
    ) -> SegmentWriter:
        """A writer of the newest segment in `directory` (created if there is none), its tally
        carried on from that segment's summary in `summaries` if there is one. Raises OSError."""
        numbers = segment_numbers(directory)
        number = numbers[-1] if numbers else 1
        current = next((s for s in summaries if s.number == number), None)
        tally = (
            SegmentTally(disk_id)
            if current is None
            else SegmentTally.from_summary(disk_id, current)
        )
        fd = open_segment(directory, number, create=not numbers)
        return cls(directory, disk_id, number, fd, tally)

    @property
    def path(self) -> Path:
        """The segment that appends go to."""
        return segment_path(self.directory, self.number)

    @property
    def batch_start(self) -> int:
        """The byte of the segment where the open batch's records begin."""
        return self._batch_start

    def live_summary(self) -> SegmentSummary:
        """The segment as appended so far (modification time 0: not taken from the file)."""
        return self.tally.summary(self.number, self.size, 0)

    def stat_summary(self) -> SegmentSummary:
        """The segment with its size and modification time as the file has them now."""
        stat = os.fstat(self.fd)
        return self.tally.summary(self.number, stat.st_size, stat.st_mtime_ns)

    def begin(self, seq: int) -> None:
        """Start the records of batch `seq` at the segment's end (the caller checked that none
        is open)."""
        self.batch_seq = seq
        self._batch_start = self.size
        self._next_starts_group = True
        self._tally_at_begin = self.tally.copy()
        self._batch_records = 0
        self._batch_undo_bytes = 0

    def roll(self) -> SegmentSummary:
        """Seal the segment and start the next one; returns the sealed one's summary. Raises
        JournalIOError when the sync fails; OSError when the new segment cannot be created."""
        # The last commit record goes to stable storage before the segment is sealed.
        datasync(self.fd, self.path)
        sealed = self.stat_summary()
        fd = open_segment(self.directory, self.number + 1, create=True)
        os.close(self.fd)
        self.fd = fd
        self.number += 1
        self.size = 0
        self.tally = SegmentTally(self.disk_id)
        return sealed

    def append(self, seq: int, offset: int, old: bytes | memoryview, time_ns: int) -> None:
        """Append the old data of `[offset, offset + len(old))` to batch `seq`, the open one.
        Buffered: durable only after `sync()`. Raises JournalIOError."""
        data = old if isinstance(old, bytes) else bytes(old)
        record = UndoRecord(
            disk=self.disk_id,
            seq=seq,
            offset=offset,
            length=len(data),
            time_ns=time_ns,
            data=data,
            group_start=self._next_starts_group,
        )
        self._next_starts_group = False
        head, payload = encode_record_parts(record)
        self.tally.add_undo(self.size, self.disk_id, seq, len(data), time_ns)
        self._batch_records += 1
        self._batch_undo_bytes += len(data)
        self._pending.append(head)
        self._pending_bytes += len(head)
        if payload:
            self._pending.append(payload)
            self._pending_bytes += len(payload)
        self.size += len(head) + len(payload)
        if self._pending_bytes >= _FLUSH_BYTES or len(self._pending) >= _FLUSH_BUFFERS:
            self._flush()

    def _flush(self) -> None:
        buffers = [memoryview(b).cast("B") for b in self._pending]
        self._pending = []
        self._pending_bytes = 0
        self._unsynced = True
        self._write_buffers(buffers)

    def _write_buffers(self, buffers: list[memoryview]) -> None:
        first = 0
        try:
            while first < len(buffers):
                written = os.writev(self.fd, buffers[first : first + _IOV_MAX])
                while first < len(buffers) and written >= len(buffers[first]):
                    written -= len(buffers[first])
                    first += 1
                if written:
                    buffers[first] = buffers[first][written:]
        except OSError as exc:
            raise JournalIOError(self.path, "append", exc) from exc

    def sync(self) -> None:
        """Write out buffered records and fdatasync: every record appended so far is on stable
        storage when this returns. The next append starts a new sync group. Raises
        JournalIOError."""
        self._flush()
        datasync(self.fd, self.path)
        self._unsynced = False
        if self.batch_seq is not None:
            self._next_starts_group = True

    def drop_pending(self) -> None:
        """Forget the records buffered and not written (they never reached the target)."""
        self._pending = []
        self._pending_bytes = 0

    def keep_batch(self) -> tuple[int, int]:
        """Close the open batch with its records kept, synced if they were not yet. Returns its
        (records, bytes of old data). Raises JournalIOError."""
        if self._pending or self._unsynced:
            self.sync()
        self.batch_seq = None
        self._tally_at_begin = None
        return self._batch_records, self._batch_undo_bytes

    def cut_batch(self) -> None:
        """Cut the open batch's records off the segment, durably, and close the batch (the
        caller holds the journal lock exclusively). Raises JournalIOError."""
        self.drop_pending()
        truncate(self.fd, self.path, self._batch_start)
        self.size = self._batch_start
        self._unsynced = False
        self.batch_seq = None
        if self._tally_at_begin is not None:
            self.tally, self._tally_at_begin = self._tally_at_begin, None

    def queue_commit(
        self, seq: int, commit: CommitRecord, *, kept: bool, records: int, undo_bytes: int
    ) -> None:
        """Add the COMMIT record of batch `seq` to those `write_commits` writes, with what the
        journal knows filled in (disk, seq, what became of the undo, its records and bytes)."""
        self._unwritten.append(
            replace(
                commit,
                disk=self.disk_id,
                seq=seq,
                undo=UNDO_KEPT if kept else UNDO_DISCARDED,
                records=records,
                undo_bytes=undo_bytes,
            )
        )

    def queue_commits(self, commits: Sequence[CommitRecord]) -> None:
        """Add commit records written before (start-up writes those a crash lost)."""
        self._unwritten.extend(replace(c, disk=self.disk_id) for c in commits)

    def write_commits(self, *, sync: bool) -> bool:
        """Append the queued commit records (and fdatasync, `sync`). Returns whether there were
        any. On failure nothing of them stays in the segment and they stay queued. Raises
        JournalIOError."""
        if not self._unwritten:
            return False
        start = self.size
        encoded = [encode_commit(commit) for commit in self._unwritten]
        try:
            self._write_buffers([memoryview(b) for b in encoded])
            if sync:
                datasync(self.fd, self.path)
        except JournalIOError:
            # A partial record must not stay in the middle of the segment.
            try:
                os.ftruncate(self.fd, start)
            except OSError as exc:
                self.torn = True
                log.error("undo journal %s: cannot cut a failed append: %s", self.directory, exc)
            raise
        position = start
        for commit, record in zip(self._unwritten, encoded, strict=True):
            self.tally.add_commit(position, commit)
            position += len(record)
        self.size = position
        self._unwritten = []
        return True

    def reread(self, *, walk: bool) -> None:
        """Take the segment's size from the file again after it was truncated under the writer,
        and, `walk`, its tally from reading it."""
        self.size = os.fstat(self.fd).st_size
        if walk:
            self.tally = walk_segment(self.path, self.disk_id, last=True).tally

    def close(self) -> None:
        """Close the segment, dropping what is buffered. Safe to call twice."""
        self.drop_pending()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
