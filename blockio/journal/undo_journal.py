"""The undo journal of one disk, joined from its parts: the segment files and their lock
(`segments`), the writer of the open end (`writer`), rollback and crash recovery (`rollback`),
and the catalog of what each segment holds (`catalog`, `index`).

Records (`blockio.journal.records`) are appended in the order the batch writer reads old data. A
batch's records never span two segments, so pruning deletes whole segments, oldest first, never
the one appends go to (`prune`), without splitting a batch.

Retention. The records of committed batches stay: they are the retention window. `end(commit=...)`
closes a committed batch with a COMMIT record. It is written right after the state commit but not
synced then: the next sync of the segment (the next batch's first group, or the roll to a new
segment) makes it durable. So a crash can lose only the newest batch's COMMIT record, and only
when that batch's undo records are in the segment (a batch that keeps no records syncs its COMMIT
at once); the agent writes it again at start-up from the state store (`append_commits`). The
catalog is saved to `index.json` when a segment is sealed, pruned, recovered and at close.

Locking. The journal takes its lock exclusively to truncate (a rollback, a discarded resync
batch, `recover`) and to prune, so records a reader holding it shared has seen never disappear:
a truncation waits for the reader; pruning is skipped until the next round. Appends need no
lock: a reader stops at the tail it saw, and a record at that tail was synced before any byte it
protects reached the target.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from blockio.disks.target import TargetDisk
from blockio.durable import fsync_directory
from blockio.journal.catalog import SegmentCatalog, load_summaries
from blockio.journal.index import SegmentSummary
from blockio.journal.records import CommitRecord
from blockio.journal.rollback import (
    UndoLost,
    cut_off_lost,
    roll_back_batch,
    roll_back_tail,
    tail_segment,
)
from blockio.journal.segments import (
    DEFAULT_SEGMENT_BYTES,
    JournalIOError,
    JournalLock,
    datasync,
    delete_segment,
    segment_numbers,
    segment_path,
)
from blockio.journal.writer import SegmentWriter

log = logging.getLogger(__name__)


class UndoJournal:
    """The undo records of one disk. Not thread-safe: one thread per disk drives it, like the
    target. Build it with `UndoJournal.open`."""

    def __init__(
        self,
        directory: Path,
        disk_id: str,
        segment_bytes: int,
        writer: SegmentWriter,
        lock: JournalLock,
        sealed: Sequence[SegmentSummary] = (),
    ) -> None:
        self.directory = directory
        self.disk_id = disk_id
        self.segment_bytes = segment_bytes
        self._writer = writer
        self._lock = lock
        # What a crash may have left: nothing may be appended before recover() has looked.
        self._needs_recovery = any(p.stat().st_size > 0 for p in self.segments())
        # Summaries of the sealed segments; the writer tallies the current one.
        self._catalog = SegmentCatalog(directory, disk_id, sealed)
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
        lock = JournalLock(directory)
        try:
            summaries, _walked = load_summaries(directory, disk_id)
            writer = SegmentWriter.open(directory, disk_id, summaries)
        except BaseException:
            lock.close()
            raise
        sealed = [s for s in summaries if s.number != writer.number]
        return cls(directory, disk_id, segment_bytes, writer, lock, sealed)

    @property
    def current_segment(self) -> Path:
        """The segment that appends go to."""
        return self._writer.path

    def segments(self) -> list[Path]:
        """Every segment file, oldest first."""
        return [segment_path(self.directory, n) for n in segment_numbers(self.directory)]

    def summaries(self) -> tuple[SegmentSummary, ...]:
        """A summary of every segment, oldest first, as of the last batch end, prune or
        recovery (the open batch is not in it). Safe to call from any thread: it is replaced
        whole, never changed in place."""
        return self._catalog.published

    @property
    def needs_reopening(self) -> bool:
        """A failed append could not be cut off the segment: its end is no longer what this
        object counts. Close it and open it again; `recover()` then cuts the torn tail."""
        return self._writer.torn

    @property
    def last_commit_seq(self) -> int:
        """The newest batch with a commit record in the journal (0: none)."""
        return self._catalog.last_commit_seq

    def pending_undo(self, seq: int) -> tuple[int, int]:
        """(records, bytes of old data) of batch `seq` found in the journal without its commit
        record: what start-up compares with the batch's data bytes. (0, 0) if none."""
        return self._catalog.pending_undo(seq)

    def mark_damaged(self, number: int, damage: str) -> None:
        """Record that sealed segment `number` was found damaged after it was summarized (a
        background scrub): the points that need it are no longer listed, and the sidecar keeps
        saying so. A segment pruned meanwhile is ignored."""
        if self._catalog.mark_damaged(number, damage):
            self._publish()
            self._save_index_quietly()

    def _publish(self) -> None:
        self._catalog.publish(self._writer.live_summary())

    def save_index(self) -> None:
        """Write the summaries to the sidecar (`index.json`), with each segment's size and
        modification time as they are now. Raises OSError."""
        self._catalog.save(self._writer.stat_summary())

    def _save_index_quietly(self) -> None:
        self._catalog.save_quietly(self._writer.stat_summary())

    @contextlib.contextmanager
    def exclusive(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the journal lock exclusively (see the module docstring); yields True, or False
        without the lock when `wait` is False and a reader holds it. Re-entrant."""
        with self._lock.exclusive(wait=wait) as locked:
            yield locked

    def _require_batch(self) -> int:
        if self._writer.batch_seq is None:
            raise RuntimeError(f"undo journal {self.directory}: no batch is open")
        return self._writer.batch_seq

    def _require_no_batch(self) -> None:
        if self._writer.batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: batch {self._writer.batch_seq} is still open"
            )

    def begin(self, seq: int) -> None:
        """Start the records of batch `seq`. Rolls to a new segment first when the current one
        has reached `segment_bytes`.

        Raises RuntimeError when a batch is already open or when the journal holds records that
        `recover()` has not looked at yet; JournalIOError/OSError when a new segment cannot be
        created or a commit record left over by a failed write cannot be written (a full drive:
        nothing of the batch is written then).
        """
        self._require_no_batch()
        if self._needs_recovery:
            raise RuntimeError(
                f"undo journal {self.directory}: recover() must run before the first batch"
            )
        if self._writer.torn:
            raise JournalIOError(
                self.current_segment,
                "append",
                OSError(errno.EIO, "an earlier failed append could not be cut off; reopen"),
            )
        if self._writer.write_commits(sync=True):
            self._publish()
        if self._writer.size >= self.segment_bytes:
            self._catalog.sealed.append(self._writer.roll())
            self._publish()
            self._save_index_quietly()
        self._writer.begin(seq)

    def append(self, offset: int, old: bytes | memoryview, time_ns: int) -> None:
        """Append the old data of `[offset, offset + len(old))` to the open batch. Buffered:
        durable only after `sync()`.

        Raises RuntimeError without an open batch; JournalIOError when writing fails.
        """
        self._writer.append(self._require_batch(), offset, old, time_ns)

    def sync(self) -> None:
        """Write out buffered records and fdatasync: every record appended so far is on stable
        storage when this returns. The next append starts a new sync group.

        Raises JournalIOError.
        """
        self._writer.sync()

    def _cut_batch(self) -> None:
        with self.exclusive():
            self._writer.cut_batch()
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
            records, undo_bytes = self._writer.keep_batch()
        else:
            self._cut_batch()
            records, undo_bytes = 0, 0
        if commit is None:
            self._publish()
            return
        self._writer.queue_commit(seq, commit, kept=keep, records=records, undo_bytes=undo_bytes)
        if self._writer.write_commits(sync=records == 0):
            self._publish()

    def append_commits(self, commits: Sequence[CommitRecord]) -> None:
        """Append commit records outside a batch and sync them: start-up writes those a crash
        lost. Raises RuntimeError while a batch is open; JournalIOError."""
        self._require_no_batch()
        self._writer.queue_commits(commits)
        if self._writer.write_commits(sync=True):
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
        self._writer.drop_pending()
        undone = roll_back_batch(
            target, self.current_segment, self.disk_id, seq, self._writer.batch_start
        )
        self._cut_batch()
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
        open_seq = self._writer.batch_seq
        if open_seq is not None:
            if lost.seq != open_seq or lost.path != self.current_segment:
                raise ValueError(
                    f"undo journal {self.directory}: batch {open_seq} is open, not batch {lost.seq}"
                )
            self._cut_batch()
            return
        number = tail_segment(self.directory, lost)
        current = number == self._writer.number
        with self.exclusive():
            cut_off_lost(lost, self._writer.fd if current else None)
        self._writer.reread(walk=current)
        if not current:
            self._catalog.refresh(number)
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
        if self._writer.batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: recover() with batch {self._writer.batch_seq} open"
            )
        current = (self._writer.number, self._writer.fd)
        with self.exclusive():
            undone, touched = roll_back_tail(
                self.directory, self.disk_id, target, committed_seq, current
            )
        self._writer.reread(walk=self._writer.number in touched)
        self._needs_recovery = False
        for number in touched - {self._writer.number}:
            self._catalog.refresh(number)
        self._publish()
        for summary in self._catalog.published:
            if summary.damage is not None:
                self._catalog.log_damage(summary)
        self._save_index_quietly()
        return undone

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
        oldest = [s.number for s in self._catalog.sealed[: len(numbers)]]
        if numbers != oldest or self._writer.number in numbers:
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
                    freed += delete_segment(segment_path(self.directory, number))
                    self._catalog.sealed.pop(0)
            finally:
                try:
                    fsync_directory(self.directory)
                finally:
                    self._publish()
                    self._save_index_quietly()
        return freed

    def close(self) -> None:
        """Close the segment. Records appended but not synced are dropped, as a crash would drop
        them; an open batch stays in the journal for `recover()`. Without an open batch, commit
        records are made durable and the index is saved first. Safe to call twice."""
        self._writer.drop_pending()
        if self._writer.fd >= 0:
            if self._writer.batch_seq is None and not self._needs_recovery:
                try:
                    if self._writer.write_commits(sync=False):
                        self._publish()
                    datasync(self._writer.fd, self._writer.path)
                except JournalIOError as exc:
                    log.error("undo journal %s: %s", self.directory, exc)
                self._save_index_quietly()
            self._writer.close()
            self._lock.close()

    def __enter__(self) -> UndoJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
