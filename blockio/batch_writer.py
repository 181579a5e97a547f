"""One batch applied to a target with its undo data made durable first.

Per group of writes: read the old data of every extent, append it to the undo journal, sync the
journal, and only then write the target. So whatever happens after that sync, the journal can
put back every byte the group may have changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blockio.disks.target import TargetDisk
from blockio.journal.records import CommitRecord
from blockio.journal.rollback import UndoLost
from blockio.journal.undo_journal import UndoJournal


@dataclass(frozen=True, slots=True)
class Write:
    """New content for `[offset, offset + length)`: `data`, or zeros when `data` is None."""

    offset: int
    length: int
    data: bytes | memoryview | None


class BatchWriter:
    """Applies the writes of batch `seq` to `target`, journaling undo data in `journal`.

    Driven from the one thread that owns the target. Lifecycle: `write_group()` any number of
    times, then `finish()` and, once the caller has committed the batch, `committed()`; or
    `rollback()` after any failure.
    """

    def __init__(
        self,
        target: TargetDisk,
        journal: UndoJournal,
        seq: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """Open batch `seq` in the journal (`journal.begin(seq)`)."""
        self.target = target
        self.journal = journal
        self.seq = seq
        self._clock = clock
        journal.begin(seq)

    def write_group(self, writes: Sequence[Write]) -> None:
        """Apply `writes` in order; where extents overlap, the later write wins.

        First the old data of every extent is read (all before any write of the group), appended
        to the journal and synced; then the target is written. Reading every extent up front is
        right even with overlaps: rolled back newest first, the oldest record of each byte is
        applied last.

        Raises ValueError when a write's data does not hold `length` bytes (before anything is
        read); TargetError (an extent outside the disk is caught while reading, before anything
        is written); JournalIOError.
        """
        for write in writes:
            if write.data is not None and len(write.data) != write.length:
                raise ValueError(
                    f"write at offset {write.offset}: {len(write.data)} bytes of data "
                    f"for length {write.length}"
                )
        self.target.prefetch((write.offset, write.length) for write in writes)
        old = [self.target.read(write.offset, write.length) for write in writes]
        now = self._clock()
        for write, data in zip(writes, old, strict=True):
            self.journal.append(write.offset, data, now)
        self.journal.sync()
        for write in writes:
            if write.data is None:
                self.target.write_zeros(write.offset, write.length)
            else:
                self.target.write(write.offset, write.data)

    def finish(self) -> None:
        """Sync the target: every byte of the batch is on stable storage when this returns.

        Raises TargetError.
        """
        self.target.sync()

    def committed(self, *, keep_undo: bool, commit: CommitRecord | None = None) -> None:
        """The caller has committed the batch: keep its undo records as retention
        (keep_undo=True) or discard them (a resync batch), and close the batch in the journal
        with a commit record of `commit` (see `UndoJournal.end`).

        Raises JournalIOError.
        """
        self.journal.end(keep=keep_undo, commit=commit)

    def rollback(self) -> int:
        """Put back the target as it was before the batch and drop the batch's undo records.
        Returns the number of records applied.

        Raises UndoLost when a record of the batch cannot be read back (the target then holds
        part of the batch: see `discard`); TargetError; JournalIOError.
        """
        return self.journal.rollback(self.target)

    def discard(self, lost: UndoLost) -> None:
        """After `rollback()` raised `lost`: drop the batch's undo records unapplied and close
        the batch in the journal. Call it only once the target is known to need a resync.

        Raises JournalIOError.
        """
        self.journal.discard_lost(lost)
