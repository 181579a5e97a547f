"""Where the apply path meets the retention policy.

Three small things, kept apart from the policy itself (agent/retention/keeper.py) so that the apply
path depends on nothing else of it:
- admission: under `on_full = "pause"`, while the retention drive is above its high-water mark
  (or the journals above `max_bytes`), a new batch is answered 507 RETENTION_FULL before anything
  is read from its body or written anywhere;
- the commit record that closes each committed batch in its disk's undo journal;
- the nudge that runs the policy right after a commit rather than at its next tick.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from agent.replication.state import BatchCommit, StateStore
from blockio.journal.records import UNDO_DISCARDED, UNDO_KEPT, UNDO_MISSING, CommitRecord
from blockio.journal.undo_journal import UndoJournal
from protocol.errors import RetentionFull
from protocol.wire import BEGIN_FLAG_RESYNC


class RetentionGate:
    """Shared by the retention task (which sets `paused`) and every batch (which asks)."""

    def __init__(self) -> None:
        # Why new batches must wait for space, or None while they are welcome.
        self.paused: str | None = None
        self.wakeup = asyncio.Event()

    def admit(self, disk: str) -> None:
        """Raise RetentionFull (507) while the policy pauses replication; return otherwise."""
        reason = self.paused
        if reason is not None:
            raise RetentionFull(
                f"disk {disk}: the retention drive is full ({reason}); new batches wait until "
                "space returns (on_full = pause); nothing of this batch was written"
            )

    def committed(self) -> None:
        """A batch was committed: run the retention policy soon."""
        self.wakeup.set()


def commit_record(batch: BatchCommit) -> CommitRecord:
    """The commit record of `batch` for its undo journal (the journal fills in its undo)."""
    return CommitRecord(
        disk=batch.disk,
        seq=batch.seq,
        source_time_ns=batch.source_time_ns,
        committed_ns=batch.committed_ns,
        flags=tuple(sorted(batch.flags)),
        tag=None if batch.tag is None else dict(batch.tag),
    )


def complete_commit_records(
    journal: UndoJournal, store: StateStore, last_seq: int
) -> list[CommitRecord]:
    """Append the commit records `journal` lacks for batches the state store has committed, and
    return them. Only the newest batch's record can be lost in a crash (see
    `blockio.journal.undo_journal`), but whatever follows the journal's last commit record is
    completed:
    a batch whose undo records are all there (their bytes add up to its data bytes) is `kept`, a
    resync batch `discarded`, any other `missing` (the points before it can no longer be
    restored). A journal without any commit record (all pruned, or new) is left alone.

    Runs on the disk's I/O thread with no batch open. Raises JournalIOError, sqlite3.Error.
    """
    last_commit = journal.last_commit_seq
    if last_commit == 0 or last_commit >= last_seq:
        return []
    commits = []
    for batch in store.batch_rows(journal.disk_id, last_commit + 1, last_seq):
        records, undo_bytes = journal.pending_undo(batch.seq)
        if BEGIN_FLAG_RESYNC in batch.flags:
            undo = UNDO_DISCARDED
        elif undo_bytes == batch.data_bytes:
            undo = UNDO_KEPT
        else:
            undo = UNDO_MISSING
        commits.append(
            replace(commit_record(batch), undo=undo, records=records, undo_bytes=undo_bytes)
        )
    journal.append_commits(commits)
    return commits
