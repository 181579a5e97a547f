"""Failing one consistency group over while the agent goes on replicating the others, and taking
it back into replication afterwards (`reprotect`).

A failover moves through the phases of `FailoverPhase`, each recorded in state.db before the next
step begins, so that an agent killed anywhere finishes the same failover, to the same point, at
its next start (or when the failover is asked for again):

1. `requested`: the request is recorded; the group's disks refuse batches (409 FAILED_OVER). A
   batch in flight is let finish or roll back (the failover waits for each disk's lock, which a
   batch holds from its first byte to its answer); then the failover holds every disk's lock and
   journal (exclusively: no export, check or pruning reads or changes it meanwhile).
2. `rolling_back`: the point is chosen (among the points the running agent lists, as `recover`
   chooses them) and recorded together with the disks' new state, `failed_over`, in one
   transaction: from then on a disk half rolled back says so. Each disk is rolled back in place
   from its journal, everything written read back and compared, and synced. Rolling back is
   idempotent (the journal is only read), so a cut-off rollback is simply done again.
3. `rolled_back`: every disk holds the point.
4. `released`: target and journal descriptors closed, the exclusive open dropped: the disks can
   be detached from the master target. The agent opens them again only when the group is
   reprotected; a udev removal of a released disk changes nothing.

Before anything is recorded, the point is looked for once: a group without such a point is
refused with nothing changed (NoPointForFailover). Only if the point has gone by the time it is
chosen under the locks (pruned meanwhile, or on a restart) is the failover `abandoned`: the
disks, untouched, go back to replication.

Other groups are never touched: their disks' locks, journals, I/O threads and batches are theirs.

`reprotect` ends a released failover: the disks become `resync_required` (durably, with a
reason) and are opened again, so that a resync in either direction starts from a known state.

Without a running agent (`mtagent failover` finding none), `fail_over_in_process` runs the same
phases with the agent's lock held, as `recover --in-place` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from agent.config import AgentConfig
from agent.log_fields import log_fields
from agent.metrics import FailoverSnapshot
from agent.recovery.errors import PointNotFound, RecoveryFailed, RestoreFailed
from agent.recovery.points import (
    RecoveryPoint,
    group_disk_ids,
    list_points,
    require_group,
    running_points,
    select_point,
    stored_histories,
)
from agent.recovery.restore import OpenDisk, RestoreProgress, agent_stopped, open_for_rollback
from agent.replication.replica import Replica
from agent.replication.retention_gate import complete_commit_records
from agent.replication.state import FailoverPhase, FailoverRecord, StateStore
from blockio.disks.target import TargetError
from blockio.journal.records import JournalCorrupt
from blockio.journal.restore import DiskRestore, rollback_in_place
from blockio.journal.restore_plan import RecoveryError
from blockio.journal.segments import JournalIOError
from protocol.documents import Failover, Point
from protocol.errors import TargetUnavailable

log = logging.getLogger(__name__)

# Test hook, not a setting: a directory in which the failover marks each step it reaches
# (`<step>.reached`) and waits while `<step>.hold` exists, so that tests can stop or kill the
# agent at a chosen step. Steps: requested, chosen, undo:<disk> (once part of that disk's undo is
# written), rolled_back:<disk>, rolled_back, released.
GATE_ENV = "MTAGENT_TEST_FAILOVER_GATE"


class NoPointForFailover(PointNotFound):
    """The group has no point such as asked for; nothing was changed."""


class FailoverNotAllowed(RecoveryFailed):
    """A failover or reprotect that cannot be done now (another failover of the group, a
    point that does not cover the group, a disk that cannot be rolled back). `str()` says why
    and what to do."""


@dataclass(frozen=True, slots=True)
class StepGate:
    """The test hook of GATE_ENV; does nothing without a directory."""

    directory: Path | None = None

    @classmethod
    def from_environment(cls) -> StepGate:
        value = os.environ.get(GATE_ENV)
        return cls(Path(value) if value else None)

    def reached_blocking(self, step: str) -> None:
        if self.directory is None:
            return
        (self.directory / f"{step}.reached").touch()
        while (self.directory / f"{step}.hold").exists():
            time.sleep(0.02)

    async def reached(self, step: str) -> None:
        if self.directory is not None:
            await asyncio.to_thread(self.reached_blocking, step)


def as_document(record: FailoverRecord) -> Failover:
    """The Failover document of docs/protocol.md section 2."""
    return Failover(
        group=record.group,
        requested=record.requested,
        phase=record.phase.value,
        point=record.point,
        point_age_seconds=None if record.point is None else record.point_age_ns / 1e9,
        requested_ns=record.requested_ns,
        updated_ns=record.updated_ns,
    )


def asks_for(record: FailoverRecord, spec: str) -> bool:
    """Whether a request for `spec` names the failover `record` (its words or its point)."""
    return spec == record.requested or (record.point is not None and spec == record.point.id)


def check_covers_group(point: Point, group: str, disks: Sequence[str]) -> None:
    """A failover moves a whole machine: the point must cover every disk of the group.
    Raises FailoverNotAllowed."""
    if set(point.disks) != set(disks):
        raise FailoverNotAllowed(
            f"point {point.id} covers {', '.join(point.disks)} only; a failover of group {group} "
            f"needs a point of all its disks ({', '.join(disks)}): 'latest', 'latest-app', "
            "'latest-crash' or a tag point"
        )


def choose(points: Sequence[RecoveryPoint], spec: str, group: str, disks: Sequence[str]) -> Point:
    """The point of the failover (see `select_point`). Raises NoPointForFailover,
    FailoverNotAllowed."""
    try:
        point = select_point(points, spec, group, disks)
    except PointNotFound as exc:
        raise NoPointForFailover(str(exc)) from None
    except ValueError as exc:  # a time that cannot be read
        raise NoPointForFailover(str(exc)) from None
    check_covers_group(point, group, disks)
    return Point(point.id, point.kind, point.name, point.time_ns, dict(point.disks))


def _refusal_for(record: FailoverRecord, spec: str) -> FailoverNotAllowed:
    where = f"to {record.point.id}" if record.point is not None else f"to {record.requested!r}"
    if record.phase == FailoverPhase.RELEASED:
        return FailoverNotAllowed(
            f"group {record.group} has failed over {where}; reprotect it before another failover"
        )
    return FailoverNotAllowed(
        f"group {record.group} is failing over {where} (phase {record.phase}); ask for that "
        f"point again to finish it, not {spec!r}"
    )


class GroupDisks(Protocol):
    """What the phases need of a group's disks, held for the failover (in the agent: replicas
    under their locks; in process: targets opened for rollback)."""

    async def points(self) -> list[RecoveryPoint]: ...

    async def chosen(self, record: FailoverRecord) -> None: ...

    async def roll_back(self, disk: str, seq: int, gate: StepGate) -> DiskRestore: ...

    async def release(self, record: FailoverRecord) -> None: ...


async def carry_out(
    store: StateStore,
    record: FailoverRecord,
    disks: GroupDisks,
    group_disks: Sequence[str],
    gate: StepGate,
) -> FailoverRecord:
    """Take the failover `record` from its phase to `released`, recording each phase (see the
    module docstring). Returns the record as it ends; raises NoPointForFailover (the failover
    is then `abandoned`), FailoverNotAllowed, RestoreFailed."""
    await gate.reached("requested")
    if record.phase == FailoverPhase.REQUESTED:
        try:
            point = choose(await disks.points(), record.requested, record.group, group_disks)
        except (NoPointForFailover, FailoverNotAllowed):
            await asyncio.to_thread(
                store.advance_failover, record, FailoverPhase.ABANDONED, time.time_ns()
            )
            raise
        record = await asyncio.to_thread(store.choose_failover_point, record, point, time.time_ns())
        log.warning(
            "group %s: failing over to point %s (%s, %s, %.0f s old)",
            record.group,
            point.id,
            point.kind,
            point.name,
            record.point_age_ns / 1e9,
        )
        await disks.chosen(record)
        await gate.reached("chosen")
    assert record.point is not None
    if record.phase == FailoverPhase.ROLLING_BACK:
        for disk, seq in record.point.disks.items():
            done = await disks.roll_back(disk, seq, gate)
            log.warning(
                "group %s: disk %s rolled back to batch %d (%d undo records), verified",
                record.group,
                disk,
                seq,
                done.records,
            )
            await gate.reached(f"rolled_back:{disk}")
        record = await asyncio.to_thread(
            store.advance_failover, record, FailoverPhase.ROLLED_BACK, time.time_ns()
        )
        await disks.chosen(record)
    await gate.reached("rolled_back")
    chosen = record.point
    assert chosen is not None
    if record.phase == FailoverPhase.ROLLED_BACK:
        released = replace(record, phase=FailoverPhase.RELEASED)
        await disks.release(released)
        record = await asyncio.to_thread(
            store.advance_failover, record, FailoverPhase.RELEASED, time.time_ns()
        )
        await disks.chosen(record)
        log.warning(
            "group %s: failed over to %s; disks %s released",
            record.group,
            chosen.id,
            ", ".join(chosen.disks),
        )
    await gate.reached("released")
    return record


def _undo_gate(gate: StepGate, disk: str) -> RestoreProgress:
    """A rollback's progress callback that marks the step `undo:<disk>` once part of the undo
    is written (the test hook; nothing without it)."""
    marked = False

    def progress(_disk: str, phase: str, done: int, total: int) -> None:
        nonlocal marked
        if phase == "undo" and done > 0 and not marked:
            marked = True
            gate.reached_blocking(f"undo:{disk}")

    return progress


# -- in the running agent ------------------------------------------------------------------


class _Replicas:
    """GroupDisks over the agent's replicas, whose locks the failover holds."""

    def __init__(
        self,
        config: AgentConfig,
        replicas: Mapping[str, Replica],
        store: StateStore,
        group: str,
        records: dict[str, FailoverRecord] | None = None,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.store = store
        self.group = group
        # Where the agent keeps each group's latest failover (its metrics read it).
        self.records = {} if records is None else records
        # The journals held exclusively from before the point is chosen until the release.
        self.journal_locks = contextlib.ExitStack()

    async def hold_journals(self) -> None:
        """Hold every journal of the group exclusively (waiting for readers such as an export
        to finish), and complete its commit records, as start-up does before a restore."""
        for replica in self.replicas.values():
            journal = replica.journal
            if journal is None:
                continue
            await replica.run(self.journal_locks.enter_context, journal.exclusive())
            await replica.run(
                complete_commit_records, journal, self.store, replica.progress.last_seq
            )

    async def points(self) -> list[RecoveryPoint]:
        return await asyncio.to_thread(
            running_points, self.config, self.replicas, self.store, self.group
        )

    async def chosen(self, record: FailoverRecord) -> None:
        self.records[self.group] = record
        for replica in self.replicas.values():
            replica.failover = record
            replica.progress = await asyncio.to_thread(self.store.progress, replica.id)

    async def roll_back(self, disk: str, seq: int, gate: StepGate) -> DiskRestore:
        replica = self.replicas[disk]
        target, journal = replica.target, replica.journal
        if target is None or journal is None:
            raise RestoreFailed(
                f"disk {disk}: its target is not open ({replica.unavailable_reason}); ask for "
                "the failover again once it is back"
            )
        try:
            return await replica.run(
                rollback_in_place,
                target,
                journal.directory,
                disk,
                seq,
                journal.summaries(),
                functools.partial(_undo_gate(gate, disk), disk),
            )
        except (RecoveryError, TargetError, OSError) as exc:
            raise RestoreFailed(f"disk {disk}: {exc}") from exc

    async def release(self, record: FailoverRecord) -> None:
        self.journal_locks.close()
        for replica in self.replicas.values():
            replica.failover = record
            await replica.run(
                replica.release_blocking,
                f"released by the failover of group {self.group}",
            )


class GroupFailovers:
    """The failovers of the running agent: one task per group at most, which outlives the
    request that started it (a client that goes away does not stop a failover half-way)."""

    def __init__(
        self,
        config: AgentConfig,
        replicas: dict[str, Replica],
        store: StateStore,
        gate: StepGate | None = None,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.store = store
        self.gate = gate or StepGate()
        self._tasks: dict[str, asyncio.Task[FailoverRecord]] = {}
        # The latest failover of each group that had one since the agent started (metrics).
        self.records: dict[str, FailoverRecord] = {}

    def _group(self, group: str) -> dict[str, Replica]:
        disks = require_group(self.config, group)
        return {disk: self.replicas[disk] for disk in disks}

    def snapshots(self) -> list[FailoverSnapshot]:
        """The metrics view of the groups' latest failovers."""
        return [
            FailoverSnapshot(
                group=record.group,
                phase=record.phase.value,
                in_progress=record.phase
                in (
                    FailoverPhase.REQUESTED,
                    FailoverPhase.ROLLING_BACK,
                    FailoverPhase.ROLLED_BACK,
                ),
                point_age_seconds=None if record.point is None else record.point_age_ns / 1e9,
            )
            for record in self.records.values()
        ]

    def fence(self, record: FailoverRecord) -> None:
        """The group's disks refuse batches from now on (they know their failover)."""
        self.records[record.group] = record
        for replica in self._group(record.group).values():
            replica.failover = record

    def resume(self) -> None:
        """Start finishing every failover that a stop or a crash cut off (at start-up; the
        replicas of released groups were left closed by the caller)."""
        for record in self.store.open_failovers():
            if not group_disk_ids(self.config, record.group):
                log.warning(
                    "group %s: its failover (phase %s) is left as it is: no configured disk is in "
                    "that group any more",
                    record.group,
                    record.phase,
                )
                continue
            self.fence(record)
            if record.phase != FailoverPhase.RELEASED:
                log.warning(
                    "group %s: finishing the failover to %s cut off at phase %s",
                    record.group,
                    record.point.id if record.point else record.requested,
                    record.phase,
                )
                self._start(record)

    def _start(self, record: FailoverRecord) -> asyncio.Task[FailoverRecord]:
        task = asyncio.get_running_loop().create_task(self._run(record))
        self._tasks[record.group] = task
        task.add_done_callback(functools.partial(self._ended, record.group))
        return task

    def _ended(self, group: str, task: asyncio.Task[FailoverRecord]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("group %s: failover stopped: %s", group, exc)

    async def fail_over(self, group: str, spec: str) -> FailoverRecord:
        """Fail `group` over to the point `spec`, or finish the failover of it that `spec`
        names; returns the record once the disks are released.

        Raises UnknownGroupName, NoPointForFailover (nothing changed), FailoverNotAllowed
        (another failover of the group), RestoreFailed (a disk could not be rolled back: the
        failover stays where it got to, and asking again goes on from there).
        """
        group_replicas = self._group(group)
        running = self._tasks.get(group)
        if running is not None and not running.done():
            current = group_replicas[next(iter(group_replicas))].failover
            if current is not None and not asks_for(current, spec):
                raise _refusal_for(current, spec)
            return await asyncio.shield(running)
        last = await asyncio.to_thread(self.store.last_failover, group)
        if last is not None and not last.ended:
            if not asks_for(last, spec):
                raise _refusal_for(last, spec)
            if last.phase == FailoverPhase.RELEASED:
                return last
            return await asyncio.shield(self._start(last))
        # Looked for before anything is recorded: a request without a point changes nothing.
        for replica in group_replicas.values():
            if replica.target is None:
                raise FailoverNotAllowed(
                    f"disk {replica.id} of group {group} is {replica.state} "
                    f"({replica.unavailable_reason or replica.protected_reason}): it cannot be "
                    "rolled back"
                )
        choose(
            await _Replicas(self.config, group_replicas, self.store, group).points(),
            spec,
            group,
            list(group_replicas),
        )
        record = await asyncio.to_thread(self.store.begin_failover, group, spec, time.time_ns())
        self.fence(record)
        return await asyncio.shield(self._start(record))

    async def _run(self, record: FailoverRecord) -> FailoverRecord:
        group_replicas = self._group(record.group)
        disks = _Replicas(self.config, group_replicas, self.store, record.group, self.records)
        try:
            async with contextlib.AsyncExitStack() as held:
                # Each lock is taken once the disk's batch in flight has finished or rolled back.
                for replica in group_replicas.values():
                    await held.enter_async_context(replica.lock)
                try:
                    await disks.hold_journals()
                    record = await carry_out(
                        self.store, record, disks, list(group_replicas), self.gate
                    )
                finally:
                    disks.journal_locks.close()
        except (NoPointForFailover, FailoverNotAllowed):
            # Abandoned: nothing was rolled back; the disks go back to replication.
            for replica in group_replicas.values():
                replica.failover = None
            self.records.pop(record.group, None)
            raise
        self.records[record.group] = record
        return record

    async def reprotect(self, group: str) -> FailoverRecord:
        """End the released failover of `group`: its disks become `resync_required` and are
        opened again. Idempotent once done. Raises UnknownGroupName, FailoverNotAllowed."""
        group_replicas = self._group(group)
        record = await asyncio.to_thread(end_released, self.store, group, list(group_replicas))
        self.records[group] = record
        for replica in group_replicas.values():
            async with replica.lock:
                replica.failover = None
                replica.progress = await asyncio.to_thread(self.store.progress, replica.id)
                try:
                    await replica.ensure_open()
                except TargetUnavailable as exc:  # a disk not attached yet opens when it comes
                    log.warning(
                        "disk %s: reprotected, not opened yet: %s",
                        replica.id,
                        exc,
                        extra=log_fields(disk=replica.id),
                    )
        return record

    async def stop(self) -> None:
        """Cancel the failovers under way (each resumes at the next start from its phase)."""
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def end_released(store: StateStore, group: str, disks: list[str]) -> FailoverRecord:
    """Reprotect in the state store: the released failover of `group` ends and its `disks`
    become `resync_required`; a reprotect done already is returned as it is. Blocking. Raises
    FailoverNotAllowed when the group has no released failover."""
    last = store.last_failover(group)
    if last is None or last.phase == FailoverPhase.ABANDONED:
        raise FailoverNotAllowed(f"group {group} has not failed over: nothing to reprotect")
    if last.phase == FailoverPhase.REPROTECTED:
        return last
    if last.phase != FailoverPhase.RELEASED:
        raise FailoverNotAllowed(
            f"group {group} is still failing over (phase {last.phase}); ask for the failover "
            "again to finish it, then reprotect"
        )
    return store.end_failover(last, disks, _resync_reason(last), time.time_ns())


def _resync_reason(record: FailoverRecord) -> str:
    point = record.point.id if record.point is not None else record.requested
    return (
        f"failed over to {point} and reprotected: the recovered machine wrote to the disk since; "
        "a resync must bring it back in step with its source"
    )


# -- with no agent running ------------------------------------------------------------------

_STARTED_MEANWHILE = "the agent started meanwhile: run the command again to ask it"


class _OpenedForRollback:
    """GroupDisks over targets and journals this process opened for the failover."""

    def __init__(
        self,
        config: AgentConfig,
        group: str,
        disks: Sequence[str],
        store: StateStore,
        stack: contextlib.ExitStack,
        progress: RestoreProgress,
    ) -> None:
        self.config = config
        self.group = group
        self.disks = list(disks)
        self.store = store
        self.stack = stack
        self.progress = progress
        self.opened: dict[str, OpenDisk] = {}
        for disk in self.disks:
            try:
                self.opened[disk] = open_for_rollback(config, disk, store, stack)
            except (TargetError, OSError, JournalCorrupt, JournalIOError) as exc:
                raise FailoverNotAllowed(f"disk {disk}: {exc}") from exc

    async def points(self) -> list[RecoveryPoint]:
        summaries = {disk: entry.journal.summaries() for disk, entry in self.opened.items()}
        histories = stored_histories(self.disks, self.store, summaries)
        return list_points(self.disks, histories, self.store.batch_rows)

    async def chosen(self, record: FailoverRecord) -> None:
        return None

    async def roll_back(self, disk: str, seq: int, gate: StepGate) -> DiskRestore:
        entry = self.opened[disk]
        try:
            return await asyncio.to_thread(
                rollback_in_place,
                entry.target,
                entry.journal.directory,
                disk,
                seq,
                entry.journal.summaries(),
                functools.partial(self.progress, disk),
            )
        except (RecoveryError, TargetError, OSError) as exc:
            raise RestoreFailed(f"disk {disk}: {exc}") from exc

    async def release(self, record: FailoverRecord) -> None:
        self.stack.close()


def fail_over_in_process(
    config: AgentConfig, group: str, spec: str, progress: RestoreProgress
) -> FailoverRecord:
    """What the agent does for `POST /v1/groups/{group}/failover`, done here with the agent
    stopped (its lock held meanwhile). Raises AgentLockHeld when an agent runs, and what
    `GroupFailovers.fail_over` raises."""
    disks = require_group(config, group)
    with agent_stopped(config, "mtagent failover", _STARTED_MEANWHILE) as store:
        return asyncio.run(_fail_over_here(config, group, disks, spec, store, progress))


async def _fail_over_here(
    config: AgentConfig,
    group: str,
    disks: list[str],
    spec: str,
    store: StateStore,
    progress: RestoreProgress,
) -> FailoverRecord:
    last = store.last_failover(group)
    if last is not None and not last.ended:
        if not asks_for(last, spec):
            raise _refusal_for(last, spec)
        if last.phase == FailoverPhase.RELEASED:
            return last
    with contextlib.ExitStack() as stack:
        opened = _OpenedForRollback(config, group, disks, store, stack, progress)
        if last is None or last.ended:
            choose(await opened.points(), spec, group, disks)
            last = store.begin_failover(group, spec, time.time_ns())
        return await carry_out(store, last, opened, disks, StepGate())


def reprotect_in_process(config: AgentConfig, group: str) -> FailoverRecord:
    """`reprotect` with the agent stopped: the disks become `resync_required`; the agent opens
    them at its next start. Raises AgentLockHeld, UnknownGroupName, FailoverNotAllowed."""
    disks = require_group(config, group)
    with agent_stopped(config, "mtagent reprotect", _STARTED_MEANWHILE) as store:
        return end_released(store, group, disks)


def failover_state(store: StateStore, group: str) -> FailoverRecord | None:
    """The failover of `group` that is not ended, or None (status, reports)."""
    last = store.last_failover(group)
    return None if last is None or last.ended else last
