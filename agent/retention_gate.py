"""Where the apply path meets the retention policy.

Three small things, kept apart from the policy itself (agent/retention_task.py) so that the apply
path depends on nothing else of it:
- admission: under `on_full = "pause"`, while the retention drive is above its high-water mark
  (or the journals above `max_bytes`), a new batch is answered 507 RETENTION_FULL before anything
  is read from its body or written anywhere;
- the commit record that closes each committed batch in its disk's undo journal;
- the nudge that runs the policy right after a commit rather than at its next tick.
"""

from __future__ import annotations

import asyncio

from agent.state import BatchCommit
from blockio.undo_record import CommitRecord
from protocol.errors import RetentionFull


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
