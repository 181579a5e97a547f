"""Restoring a consistency group to a recovery point: what `mtagent recover` runs.

`--output DIR` (an export: a test failover) runs beside the agent, which keeps replicating. For
each disk of the group, the journal is held shared from before the point is resolved to the end
(`shared_lock`: the agent neither prunes nor truncates it meanwhile; a rollback of a failed batch
waits, and so may the answer to that batch). Each disk of the point becomes `DIR/<disk>.img`
(`<disk>.img.partial` until it is written and verified: a restore cut off leaves no `.img`).
`--output DISK=DEVICE`, once per disk of the point, does the same onto block devices (each checked
not in use on this host, not smaller than its disk, not a target of the agent, and held
exclusively while written).

`--in-place` (the real failover back) rolls the targets themselves back. The agent must not be
applying to them meanwhile, and that is ensured by `<state_dir>/agent.lock`, which the daemon
holds for its whole life: the recovery takes it without waiting, or fails with "stop the agent
first". Then, with each journal held exclusively, it does what the agent does at start-up (roll
back a batch cut off by a crash, complete the commit records), resolves the point, records the
recovery and makes the disks `recovered` in the state store (before writing anything: from then
on they refuse batches until a resync), rolls back, verifies, and marks the recovery finished.
Cut off, it is run again with the same point id, and writes the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, target_location
from agent.recovery.errors import RestoreFailed
from agent.recovery.points import (
    RecoveryPoint,
    list_points,
    require_group,
    select_point,
    stored_histories,
)
from agent.replication.instance_lock import acquire_agent_lock
from agent.replication.retention_gate import complete_commit_records
from agent.replication.state import StateStore
from blockio.disks.safety import DeviceProtected, ExpectedSize, open_for_replication
from blockio.disks.target import TargetDisk, TargetError
from blockio.durable import replace_durably
from blockio.journal.catalog import load_summaries
from blockio.journal.index import SegmentSummary, restorable_floor
from blockio.journal.records import JournalCorrupt
from blockio.journal.restore import DiskRestore, export_disk, export_to_device, rollback_in_place
from blockio.journal.restore_plan import RecoveryError
from blockio.journal.segments import JournalIOError, shared_lock
from blockio.journal.undo_journal import UndoJournal
from protocol.documents import DiskState, Point

# (disk, phase, bytes done, bytes in all) -> None
RestoreProgress = Callable[[str, str, int, int], None]


def _quiet(disk: str, phase: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a recovery did: the point, and per disk the image written or rolled back."""

    group: str
    mode: str  # "output" (image files), "devices" or "in_place"
    point: Point
    disks: tuple[DiskRestore, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "mode": self.mode,
            "point": self.point.to_json(),
            "disks": [
                {
                    "disk": d.disk,
                    "seq": d.seq,
                    "path": str(d.output),
                    "size_bytes": d.size_bytes,
                    "undo_records": d.records,
                    "undo_bytes": d.undo_bytes,
                    "verified": True,
                }
                for d in self.disks
            ],
        }


def resolve_point(
    disks: list[str],
    group: str,
    spec: str,
    store: StateStore | None,
    summaries: Mapping[str, tuple[SegmentSummary, ...] | list[SegmentSummary]],
) -> RecoveryPoint:
    """The point `spec` (`latest`, `latest-app`, `latest-crash`, `time:...` or an id) of `group`,
    among the points the state store and the journals' `summaries` list.

    Raises PointNotFound when there is none, RestoreFailed for a time that cannot be read.
    """
    rows = store.batch_rows if store is not None else (lambda d, a, b: [])
    points = list_points(disks, stored_histories(disks, store, summaries), rows)
    try:
        return select_point(points, spec, group, disks)
    except ValueError as exc:  # a time that cannot be read
        raise RestoreFailed(str(exc)) from None


def _failure(disk: str, exc: Exception) -> RestoreFailed:
    return RestoreFailed(f"disk {disk}: {exc}")


