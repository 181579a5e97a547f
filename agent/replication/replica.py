"""One replicated disk at run time: its target device, undo journal, I/O thread and progress."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from agent.config import DiskConfig, target_location
from agent.log_fields import log_fields
from agent.metrics import CRASH_RECOVERY_FAILED, STATE_BEHIND_JOURNAL, DiskSnapshot
from agent.replication.inflight_writes import InflightWrites
from agent.replication.state import DiskProgress, FailoverPhase, FailoverRecord, StateStore
from blockio.disks.safety import DeviceProtected, ExpectedSize, expected_size, open_for_replication
from blockio.disks.target import TargetDisk, TargetError
from blockio.journal.records import JournalCorrupt
from blockio.journal.rollback import UndoLost
from blockio.journal.segments import DEFAULT_SEGMENT_BYTES, JournalIOError
from blockio.journal.undo_journal import UndoJournal
from protocol.documents import Disk, DiskState
from protocol.errors import FailedOver, TargetUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# The persisted states in which the disk takes only resync batches (the Disk's `resync`).
_NEEDS_RESYNC = frozenset({DiskState.RESYNC_REQUIRED, DiskState.RESYNCING, DiskState.RECOVERED})


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
    # Why the target is `protected` (in use on this host or too small); "" when it is not.
    protected_reason: str = ""
    # Where the size the target had when last opened is remembered (None: not remembered).
    store: StateStore | None = None
    # Size at which the undo journal starts a new segment (retention.segment_bytes).
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What batches wrote that a rollback could still take back, for readers without the lock.
    inflight: InflightWrites = field(default_factory=InflightWrites)
    # Gaps detected since the agent started, by cause (agent.metrics.GAP_CAUSES).
    gaps: dict[str, int] = field(default_factory=dict)
    # The failover of the disk's group while there is one (agent.recovery.failover): the disk
    # then takes no batch, and once it is released the agent leaves its target alone.
    failover: FailoverRecord | None = None
    executor: ThreadPoolExecutor = field(init=False)
    # Whether state changes are logged yet (`start_logging_state`), and the state last logged.
    _logging_states: bool = field(default=False, init=False, repr=False)
    _logged_state: DiskState | None = field(default=None, init=False, repr=False)
    _logging_state: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"disk-{self.config.id}")

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def state(self) -> DiskState:
        """The docs/protocol.md state: `protected` while the target is in use on this host,
        `missing` while it cannot be found or opened, else the persisted state. A failed-over
        disk is `failed_over` whether its target is open or not (released, it may be gone)."""
        if self.progress.state == DiskState.FAILED_OVER:
            return DiskState.FAILED_OVER
        if self.target is None:
            return DiskState.PROTECTED if self.protected_reason else DiskState.MISSING
        return self.progress.state

    @property
    def state_reason(self) -> str:
        """Why the disk is in its state when that is not `ok` ("" when nothing says why)."""
        state = self.state
        if state == DiskState.PROTECTED:
            return self.protected_reason
        if state == DiskState.MISSING:
            return self.unavailable_reason
        if state in (DiskState.RESYNC_REQUIRED, DiskState.RECOVERED):
            return self.progress.resync_reason
        return ""

    def start_logging_state(self) -> None:
        """Log the disk's state as the agent found it, and from now on each change of it
        (`log_state_change`). The daemon calls it once its start can no longer be refused, so
        that a refused start says one line."""
        with self._logging_state:
            self._logging_states = True
        self.log_state_change()

    def log_state_change(self) -> None:
        """Log the disk's state at info when it is not the one last logged (the first time
        without PREVIOUS), with the fields DISK, STATE, PREVIOUS and REASON; nothing before
        `start_logging_state`. Called wherever the state may change; safe from any thread."""
        with self._logging_state:
            if not self._logging_states:
                return
            state, previous = self.state, self._logged_state
            if state == previous:
                return
            self._logged_state = state
        reason = self.state_reason or None
        fields = log_fields(disk=self.id, state=state, previous=previous, reason=reason)
        if previous is None:
            log.info("disk %s: state %s", self.id, state, extra=fields)
        else:
            log.info("disk %s: state %s (was %s)", self.id, state, previous, extra=fields)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking `fn(*args)` on this disk's I/O thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def locate_blocking(self) -> tuple[Path, Path | None]:
        """Where the target is now: (device node or file, its sysfs directory when known).

        A `scsi_uuid` target is looked up afresh each time (a re-attached disk may come back
        under another node). Raises TargetUnusable when no single disk has it.
        """
        return target_location(self.config)

    def _expected_size(self) -> ExpectedSize | None:
        seen, seen_ns = self.store.target_size(self.id) if self.store is not None else (0, 0)
        return expected_size(self.config.source_size_bytes, seen, seen_ns)

    def open_blocking(self) -> int:
        """`_open_blocking`, and the state it leaves the disk in logged (`log_state_change`)."""
        try:
            return self._open_blocking()
        except Exception as exc:
            self.unavailable_reason = str(exc)
            raise
        finally:
            self.log_state_change()

    def _open_blocking(self) -> int:
        """Find the target, check that nothing on this host uses it, open it (a block device
        exclusively), open the journal and roll back a batch cut off by a crash or by the
        device going away. A gap found on the way makes the disk `resync_required`
        (`_recover_journal`).

        Returns the number of undo records rolled back. Raises DeviceProtected (the replica is
        then `protected`), TargetError, OSError or sqlite3.Error when the target, journal or
        store cannot be used (the replica then stays `missing`).
        """
        try:
            node, disk_dir = self.locate_blocking()
            target = open_for_replication(
                node,
                disk_dir=disk_dir,
                expected=self._expected_size(),
                direct_io=self.config.direct_io,
            )
        except DeviceProtected as exc:
            if not self.protected_reason:
                log.error(
                    "disk %s: PROTECTED, not written: %s",
                    self.id,
                    exc,
                    extra=log_fields(disk=self.id),
                )
            self.protected_reason = "; ".join(exc.reasons)
            raise
        except BaseException:
            self.protected_reason = ""
            raise
        self.protected_reason = ""
        journal: UndoJournal | None = None
        try:
            journal = UndoJournal.open(self.journal_dir, self.id, segment_bytes=self.segment_bytes)
            undone = self._recover_journal(journal, target)
            if self.store is not None and self.store.target_size(self.id)[0] != target.size_bytes:
                self.store.record_target_size(self.id, target.size_bytes, time.time_ns())
        except BaseException:
            # A disk that cannot be opened is tried again at its next batch: nothing may leak.
            if journal is not None:
                journal.close()
            target.close()
            raise
        self.target, self.journal = target, journal
        self.unavailable_reason = ""
        if undone:
            log.warning(
                "disk %s: rolled back %d undo records of batch %d cut off by a crash or a removal",
                self.id,
                undone,
                self.progress.last_seq + 1,
                extra=log_fields(disk=self.id),
            )
        return undone

    def _recover_journal(self, journal: UndoJournal, target: TargetDisk) -> int:
        """`journal.recover()`, after checking the journal against the store; a gap is recorded
        (`require_resync`) before the journal is changed, so that a crash cannot forget it.

        - The journal writes a batch's COMMIT record only after the store committed it: a
          journal that committed batches the store does not know means state.db went back (an
          old backup restored, or lost). Those batches are on the target: they are not rolled
          back, and the store learns the newest one's seq, so that batch numbers go on after it.
        - A batch cut off whose undo records cannot be read back leaves part of it on the
          target: its records are dropped, unapplied.

        Returns the number of undo records rolled back. Raises what `recover()` raises (but
        UndoLost), sqlite3.Error.
        """
        committed = self.progress.last_seq
        journal_seq = journal.last_commit_seq
        if journal_seq > committed:
            self.require_resync(
                STATE_BEHIND_JOURNAL,
                f"the undo journal committed batches up to {journal_seq} but state.db knows "
                f"only up to {committed} (state.db restored from an older copy, or lost): the "
                "target holds writes the agent has no record of",
                last_seq=journal_seq,
            )
            committed = journal_seq
        try:
            return journal.recover(target, committed)
        except UndoLost as lost:
            self.require_resync(
                CRASH_RECOVERY_FAILED,
                f"{lost}; it was cut off by a crash or a removal, and the target may hold part "
                "of it",
            )
            journal.discard_lost(lost)
            return journal.recover(target, committed)

    def require_resync(self, cause: str, reason: str, *, last_seq: int = 0) -> None:
        """A gap detected: the target no longer holds what the agent acknowledged, and only a
        resync can tell what differs. Makes the disk `resync_required` with `reason` (durable on
        return when the replica has a store), counts it under `cause` (one of
        agent.metrics.GAP_CAUSES) and logs it. `last_seq`: see `StateStore.require_resync`.

        Blocking: call it on the disk's I/O thread. Raises sqlite3.Error.
        """
        if self.store is not None:
            self.progress = self.store.require_resync(
                self.id, reason, time.time_ns(), last_seq=last_seq
            )
        else:
            recovered = self.progress.state == DiskState.RECOVERED
            state = DiskState.RECOVERED if recovered else DiskState.RESYNC_REQUIRED
            self.progress = replace(
                self.progress,
                last_seq=max(self.progress.last_seq, last_seq),
                state=state,
                resync_reason=reason,
            )
        self.gaps[cause] = self.gaps.get(cause, 0) + 1
        log.warning(
            "disk %s: RESYNC REQUIRED (%s): %s",
            self.id,
            cause,
            reason,
            extra=log_fields(disk=self.id, cause=cause),
        )
        if self.target is not None:  # while opening, `open_blocking` logs where it ends
            self.log_state_change()

    async def ensure_open(self) -> TargetDisk:
        """The open target, opening it first if needed; TargetUnavailable (503) otherwise."""
        if self.target is None:
            try:
                await self.run(self.open_blocking)
            except (TargetError, JournalCorrupt, JournalIOError, OSError, sqlite3.Error) as exc:
                self.unavailable_reason = str(exc)
                raise TargetUnavailable(f"disk {self.id}: {exc}") from exc
        assert self.target is not None
        return self.target

    def mark_unavailable(self, reason: str) -> None:
        """Drop the open target after an I/O failure; the next batch reopens and recovers."""
        log.error(
            "disk %s: target unavailable: %s", self.id, reason, extra=log_fields(disk=self.id)
        )
        target, journal = self.target, self.journal
        self.target = self.journal = None
        self.unavailable_reason = reason
        if target is not None:
            self.executor.submit(_close_quietly, target, journal)
        self.log_state_change()

    def detach(self, reason: str) -> None:
        """The device went away: stop all I/O through it at once, then drop it as
        `mark_unavailable` does. A batch in flight fails at its next read or write and its
        rollback cannot reach the device, so its undo records stay in the journal, and
        `open_blocking` rolls them back when the device returns."""
        if self.target is not None:
            self.target.revoke(reason)
        self.mark_unavailable(reason)

    @property
    def released(self) -> bool:
        """Whether a failover released the target: the agent must not open it again until the
        group is reprotected."""
        return self.failover is not None and self.failover.phase == FailoverPhase.RELEASED

    def refuse_if_failed_over(self) -> None:
        """Raise FailedOver (409) while the disk's group is failing over or failed over: the
        disk takes no batch and answers no hashes request until the group is reprotected."""
        failover = self.failover
        if failover is None:
            return
        point = f" to {failover.point.id}" if failover.point is not None else ""
        raise FailedOver(
            f"disk {self.id}: group {self.config.group} is failing over{point} (phase "
            f"{failover.phase}); it takes batches again once reprotected",
            group=self.config.group,
            phase=failover.phase.value,
        )

    def release_blocking(self, reason: str) -> None:
        """Close target and journal for good (a failover hands the disk over): every
        descriptor closed, the exclusive open dropped. On the I/O thread, after pending work."""
        self.close_blocking()
        self.unavailable_reason = reason

    def close_blocking(self) -> None:
        """Close target and journal (on the I/O thread, after pending work)."""
        _close_quietly(self.target, self.journal)
        self.target = self.journal = None

    def describe(self) -> Disk:
        """The Disk document of docs/protocol.md section 2."""
        target = self.target
        progress = self.progress
        resyncing = progress.state == DiskState.RESYNCING
        return Disk(
            id=self.id,
            group=self.config.group,
            size_bytes=target.size_bytes if target else 0,
            sector_bytes=target.sector_bytes if target else 0,
            state=self.state,
            last_seq=progress.last_seq,
            last_source_time_ns=progress.last_source_time_ns,
            resync=progress.state in _NEEDS_RESYNC,
            # Where a cut-off resync resumes (README "Resync and verify").
            resync_offset=progress.resync.offset if resyncing else 0,
            # Why the disk needs a resync when the agent found a gap (README "Detected gaps").
            resync_reason=progress.resync_reason,
            failover_phase="" if self.failover is None else self.failover.phase.value,
            failover_point=(
                ""
                if self.failover is None or self.failover.point is None
                else self.failover.point.id
            ),
        )

    def snapshot(self) -> DiskSnapshot:
        """The metrics view of this disk."""
        return DiskSnapshot(
            disk=self.id,
            group=self.config.group,
            state=self.state,
            last_seq=self.progress.last_seq,
            last_source_time_ns=self.progress.last_source_time_ns,
            size_bytes=self.target.size_bytes if self.target else 0,
            gaps=dict(self.gaps),
        )


def _close_quietly(target: TargetDisk | None, journal: UndoJournal | None) -> None:
    for resource in (journal, target):
        if resource is not None:
            try:
                resource.close()
            except (OSError, JournalIOError) as exc:
                log.warning("closing %s: %s", resource, exc)
