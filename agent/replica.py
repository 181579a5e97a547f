"""One replicated disk at run time: its target device, undo journal, I/O thread and progress."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.config import DiskConfig
from agent.metrics import DiskSnapshot
from agent.state import RECOVERED, RESYNC_REQUIRED, RESYNCING, DiskProgress
from blockio.target import TargetDisk, TargetError
from blockio.undo_journal import JournalIOError, UndoJournal
from blockio.undo_record import JournalCorrupt
from protocol.errors import TargetUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Replica:
    """A configured disk and everything the agent holds open for it.

    All disk I/O of a replica runs on its own single thread, in submission
    order: a rollback queued after a write always runs after that write.
    """

    config: DiskConfig
    journal_dir: Path
    progress: DiskProgress
    target: TargetDisk | None = None
    journal: UndoJournal | None = None
    unavailable_reason: str = "not opened yet"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"disk-{self.config.id}")

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def state(self) -> str:
        """The PROTOCOL.md state: `missing` while the target cannot be opened."""
        return "missing" if self.target is None else self.progress.state

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking `fn(*args)` on this disk's I/O thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def open_blocking(self) -> int:
        """Open target and journal, rolling back a batch cut off by a crash.

        Returns the number of undo records rolled back. Raises TargetError or
        OSError when the target or journal cannot be used; the replica then
        stays `missing`.
        """
        path = self.config.path
        if path is None:
            raise TargetError(str(self.config.scsi_uuid), "SCSI-UUID targets are not resolved yet")
        target = TargetDisk.open(path)
        try:
            journal = UndoJournal.open(self.journal_dir, self.id)
            undone = journal.recover(target, self.progress.last_seq)
        except BaseException:
            target.close()
            raise
        self.target, self.journal = target, journal
        self.unavailable_reason = ""
        if undone:
            log.warning(
                "disk %s: rolled back %d undo records of batch %d cut off by a crash",
                self.id,
                undone,
                self.progress.last_seq + 1,
            )
        return undone

    async def ensure_open(self) -> TargetDisk:
        """The open target, opening it first if needed; TargetUnavailable (503) otherwise."""
        if self.target is None:
            try:
                await self.run(self.open_blocking)
            except (TargetError, JournalCorrupt, JournalIOError, OSError) as exc:
                self.unavailable_reason = str(exc)
                raise TargetUnavailable(f"disk {self.id}: {exc}") from exc
        assert self.target is not None
        return self.target

    def mark_unavailable(self, reason: str) -> None:
        """Drop the open target after an I/O failure; the next batch reopens and recovers."""
        log.error("disk %s: target unavailable: %s", self.id, reason)
        target, journal = self.target, self.journal
        self.target = self.journal = None
        self.unavailable_reason = reason
        if target is not None:
            self.executor.submit(_close_quietly, target, journal)

    def close_blocking(self) -> None:
        """Close target and journal (on the I/O thread, after pending work)."""
        _close_quietly(self.target, self.journal)
        self.target = self.journal = None

    def describe(self) -> dict[str, Any]:
        """The Disk object of PROTOCOL.md section 2."""
        target = self.target
        return {
            "id": self.id,
            "group": self.config.group,
            "size_bytes": target.size_bytes if target else 0,
            "sector_bytes": target.sector_bytes if target else 0,
            "state": self.state,
            "last_seq": self.progress.last_seq,
            "last_source_time_ns": self.progress.last_source_time_ns,
            "resync": self.progress.state in (RESYNC_REQUIRED, RESYNCING, RECOVERED),
        }

    def snapshot(self) -> DiskSnapshot:
        """The metrics view of this disk."""
        return DiskSnapshot(
            disk=self.id,
            group=self.config.group,
            state=self.state,
            last_seq=self.progress.last_seq,
            last_source_time_ns=self.progress.last_source_time_ns,
            size_bytes=self.target.size_bytes if self.target else 0,
        )


def _close_quietly(target: TargetDisk | None, journal: UndoJournal | None) -> None:
    for resource in (journal, target):
        if resource is not None:
            try:
                resource.close()
            except (OSError, JournalIOError) as exc:
                log.warning("closing %s: %s", resource, exc)