@contextlib.contextmanager
def _held_point(
    config: AgentConfig, group: str, spec: str
) -> Iterator[tuple[RecoveryPoint, dict[str, tuple[SegmentSummary, ...]]]]:
    """The point `spec` of `group` and its journals' summaries, each journal held shared from
    before the point is resolved until the caller is done (see the module docstring)."""
    disks = require_group(config, group)
    with contextlib.ExitStack() as stack:
        for disk in disks:
            stack.enter_context(shared_lock(config.retention.path / disk))
        state_db = config.server.state_dir / "state.db"
        store = StateStore.open_readonly(config.server.state_dir) if state_db.exists() else None
        if store is not None:
            stack.callback(store.close)
        summaries = {
            disk: tuple(load_summaries(config.retention.path / disk, disk)[0]) for disk in disks
        }
        yield resolve_point(disks, group, spec, store, summaries), summaries


def export_point(
    config: AgentConfig,
    group: str,
    spec: str,
    output_dir: Path,
    progress: RestoreProgress = _quiet,
) -> RestoreReport:
    """Write `output_dir/<disk>.img` for each disk of the point `spec` of `group`, as it was at
    the point, beside a running agent or without one (see the module docstring).

    Raises UnknownGroupName or PointNotFound when the group or point does not exist, and
    RestoreFailed (one line) when an image is already there or reading, writing or verifying
    fails.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    with _held_point(config, group, spec) as (point, summaries):
        for disk in point.disks:
            final = output_dir / f"{disk}.img"
            if final.exists():
                raise RestoreFailed(f"{final} exists: remove it or choose another --output")
        results = []
        for disk, seq in point.disks.items():
            final = output_dir / f"{disk}.img"
            partial = output_dir / f"{disk}.img.partial"
            try:
                with _open_target_readonly(config, disk) as target:
                    result = export_disk(
                        target,
                        config.retention.path / disk,
                        disk,
                        seq,
                        partial,
                        summaries[disk],
                        functools.partial(progress, disk),
                    )
            except (RecoveryError, TargetError, OSError) as exc:
                raise _failure(disk, exc) from exc
            replace_durably(partial, final)
            results.append(
                DiskRestore(disk, seq, final, result.size_bytes, result.records, result.undo_bytes)
            )
    return RestoreReport(group, "output", point, tuple(results))


def export_to_devices(
    config: AgentConfig,
    group: str,
    spec: str,
    devices: Mapping[str, Path],
    progress: RestoreProgress = _quiet,
) -> RestoreReport:
    """Write each disk of the point `spec` of `group` onto its block device of `devices`
    (disk id -> device), as it was at the point, beside a running agent or without one: a test
    failover onto real disks. A device must be a block device that nothing on this host uses
    (not mounted, no swap, LVM, MD or dm on it, not the root disk, not a target of this agent)
    and at least as large as its disk; it is held exclusively while it is written.

    Raises UnknownGroupName or PointNotFound, and RestoreFailed (one line) when the devices do
    not match the point's disks, a device is refused, or writing or verifying fails.
    """
    with _held_point(config, group, spec) as (point, summaries):
        _check_devices(config, point, devices)
        results = []
        for disk, seq in point.disks.items():
            device_path = devices[disk]
            try:
                with contextlib.ExitStack() as held:
                    target = held.enter_context(_open_target_readonly(config, disk))
                    device = held.enter_context(
                        _open_output_device(device_path, disk, target.size_bytes)
                    )
                    results.append(
                        export_to_device(
                            target,
                            device,
                            config.retention.path / disk,
                            disk,
                            seq,
                            summaries[disk],
                            functools.partial(progress, disk),
                        )
                    )
            except (RecoveryError, TargetError, OSError) as exc:
                raise _failure(disk, exc) from exc
    return RestoreReport(group, "devices", point, tuple(results))


def _open_target_readonly(config: AgentConfig, disk: str) -> TargetDisk:
    disk_config = config.disk(disk)
    assert disk_config is not None
    node, _sys_path = target_location(disk_config)
    return TargetDisk.open(node, writable=False)


def _open_output_device(path: Path, disk: str, size_bytes: int) -> TargetDisk:
    """`path` opened exclusively for an export of `disk`. Raises RestoreFailed when it is in
    use on this host or smaller than the disk, TargetError when it cannot be opened."""
    try:
        return open_for_replication(path, expected=ExpectedSize(size_bytes, f"of disk {disk}"))
    except DeviceProtected as exc:
        raise RestoreFailed(
            f"{path} is refused for disk {disk}, nothing written: {'; '.join(exc.reasons)}"
        ) from exc


def _check_devices(config: AgentConfig, point: Point, devices: Mapping[str, Path]) -> None:
    """Each disk of the point has one block device of its own, none of them a target of this
    agent. Raises RestoreFailed."""
    wanted, given = set(point.disks), set(devices)
    if wanted - given:
        missing = ", ".join(sorted(wanted - given))
        raise RestoreFailed(
            f"point {point.id} covers {', '.join(point.disks)}: give --output DISK=DEVICE for "
            f"{missing} too"
        )
    if given - wanted:
        raise RestoreFailed(
            f"point {point.id} does not cover {', '.join(sorted(given - wanted))}: "
            f"it covers {', '.join(point.disks)}"
        )
    targets = set()
    for disk_config in config.disks:
        try:
            node, _sys_path = target_location(disk_config)
            targets.add(os.stat(node).st_rdev)
        except (TargetError, OSError):
            continue  # a target not here now is no device given either
    seen: dict[int, str] = {}
    for disk, path in devices.items():
        try:
            st = os.stat(path)
        except OSError as exc:
            raise RestoreFailed(f"{path}: {exc.strerror or exc}") from exc
        if not stat.S_ISBLK(st.st_mode):
            raise RestoreFailed(
                f"{path} is not a block device (--output DIR writes image files into a directory)"
            )
        if st.st_rdev in targets:
            raise RestoreFailed(f"{path} is a replication target of this agent: never written")
        if st.st_rdev in seen:
            raise RestoreFailed(f"{path} is given for both {seen[st.st_rdev]} and {disk}")
        seen[st.st_rdev] = disk


@dataclass
class OpenDisk:
    """A target opened for a rollback (checked not in use on this host) with its journal, held
    exclusively, and the disk's committed state."""

    target: TargetDisk
    journal: UndoJournal
    state: str
    last_seq: int


