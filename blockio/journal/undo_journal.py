"""The undo journal of one disk: append-only segment files of undo records.

Layout: `<retention>/<disk-id>/seg-<8 digit number>.undo`; records are those of
`blockio.journal.records`, appended in the order the batch writer reads old data. A batch's records
never span two segments, so whole segments can later be pruned without splitting a batch.

Durability rule the batch writer relies on: the records of a group are synced (`sync()`) before
any byte of that group touches the target. So after a crash, every record whose extent may have
been written is durable, and only the last sync group of the open batch may be incomplete; such a
group never touched the target. Its first record carries FLAG_GROUP_START, and recovery skips the
group when any of its records is damaged instead of failing (see `_apply_newest_first`).

Retention. The records of committed batches stay: they are the retention window. `end(commit=...)`
closes a committed batch with a COMMIT record. It is written right after the state commit but not
synced then: the next sync of the segment (the next batch's first group, or the roll to a new
segment) makes it durable. So a crash can lose only the newest batch's COMMIT record, and only
when that batch's undo records are in the segment (a batch that keeps no records syncs its COMMIT
at once); the agent writes it again at start-up from the state store (`append_commits`). The
journal keeps a summary of each segment as it goes (`summaries()`, `blockio.journal.index`) and
caches them in `index.json` when a segment is sealed, pruned, recovered and at close.

Pruning deletes whole segments, oldest first, never the one appends go to (`prune`).

Readers beside the agent (a recovery export, `mtagent check`) hold `<journal>/journal.lock`
shared while they read (`shared_lock`). The journal takes it exclusively to truncate (a rollback,
a discarded resync batch, `recover`) and to prune, so records a reader has seen never disappear
under it: a truncation waits for the reader; pruning is skipped until the next round. Appends need
no lock: a reader stops at the tail it saw, and a record at that tail was synced before any byte
it protects reached the target.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from blockio.disks.target import TargetDisk
from blockio.durable import fsync_directory
from blockio.errors import BlockIOError
from blockio.journal.index import (
    SEGMENT_NAME,
    SegmentSummary,
    SegmentTally,
    load_summaries,
    segment_numbers,
    walk_segment,
    write_sidecar,
)
from blockio.journal.records import (
    FLAG_GROUP_START,
    UNDO_DISCARDED,
    UNDO_KEPT,
    CommitRecord,
    JournalCorrupt,
    RecordHeader,
    RecordKind,
    UndoRecord,
    encode_commit,
    encode_record_parts,
    read_record,
    scan_headers,
    scan_headers_into,
)

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 256 << 20
LOCK_NAME = "journal.lock"

# Small records are gathered and written with one writev; large ones go out almost at once.
_FLUSH_BYTES = 1 << 20
# Linux IOV_MAX is 1024; each record is two buffers.
_IOV_MAX = 1024
_FLUSH_BUFFERS = 512


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


class JournalIOError(BlockIOError):
    """Writing, syncing or truncating a segment failed. `.errno` tells ENOSPC (retention drive
    full) from EIO and the rest; `str()` is one line naming the segment."""

    def __init__(self, path: Path, what: str, exc: OSError) -> None:
        reason = f"{what} failed: {exc.strerror or exc}"
        super().__init__(f"undo journal segment {path}: {reason}")
        self.path = path
        self.errno = exc.errno
        self.reason = reason


@contextlib.contextmanager
def shared_lock(directory: Path) -> Iterator[None]:
    """Hold the journal in `directory` shared: while held, the agent neither truncates nor prunes
    it (a truncation waits, pruning is put off). Waits while the agent holds it exclusively (one
    truncation or one pruning at a time, short). Does nothing when there is no journal yet.

    Raises OSError when the lock file cannot be opened.
    """
    if not directory.is_dir():
        yield
        return
    fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class UndoJournal:
    """The undo records of one disk. Not thread-safe: one thread per disk drives it, like the
    target. Build it with `UndoJournal.open`."""

    def __init__(
        self,
        directory: Path,
        disk_id: str,
        segment_bytes: int,
        number: int,
        fd: int,
        lock_fd: int,
        summaries: Sequence[SegmentSummary] = (),
    ) -> None:
        self.directory = directory
        self.disk_id = disk_id
        self.segment_bytes = segment_bytes
        self._number = number
        self._fd = fd
        self._lock_fd = lock_fd
        self._lock_depth = 0
        self._size = os.fstat(fd).st_size
        # What a crash may have left: nothing may be appended before recover() has looked.
        self._needs_recovery = any(
            self._segment_path(n).stat().st_size > 0 for n in segment_numbers(directory)
        )
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._unsynced = False
        self._batch_seq: int | None = None
        self._batch_start = 0
        self._next_starts_group = False
        # Retention bookkeeping: summaries of sealed segments, a running tally of the current one
        # (and a copy to go back to when the open batch is undone), the open batch's counts.
        self._sealed = [s for s in summaries if s.number != number]
        current = next((s for s in summaries if s.number == number), None)
        self._tally = (
            SegmentTally(disk_id)
            if current is None
            else SegmentTally.from_summary(disk_id, current)
        )
        self._tally_at_begin: SegmentTally | None = None
        self._batch_records = 0
        self._batch_undo_bytes = 0
        # Commit records whose write failed (a full drive): written before anything else.
        self._unwritten: list[CommitRecord] = []
        self._published: tuple[SegmentSummary, ...] = ()
        self._publish()

    @classmethod
    def open(
        cls, directory: Path, disk_id: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> UndoJournal:
        """Open the journal in `directory` (created, and its parent fsynced, if missing) for
        appending to its newest segment (created if there is none).

        A journal that holds records must be `recover()`ed before its first `begin()`. Segment
        summaries come from the sidecar where it still matches, else from walking the segments
        (payloads verified: a damaged segment is summarized as damaged, not refused).
        Raises OSError when the directory or segment cannot be created or opened.
        """
        directory = Path(directory)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(directory.parent)
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            summaries, _walked = load_summaries(directory, disk_id)
            numbers = segment_numbers(directory)
            number = numbers[-1] if numbers else 1
            fd = cls._open_segment(directory, number, create=not numbers)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(directory, disk_id, segment_bytes, number, fd, lock_fd, summaries)

    @staticmethod
    def _open_segment(directory: Path, number: int, *, create: bool) -> int:
        path = directory / SEGMENT_NAME.format(number)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        # 0600: undo data is disk contents.
        fd = os.open(path, flags, 0o600)
        if create:
            # The name must be durable before records in the file are called durable.
            fsync_directory(directory)
        return fd

    def _segment_path(self, number: int) -> Path:
        return self.directory / SEGMENT_NAME.format(number)

    @property
    def current_segment(self) -> Path:
        """The segment that appends go to."""
        return self._segment_path(self._number)

    def segments(self) -> list[Path]:
        """Every segment file, oldest first."""
        return [self._segment_path(n) for n in segment_numbers(self.directory)]

    def summaries(self) -> tuple[SegmentSummary, ...]:
        """A summary of every segment, oldest first, as of the last batch end, prune or
        recovery (the open batch is not in it). Safe to call from any thread: it is replaced
        whole, never changed in place."""
        return self._published

    @property
    def last_commit_seq(self) -> int:
        """The newest batch with a commit record in the journal (0: none)."""
        return max((s.last_commit_seq for s in self._published), default=0)

    def pending_undo(self, seq: int) -> tuple[int, int]:
        """(records, bytes of old data) of batch `seq` found in the journal without its commit
        record: what start-up compares with the batch's data bytes. (0, 0) if none."""
        for summary in self._published:
            for pending_seq, records, undo_bytes in summary.pending:
                if pending_seq == seq:
                    return records, undo_bytes
        return 0, 0

    def mark_damaged(self, number: int, damage: str) -> None:
        """Record that sealed segment `number` was found damaged after it was summarized (a
        background scrub): the points that need it are no longer listed, and the sidecar keeps
        saying so. A segment pruned meanwhile is ignored."""
        for i, summary in enumerate(self._sealed):
            if summary.number == number and summary.damage is None:
                self._sealed[i] = replace(summary, damage=damage)
                self._log_damage(self._sealed[i])
                self._publish()
                self._save_index_quietly()

    def _publish(self) -> None:
        current = self._tally.summary(self._number, self._size, 0)
        self._published = (*self._sealed, current)

    def save_index(self) -> None:
        """Write the summaries to the sidecar (`index.json`), with each segment's size and
        modification time as they are now. Raises OSError."""
        summaries = list(self._sealed)
        stat = os.fstat(self._fd)
        summaries.append(self._tally.summary(self._number, stat.st_size, stat.st_mtime_ns))
        write_sidecar(self.directory, self.disk_id, summaries)

    def _save_index_quietly(self) -> None:
        try:
            self.save_index()
        except OSError as exc:
            # Only a cache: the next start walks the segments instead.
            log.warning("undo journal %s: index not saved: %s", self.directory, exc)

    @contextlib.contextmanager
    def exclusive(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the journal lock exclusively (see the module docstring); yields True, or False
        without the lock when `wait` is False and a reader holds it. Re-entrant."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield True
            finally:
                self._lock_depth -= 1
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        self._lock_depth = 1
        try:
            yield True
        finally:
            self._lock_depth = 0
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _require_batch(self) -> int:
        if self._batch_seq is None:
            raise RuntimeError(f"undo journal {self.directory}: no batch is open")
        return self._batch_seq

    def begin(self, seq: int) -> None:
        """Start the records of batch `seq`. Rolls to a new segment first when the current one
        has reached `segment_bytes`.

        Raises RuntimeError when a batch is already open or when the journal holds records that
        `recover()` has not looked at yet; JournalIOError/OSError when a new segment cannot be
        created or a commit record left over by a failed write cannot be written (a full drive:
        nothing of the batch is written then).
        """
        if self._batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: batch {self._batch_seq} is still open"
            )
        if self._needs_recovery:
            raise RuntimeError(
                f"undo journal {self.directory}: recover() must run before the first batch"
            )
        self._write_commits(sync=True)
        if self._size >= self.segment_bytes:
            self._roll()
        self._batch_seq = seq
        self._batch_start = self._size
        self._next_starts_group = True
        self._tally_at_begin = self._tally.copy()
        self._batch_records = 0
        self._batch_undo_bytes = 0

    def _roll(self) -> None:
        """Seal the current segment and start the next one."""
        # The last commit record goes to stable storage before the segment is sealed.
        self._datasync(self._fd, self.current_segment)
        stat = os.fstat(self._fd)
        sealed = self._tally.summary(self._number, stat.st_size, stat.st_mtime_ns)
        fd = self._open_segment(self.directory, self._number + 1, create=True)
        os.close(self._fd)
        self._fd = fd
        self._number += 1
        self._size = 0
        self._sealed.append(sealed)
        self._tally = SegmentTally(self.disk_id)
        self._publish()
        self._save_index_quietly()

    def append(self, offset: int, old: bytes | memoryview, time_ns: int) -> None:
        """Append the old data of `[offset, offset + len(old))` to the open batch. Buffered:
        durable only after `sync()`.

        Raises RuntimeError without an open batch; JournalIOError when writing fails.
        """
        seq = self._require_batch()
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
        self._tally.add_undo(self._size, self.disk_id, seq, len(data), time_ns)
        self._batch_records += 1
        self._batch_undo_bytes += len(data)
        self._pending.append(head)
        self._pending_bytes += len(head)
        if payload:
            self._pending.append(payload)
            self._pending_bytes += len(payload)
        self._size += len(head) + len(payload)
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
                written = os.writev(self._fd, buffers[first : first + _IOV_MAX])
                while first < len(buffers) and written >= len(buffers[first]):
                    written -= len(buffers[first])
                    first += 1
                if written:
                    buffers[first] = buffers[first][written:]
        except OSError as exc:
            raise JournalIOError(self.current_segment, "append", exc) from exc

    def _datasync(self, fd: int, path: Path) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise JournalIOError(path, "fdatasync", exc) from exc

    def sync(self) -> None:
        """Write out buffered records and fdatasync: every record appended so far is on stable
        storage when this returns. The next append starts a new sync group.

        Raises JournalIOError.
        """
        self._flush()
        self._datasync(self._fd, self.current_segment)
        self._unsynced = False
        if self._batch_seq is not None:
            self._next_starts_group = True

    def _truncate(self, fd: int, path: Path, size: int) -> None:
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            raise JournalIOError(path, f"truncate to {size} bytes", exc) from exc
        self._datasync(fd, path)

    def _truncate_batch(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        with self.exclusive():
            self._truncate(self._fd, self.current_segment, self._batch_start)
        self._size = self._batch_start
        self._unsynced = False
        self._batch_seq = None
        if self._tally_at_begin is not None:
            self._tally, self._tally_at_begin = self._tally_at_begin, None
        self._publish()

    def end(self, *, keep: bool, commit: CommitRecord | None = None) -> None:
        """Close the open batch after the caller committed it. keep=True: its records stay, as
        retention (made durable if they were not yet). keep=False (a resync batch): they are
        discarded; the segment is truncated back to the batch start and synced.

        `commit`: what the caller committed (source time, commit time, flags, tag); a COMMIT
        record is appended with what the journal knows filled in (disk, seq, what became of the
        undo, its record count and bytes). It is synced at once only when the batch keeps no
        record (see the module docstring). When its write fails (JournalIOError, e.g. a full
        drive), it is cut off again and written before the next batch.

        Raises RuntimeError without an open batch; JournalIOError.
        """
        seq = self._require_batch()
        if keep:
            if self._pending or self._unsynced:
                self.sync()
            self._batch_seq = None
            self._tally_at_begin = None
            undo, records, undo_bytes = UNDO_KEPT, self._batch_records, self._batch_undo_bytes
        else:
            self._truncate_batch()
            undo, records, undo_bytes = UNDO_DISCARDED, 0, 0
        if commit is None:
            self._publish()
            return
        self._unwritten.append(
            replace(
                commit,
                disk=self.disk_id,
                seq=seq,
                undo=undo,
                records=records,
                undo_bytes=undo_bytes,
            )
        )
        self._write_commits(sync=records == 0)

    def append_commits(self, commits: Sequence[CommitRecord]) -> None:
        """Append commit records outside a batch and sync them: start-up writes those a crash
        lost. Raises RuntimeError while a batch is open; JournalIOError."""
        if self._batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: batch {self._batch_seq} is still open"
            )
        self._unwritten.extend(replace(c, disk=self.disk_id) for c in commits)
        self._write_commits(sync=True)

    def _write_commits(self, *, sync: bool) -> None:
        if not self._unwritten:
            return
        start = self._size
        encoded = [encode_commit(commit) for commit in self._unwritten]
        try:
            self._write_buffers([memoryview(b) for b in encoded])
            if sync:
                self._datasync(self._fd, self.current_segment)
        except JournalIOError:
            # A partial record must not stay in the middle of the segment.
            try:
                os.ftruncate(self._fd, start)
            except OSError as exc:
                log.error("undo journal %s: cannot cut a failed append: %s", self.directory, exc)
            raise
        position = start
        for commit, record in zip(self._unwritten, encoded, strict=True):
            self._tally.add_commit(position, commit)
            position += len(record)
        self._size = position
        self._unwritten = []
        self._publish()

    def rollback(self, target: TargetDisk) -> int:
        """Undo the open batch on `target`: its records are read back from the segment one at a
        time and written newest first, the target is synced, then the segment is truncated back
        to the batch start and synced. Returns the number of records applied.

        A crash in the middle leaves the records in place, so `recover()` finishes the job (the
        records are the old data of one consistent state; applying them twice gives the same
        bytes). Raises RuntimeError without an open batch; UndoLost when a synced record of the
        batch is damaged (the batch stays open: `discard_lost`); TargetError; JournalIOError.
        """
        seq = self._require_batch()
        # Buffered records never reached the target: it is written only after a sync.
        self._pending = []
        self._pending_bytes = 0
        path = self.current_segment
        with open(path, "rb") as f:
            # A failed append may have left part of a record: that part was never synced.
            try:
                headers, _torn_at = scan_headers(f, path, self._batch_start)
            except JournalCorrupt as exc:
                raise UndoLost(seq, exc, self._batch_start) from exc
            undone = self._apply_newest_first(target, f, path, headers, at_tail=True)
        self._truncate_batch()
        return undone

    def discard_lost(self, lost: UndoLost) -> None:
        """Cut the records of the batch `lost` names off the journal without applying them, and
        sync: what `rollback()` or `recover()` could not put back. The caller must first have
        recorded, durably, that the target needs a resync: once the records are gone, nothing
        in the journal says so. Then the journal takes batches again (after `recover()`, which
        still has to run at start-up and now finds nothing to roll back).

        Raises ValueError when `lost` is not about the open batch, or (none open) not about the
        journal's tail; JournalIOError.
        """
        if self._batch_seq is not None:
            if lost.seq != self._batch_seq or lost.path != self.current_segment:
                raise ValueError(
                    f"undo journal {self.directory}: batch {self._batch_seq} is open, "
                    f"not batch {lost.seq}"
                )
            self._truncate_batch()
            return
        numbers = [n for n in segment_numbers(self.directory) if self._segment_path(n) == lost.path]
        if not numbers or any(
            self._segment_path(n).stat().st_size > 0
            for n in segment_numbers(self.directory)
            if n > numbers[0]
        ):
            raise ValueError(f"undo journal {self.directory}: {lost.path} is not its tail")
        number = numbers[0]
        with self.exclusive():
            fd = (
                self._fd if number == self._number else os.open(lost.path, os.O_RDWR | os.O_CLOEXEC)
            )
            try:
                self._truncate(fd, lost.path, lost.batch_start)
            finally:
                if fd != self._fd:
                    os.close(fd)
        self._size = os.fstat(self._fd).st_size
        self._refresh(number)
        self._publish()

    def recover(self, target: TargetDisk, committed_seq: int) -> int:
        """At start-up: cut a torn tail off, then roll back the records at the journal's tail
        whose seq is above `committed_seq` (a batch cut off by a crash), exactly as `rollback()`
        does. Returns the number of records applied.

        Committed records are left untouched and unread beyond their headers. Raises
        RuntimeError when a batch is open; UndoLost when the batch cut off cannot be rolled back
        (a synced record of it is damaged: `discard_lost`, then `recover()` again); JournalCorrupt
        when a segment is damaged elsewhere than in an unsynced tail; TargetError; JournalIOError.
        """
        if self._batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: recover() with batch {self._batch_seq} open"
            )
        with self.exclusive():
            undone, touched = self._recover(target, committed_seq)
        self._size = os.fstat(self._fd).st_size
        self._needs_recovery = False
        for number in touched:
            self._refresh(number)
        self._publish()
        for summary in self._published:
            if summary.damage is not None:
                self._log_damage(summary)
        self._save_index_quietly()
        return undone

    def _log_damage(self, summary: SegmentSummary) -> None:
        log.error(
            "undo journal %s: DAMAGED: %s; recovery points of disk %s that need this segment "
            "(older than batch %d) cannot be restored and are not listed (see mtagent check)",
            self._segment_path(summary.number),
            summary.damage,
            self.disk_id,
            summary.last_seq,
        )

    def _refresh(self, number: int) -> None:
        """Summarize segment `number` again after it was truncated."""
        walk = walk_segment(self._segment_path(number), self.disk_id, last=number == self._number)
        if number == self._number:
            self._tally = walk.tally
            return
        summary = walk.tally.summary(number, walk.size_bytes, walk.mtime_ns)
        self._sealed = [summary if s.number == number else s for s in self._sealed]

    def _recover(self, target: TargetDisk, committed_seq: int) -> tuple[int, set[int]]:
        undone = 0
        touched: set[int] = set()
        # Only the journal's very last records can be an unsynced group.
        at_tail = True
        for number in reversed(segment_numbers(self.directory)):
            path = self._segment_path(number)
            fd = self._fd if number == self._number else os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                with open(path, "rb") as f:
                    headers, torn_at = self._scan_for_recovery(f, path, committed_seq)
                    if torn_at is not None:
                        log.warning("undo journal %s: cut a torn tail at byte %d", path, torn_at)
                        self._truncate(fd, path, torn_at)
                        touched.add(number)
                    first_open = len(headers)
                    while first_open > 0 and headers[first_open - 1].seq > committed_seq:
                        first_open -= 1
                    cut_off = headers[first_open:]
                    if cut_off:
                        undone += self._apply_newest_first(target, f, path, cut_off, at_tail)
                        self._truncate(fd, path, cut_off[0].position)
                        touched.add(number)
                    at_tail = at_tail and not headers
            finally:
                if fd != self._fd:
                    os.close(fd)
            # The batch cut off by the crash ends here once a committed record is found.
            if first_open > 0:
                break
        return undone, touched

    @staticmethod
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
            first_open = len(headers)
            while first_open > 0 and headers[first_open - 1].seq > committed_seq:
                first_open -= 1
            raise UndoLost(headers[-1].seq, exc, headers[first_open].position) from exc
        return headers, torn_at

    def prune(self, numbers: Sequence[int], *, wait: bool = False) -> int:
        """Delete segments `numbers`: they must be the journal's oldest, and not the one appends
        go to. Oldest first, so that a crash in the middle leaves the newest segments, a chain
        that still ends at the present. Returns the bytes freed: 0, deleting nothing, when a
        reader holds the journal and `wait` is False (pruning waits for the next round).

        Raises ValueError for segments that are not the oldest or include the current one;
        JournalIOError when a file cannot be deleted.
        """
        numbers = sorted(numbers)
        if not numbers:
            return 0
        oldest = [s.number for s in self._sealed[: len(numbers)]]
        if numbers != oldest or self._number in numbers:
            raise ValueError(
                f"undo journal {self.directory}: only the oldest sealed segments can be pruned, "
                f"not {numbers}"
            )
        freed = 0
        with self.exclusive(wait=wait) as locked:
            if not locked:
                return 0
            try:
                for number in numbers:
                    path = self._segment_path(number)
                    try:
                        size = path.stat().st_size
                        os.unlink(path)
                    except FileNotFoundError:
                        size = 0
                    except OSError as exc:
                        raise JournalIOError(path, "delete", exc) from exc
                    freed += size
                    self._sealed.pop(0)
            finally:
                try:
                    fsync_directory(self.directory)
                finally:
                    self._publish()
                    self._save_index_quietly()
        return freed

    def _apply_newest_first(
        self,
        target: TargetDisk,
        f: BinaryIO,
        path: Path,
        headers: list[RecordHeader],
        at_tail: bool,
    ) -> int:
        """Write the old data of `headers` (records of the open batch, file order) to the
        target, newest first, then sync the target. Returns the number of records applied.
        Raises UndoLost when a record that may have been synced cannot be read.

        at_tail: these are the journal's last records, so their last sync group may never have
        been synced; a damaged record there means the group never touched the target.
        """
        for header in headers:
            if header.disk != self.disk_id:
                raise JournalCorrupt(
                    path,
                    header.position,
                    f"record of disk {header.disk!r} in the journal of {self.disk_id!r}",
                )
        last_group = max(
            (i for i, h in enumerate(headers) if h.flags & FLAG_GROUP_START), default=0
        )
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

    def close(self) -> None:
        """Close the segment. Records appended but not synced are dropped, as a crash would drop
        them; an open batch stays in the journal for `recover()`. Without an open batch, commit
        records are made durable and the index is saved first. Safe to call twice."""
        self._pending = []
        self._pending_bytes = 0
        if self._fd >= 0:
            if self._batch_seq is None and not self._needs_recovery:
                try:
                    self._write_commits(sync=False)
                    self._datasync(self._fd, self.current_segment)
                except JournalIOError as exc:
                    log.error("undo journal %s: %s", self.directory, exc)
                self._save_index_quietly()
            fd, self._fd = self._fd, -1
            os.close(fd)
            os.close(self._lock_fd)

    def __enter__(self) -> UndoJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
