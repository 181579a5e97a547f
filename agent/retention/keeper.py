"""The retention policy at run time: one background task per agent (a cleanup context).

Before the agent answers, it writes the commit records a crash lost (`complete_commit_records`),
so every journal describes every committed batch again, and runs the policy once.

Then every TICK_SECONDS, and right after each commit (`RetentionGate.committed`), it:
1. reads each journal's segment summaries and the retention file system's size and free space;
2. asks `blockio.journal.pruning.decide_pruning` what to delete (window, max_bytes, high water);
3. deletes those segments on each disk's I/O thread (`UndoJournal.prune`: skipped for this round
   when a recovery export or a check holds that journal);
4. under `on_full = "pause"`, sets or clears the gate that answers 507 RETENTION_FULL.
Pruning outside the window (on_full = "shrink") is logged as a warning and counted in
`mtagent_retention_pruned_bytes_total{reason="max_bytes"|"high_water"}`.

Every SCRUB_INTERVAL_SECONDS it also reads one sealed segment whole and verifies every record
(round robin): damage that appeared on the drive after the segment was written (nothing changed
its size or time, so start-up trusts its cached summary) is found and its points withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.config import RetentionConfig
from agent.log_fields import log_fields
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate, complete_commit_records
from agent.replication.state import StateStore
from agent.retention.metrics import RetentionMetrics
from blockio.journal.index import SegmentSummary, restorable_floor, walk_segment
from blockio.journal.pruning import (
    WINDOW,
    Deletion,
    DriveSpace,
    RetentionPolicy,
    SegmentState,
    decide_pruning,
)
from blockio.journal.records import UNDO_MISSING
from blockio.journal.segments import JournalIOError, segment_path
from blockio.journal.undo_journal import UndoJournal
from protocol.documents import DiskState

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
# Commits come in bursts: the policy runs at most this often because of them.
MIN_TICK_GAP_SECONDS = 0.1
SCRUB_INTERVAL_SECONDS = 60.0


def drive_space(path: Path) -> DriveSpace:
    """Size and free bytes (for an unprivileged writer: f_bavail) of the file system of `path`."""
    stat = os.statvfs(path)
    return DriveSpace(stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _pruned_fields(disk: str, deletions: list[Deletion]) -> dict[str, dict[str, str]]:
    return log_fields(
        disk=disk,
        reason=deletions[0].reason,
        segments=",".join(str(d.number) for d in deletions),
        bytes=sum(d.size_bytes for d in deletions),
    )


def _log_points_dropped(
    disk: str, before: tuple[SegmentSummary, ...], pruned: set[int], last_seq: int
) -> None:
    """Log the recovery points of `disk` that pruning the segments numbered `pruned` took away:
    those older than the oldest batch its journal can still roll back to. Both floors come from
    the same summaries, so a batch committed meanwhile does not count."""
    old_floor = restorable_floor(before, last_seq)
    new_floor = restorable_floor([s for s in before if s.number not in pruned], last_seq)
    first = max(old_floor, 1)
    if new_floor > first:
        log.info(
            "disk %s: recovery points of batches %d..%d dropped with their undo",
            disk,
            first,
            new_floor - 1,
            extra=log_fields(disk=disk, first_seq=first, last_seq=new_floor - 1),
        )


class RetentionKeeper:
    """Applies the retention policy to the journals of `replicas` (see the module docstring).
    `clock` and `space` are injectable so that tests need not wait or fill a drive."""

    def __init__(
        self,
        config: RetentionConfig,
        replicas: Mapping[str, Replica],
        store: StateStore,
        gate: RetentionGate,
        metrics: RetentionMetrics,
        *,
        clock: Callable[[], int] = time.time_ns,
        space: Callable[[Path], DriveSpace] = drive_space,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.store = store
        self.gate = gate
        self.metrics = metrics
        self.policy = RetentionPolicy(
            window_ns=int(config.window_seconds * 1e9),
            max_bytes=config.max_bytes,
            high_water=config.high_water,
            on_full=config.on_full,
        )
        self._clock = clock
        self._space = space
        # Why the retention is still full after pruning, or None.
        self.full: str | None = None
        self._completed: weakref.WeakSet[UndoJournal] = weakref.WeakSet()
        self._paused_at: float | None = None
        self._scrubbed: tuple[str, int] = ("", 0)
        self._space_error: str | None = None
        # Per disk, the newest sealed segment logged (or found sealed at start).
        self._sealed: dict[str, int] = {}

    async def complete_commits(self) -> None:
        """Complete the commit records of every open journal not completed yet (new at start,
        or reopened since). A disk busy with a batch is left for the next round."""
        for replica in self.replicas.values():
            journal = replica.journal
            if journal is None or journal in self._completed or replica.lock.locked():
                continue
            async with replica.lock:
                if replica.journal is not journal:
                    continue
                try:
                    commits = await replica.run(
                        complete_commit_records, journal, self.store, replica.progress.last_seq
                    )
                except (OSError, JournalIOError, sqlite3.Error) as exc:
                    log.error(
                        "disk %s: commit records not completed: %s",
                        replica.id,
                        exc,
                        extra=log_fields(disk=replica.id),
                    )
                    continue
            self._completed.add(journal)
            lost = [c.seq for c in commits if c.undo == UNDO_MISSING]
            if lost:
                log.error(
                    "disk %s: the undo data of committed batches %s is missing from the journal "
                    "(the tail of a segment was lost?); recovery points older than batch %d are "
                    "no longer listed",
                    replica.id,
                    ", ".join(map(str, lost)),
                    lost[-1],
                    extra=log_fields(disk=replica.id),
                )
            elif commits:
                log.info(
                    "disk %s: wrote the commit records of batches %d..%d, lost in a crash",
                    replica.id,
                    commits[0].seq,
                    commits[-1].seq,
                    extra=log_fields(disk=replica.id),
                )

    async def tick(self) -> None:
        """One round of the policy."""
        await self.complete_commits()
        segments: list[SegmentState] = []
        for disk, replica in self.replicas.items():
            journal = replica.journal
            # A group failing over holds its journals: not pruned under its rollback.
            if journal is None or replica.failover is not None:
                continue
            summaries = journal.summaries()
            self._log_sealed(disk, summaries)
            segments += [
                SegmentState(disk, s.number, s.size_bytes, s.last_time_ns, i == len(summaries) - 1)
                for i, s in enumerate(summaries)
            ]
        try:
            space = await asyncio.to_thread(self._space, self.config.path)
        except OSError as exc:
            if self._space_error != str(exc):
                log.error(
                    "retention drive %s: cannot read its free space: %s", self.config.path, exc
                )
            self._space_error = str(exc)
            return
        self._space_error = None
        decision = decide_pruning(segments, self._clock(), self.policy, space)
        by_disk: dict[str, list[Deletion]] = defaultdict(list)
        for deletion in decision.deletions:
            by_disk[deletion.disk].append(deletion)
        for disk, deletions in by_disk.items():
            await self._prune(self.replicas[disk], deletions)
        self._set_pause(decision.pause)
        if decision.full != self.full:
            if decision.full is not None and decision.pause is None:
                log.error(
                    "retention drive %s still full after pruning all it can (%s)",
                    self.config.path,
                    decision.full,
                )
            self.full = decision.full

    def _log_sealed(self, disk: str, summaries: tuple[SegmentSummary, ...]) -> None:
        """Log the segments sealed since the last round (those sealed before the agent started
        are only noted)."""
        sealed = summaries[:-1]
        newest = sealed[-1].number if sealed else 0
        seen = self._sealed.get(disk)
        self._sealed[disk] = max(newest, seen or 0)
        if seen is None:
            return
        for summary in sealed:
            if summary.number > seen:
                log.info(
                    "disk %s: undo segment %d sealed (%s, batches %d..%d)",
                    disk,
                    summary.number,
                    _mib(summary.size_bytes),
                    summary.first_seq,
                    summary.last_seq,
                    extra=log_fields(disk=disk, segment=summary.number, bytes=summary.size_bytes),
                )

    async def _prune(self, replica: Replica, deletions: list[Deletion]) -> None:
        journal = replica.journal
        if journal is None:
            return
        numbers = [d.number for d in deletions]
        last_seq = replica.progress.last_seq
        before = journal.summaries()
        try:
            freed = await replica.run(journal.prune, numbers)
        except (ValueError, JournalIOError) as exc:
            # The journal changed (reopened, rolled) since its summaries were read: next round.
            log.warning(
                "disk %s: pruning put off: %s", replica.id, exc, extra=log_fields(disk=replica.id)
            )
            return
        if not freed:
            log.info(
                "disk %s: pruning put off: a recovery or check is reading the journal",
                replica.id,
                extra=log_fields(disk=replica.id),
            )
            return
        for deletion in deletions:
            self.metrics.pruned_bytes.labels(deletion.reason).inc(deletion.size_bytes)
            self.metrics.pruned_segments.labels(deletion.reason).inc()
        early = [d for d in deletions if d.reason != WINDOW]
        if early:
            log.warning(
                "disk %s: retention full (%s): pruned %d undo segments (%s) ahead of the "
                "retention window; its oldest recovery points are gone",
                replica.id,
                early[0].reason,
                len(early),
                _mib(sum(d.size_bytes for d in early)),
                extra=_pruned_fields(replica.id, early),
            )
        on_time = [d for d in deletions if d.reason == WINDOW]
        if on_time:
            log.info(
                "disk %s: pruned %d undo segments (%s) older than the retention window",
                replica.id,
                len(on_time),
                _mib(sum(d.size_bytes for d in on_time)),
                extra=_pruned_fields(replica.id, on_time),
            )
        if replica.progress.state == DiskState.OK:
            _log_points_dropped(replica.id, before, set(numbers), last_seq)

    def _set_pause(self, reason: str | None) -> None:
        now = time.monotonic()
        if self._paused_at is not None:
            self.metrics.paused_seconds.inc(now - self._paused_at)
            self._paused_at = now if reason is not None else None
        elif reason is not None:
            self._paused_at = now
        if (reason is None) != (self.gate.paused is None):
            if reason is not None:
                log.warning(
                    "retention full (%s): new batches are refused with 507 RETENTION_FULL "
                    "until space returns (on_full = pause)",
                    reason,
                    extra=log_fields(retention="paused", reason=reason),
                )
            else:
                log.info(
                    "retention has room again: new batches are accepted",
                    extra=log_fields(retention="accepting"),
                )
        self.gate.paused = reason

    async def scrub_one(self) -> None:
        """Read the next sealed segment (round robin over disks) whole and verify it."""
        candidates = sorted(
            (disk, summary.number)
            for disk, replica in self.replicas.items()
            if replica.journal is not None
            for summary in replica.journal.summaries()[:-1]
            if summary.damage is None
        )
        if not candidates:
            return
        after = [c for c in candidates if c > self._scrubbed]
        disk, number = (after or candidates)[0]
        self._scrubbed = (disk, number)
        replica = self.replicas[disk]
        journal = replica.journal
        if journal is None:
            return
        path = segment_path(journal.directory, number)
        try:
            walk = await asyncio.to_thread(walk_segment, path, disk, last=False)
        except OSError:
            return  # pruned meanwhile
        if walk.tally.problems:
            await replica.run(journal.mark_damaged, number, walk.tally.problems[0])

    async def run(self) -> None:
        """Run rounds until cancelled; a failed round is logged and the next one comes."""
        last_scrub = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await self.gate.wakeup.wait()
            self.gate.wakeup.clear()
            try:
                await self.tick()
                if time.monotonic() - last_scrub >= SCRUB_INTERVAL_SECONDS:
                    last_scrub = time.monotonic()
                    await self.scrub_one()
            except Exception:
                log.exception("retention policy round failed")
            await asyncio.sleep(MIN_TICK_GAP_SECONDS)