def restore_in_place(
    config: AgentConfig, group: str, spec: str, progress: RestoreProgress = _quiet
) -> RestoreReport:
    """Roll the targets of the point `spec` of `group` back to it, with the agent stopped (see
    the module docstring). Afterwards those disks are `recovered`: they take batches again only
    after a resync.

    Raises AgentLockHeld when the agent is running ("stop the agent first"), UnknownGroupName
    or PointNotFound when the group or point does not exist, RestoreFailed (one line) when a
    target is in use on this host or writing or verifying fails.
    """
    disks = require_group(config, group)
    with agent_stopped(
        config, "mtagent recover --in-place", "the agent is running: stop the agent first"
    ) as store:
        _refuse_if_failed_over(store, group)
        return _restore_in_place(config, group, disks, spec, store, progress)


def _refuse_if_failed_over(store: StateStore, group: str) -> None:
    """A group whose failover is not ended belongs to that failover: one under way finishes at
    the agent's next start (it would roll back over this recovery), and a released group's disks
    may be attached to the recovered machine by now."""
    last = store.last_failover(group)
    if last is None or last.ended:
        return
    point = "" if last.point is None else f" to {last.point.id}"
    raise RestoreFailed(
        f"group {group} has a failover{point} ({last.phase}): finish it with `mtagent failover "
        f"--group {group}`, or once its disks are back, `mtagent reprotect --group {group}`, "
        "before recovering it in place"
    )


@contextlib.contextmanager
def agent_stopped(config: AgentConfig, holder: str, refusal: str) -> Iterator[StateStore]:
    """The state store, opened for writing while this process holds the agent's lock in the
    agent's stead (as `holder`), so that no agent runs meanwhile. Raises AgentLockHeld (ending
    with `refusal`) when one does."""
    lock_fd = acquire_agent_lock(config.server.state_dir, holder=holder, refusal=refusal)
    try:
        store = StateStore.open(config.server.state_dir)
        try:
            yield store
        finally:
            store.close()
    finally:
        os.close(lock_fd)


def _restore_in_place(
    config: AgentConfig,
    group: str,
    disks: list[str],
    spec: str,
    store: StateStore,
    progress: RestoreProgress,
) -> RestoreReport:
    with contextlib.ExitStack() as stack:
        opened: dict[str, OpenDisk] = {}
        # A disk that cannot be opened matters only if the point covers it.
        failed: dict[str, RestoreFailed] = {}
        for disk in disks:
            try:
                opened[disk] = open_for_rollback(config, disk, store, stack)
            except (TargetError, OSError, JournalCorrupt, JournalIOError) as exc:
                failed[disk] = _failure(disk, exc)
        summaries = {disk: entry.journal.summaries() for disk, entry in opened.items()}
        point, record_id = _in_place_point(group, disks, spec, store, opened, summaries)
        for disk in point.disks:
            if disk in failed:
                raise failed[disk]
        if record_id is None:
            record_id = store.begin_recovery(group, point, time.time_ns()).id
        results = []
        for disk, seq in point.disks.items():
            entry = opened[disk]
            try:
                results.append(
                    rollback_in_place(
                        entry.target,
                        config.retention.path / disk,
                        disk,
                        seq,
                        summaries[disk],
                        functools.partial(progress, disk),
                    )
                )
            except (RecoveryError, TargetError, OSError) as exc:
                raise _failure(disk, exc) from exc
        store.finish_recovery(record_id, time.time_ns())
    return RestoreReport(group, "in_place", point, tuple(results))


def open_for_rollback(
    config: AgentConfig, disk: str, store: StateStore, stack: contextlib.ExitStack
) -> OpenDisk:
    """Open `disk`'s target (checked not in use on this host) and journal (held exclusively),
    and do what the agent does at start-up, which it may not have done since a crash: roll back
    a batch cut off, complete the commit records."""
    disk_config = config.disk(disk)
    assert disk_config is not None
    node, sys_path = target_location(disk_config)
    target = stack.enter_context(open_for_replication(node, disk_dir=sys_path))
    journal = stack.enter_context(
        UndoJournal.open(
            config.retention.path / disk, disk, segment_bytes=config.retention.segment_bytes
        )
    )
    stack.enter_context(journal.exclusive())
    progress = store.progress(disk)
    if journal.last_commit_seq > progress.last_seq:
        # recover() would take the batches state.db does not know for cut off, and roll back
        # what was acknowledged; the points listed from state.db would miss them too.
        raise RestoreFailed(
            f"disk {disk}: its undo journal committed batches up to {journal.last_commit_seq} "
            f"but state.db knows only up to {progress.last_seq} (restored from an older copy, "
            "or lost); start the agent once, which records the gap and the journal's batches, "
            "then list the points again"
        )
    journal.recover(target, progress.last_seq)
    complete_commit_records(journal, store, progress.last_seq)
    return OpenDisk(target, journal, progress.state, progress.last_seq)


def _in_place_point(
    group: str,
    disks: list[str],
    spec: str,
    store: StateStore,
    opened: Mapping[str, OpenDisk],
    summaries: Mapping[str, tuple[SegmentSummary, ...]],
) -> tuple[Point, int | None]:
    """The point to roll back to, and the recovery to carry on (None: a new one)."""
    rolled_back = [disk for disk in disks if store.progress(disk).state == DiskState.RECOVERED]
    if not rolled_back:
        return resolve_point(disks, group, spec, store, summaries), None
    last = store.last_recovery(group)
    if last is None or last.point.id != spec:
        done = f" to point {last.point.id}" if last is not None else ""
        raise RestoreFailed(
            f"disks {', '.join(rolled_back)} of group {group} were rolled back in place{done}; "
            "replication must resync them before another in-place recovery"
            + (f" (run again with --point {last.point.id} to finish that one)" if last else "")
        )
    point = last.point
    for disk, seq in point.disks.items():
        if disk in opened and seq < restorable_floor(summaries[disk], opened[disk].last_seq):
            raise RestoreFailed(
                f"disk {disk}: the undo data to roll back to batch {seq} is no longer on the "
                "retention drive"
            )
    return point, last.id
