"""What the CLI tells about each configured disk, read from the config, the device and the store.

The CLI works beside a running agent (SQLite WAL allows a reader) and without
one; it never opens a target for writing. `scsi_uuid` targets are resolved as
the agent resolves them (pyudev), and checked for use on this host the same
way, so `protected` and `missing` say here what they would say in the agent.
A disk's recovery window comes from the points `mtagent points` lists
(`agent.recovery.points.stored_points`): the state store and the journals' summaries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyudev

from agent.config import AgentConfig, DiskConfig, target_location
from agent.recovery.failover import failover_state
from agent.recovery.points import own_point_times, stored_points
from agent.replication.state import DiskProgress, FailoverPhase, FailoverRecord, StateStore
from blockio.disks.discovery import (
    BlockDisk,
    candidate_disks,
    enumerate_disks,
    no_identity_message,
)
from blockio.disks.safety import check_target, expected_size
from blockio.disks.target import TargetDisk, TargetError
from protocol.documents import DiskState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DiskReport:
    """One configured disk as an operator sees it. `target` is what the config names (a path
    or `scsi_uuid <id>`); `device` where it is now (None when not found); `scsi_id` the
    canonical id (None for a `path` target). `reason`: why it is `protected` or `missing`, or
    why it needs a resync when the agent found a gap. While it is `resyncing`, `resync_offset`
    is how far the resync reached (the Disk JSON's `resync_offset`) and `resync_progress` that
    part of the size (None in other states, or when the size is not known)."""

    id: str
    group: str
    target: str
    size_bytes: int | None
    sector_bytes: int | None
    state: DiskState
    reason: str
    last_seq: int
    last_source_time_ns: int
    committed_ns: int
    rpo_seconds: float | None
    undo_bytes: int
    scsi_id: str | None = None
    device: str | None = None
    resync_offset: int = 0
    resync_progress: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class UnconfiguredDisk:
    """A disk of this host that no `[[disks]]` entry names: a candidate target, with the id
    to copy into the config, or the note saying why it has none or why it is in use."""

    disk: BlockDisk
    note: str

    def to_json(self) -> dict[str, Any]:
        return {**self.disk.to_json(), "note": self.note}


def host_disks() -> list[BlockDisk] | None:
    """The host's disks as udev sees them; None when udev/sysfs cannot be read."""
    try:
        return enumerate_disks()
    except (OSError, pyudev.DeviceNotFoundError) as exc:
        log.warning("cannot enumerate disks: %s", exc)
        return None


def disk_reports(
    config: AgentConfig,
    now_ns: int | None = None,
    disks_on_host: Sequence[BlockDisk] | None = None,
) -> list[DiskReport]:
    """A report for every disk of `config`, in config order. `disks_on_host` is the udev
    enumeration to resolve `scsi_uuid` targets against (enumerated here when not given and
    some disk needs it)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if disks_on_host is None and any(disk.scsi_uuid for disk in config.disks):
        disks_on_host = host_disks()
    with _read_only_store(config) as store:
        failovers = {
            group: failover_state(store, group) if store else None
            for group in dict.fromkeys(disk.group for disk in config.disks)
        }
        return [
            _report(
                disk,
                store.progress(disk.id) if store else DiskProgress(disk.id),
                store.target_size(disk.id) if store else (0, 0),
                config,
                now_ns,
                disks_on_host,
                failovers[disk.group],
            )
            for disk in config.disks
        ]


@dataclass(frozen=True, slots=True)
class RecoveryWindow:
    """How far back a disk can be restored, from its own points (`<disk>@<seq>`, as `mtagent
    points` lists them): `oldest_point_ns` is the source time of the oldest one and
    `window_seconds` the newest one's time minus that (0.0 with a single point); both None
    when the disk has no point (never copied, resyncing, not `ok`, or its journal could not
    be read)."""

    oldest_point_ns: int | None = None
    window_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recovery_windows(config: AgentConfig) -> dict[str, RecoveryWindow]:
    """The recovery window of every disk of `config`, by id.

    Each group's points are listed once, as `mtagent points` lists them: from the state
    store and the journals' summaries (their sidecar; only a segment it no longer matches is
    walked), each journal held shared meanwhile. A group whose journals cannot be read is
    logged and its disks get an empty window: what else is reported does not need them."""
    with _read_only_store(config) as store:
        times = _point_times(config, store)
    windows = {}
    for disk in config.disks:
        own = times.get(disk.id)
        windows[disk.id] = (
            RecoveryWindow(min(own), (max(own) - min(own)) / 1e9) if own else RecoveryWindow()
        )
    return windows


@contextlib.contextmanager
def _read_only_store(config: AgentConfig) -> Iterator[StateStore | None]:
    """The state store, read-only; None when there is none yet."""
    if not (config.server.state_dir / "state.db").exists():
        yield None
        return
    store = StateStore.open_readonly(config.server.state_dir)
    try:
        yield store
    finally:
        store.close()


def _point_times(config: AgentConfig, store: StateStore | None) -> dict[str, list[int]]:
    """The source times of each disk's own points (`<disk>@<seq>`), by disk; a disk without
    a point is left out."""
    times: dict[str, list[int]] = {}
    for group in dict.fromkeys(disk.group for disk in config.disks):
        try:
            points = stored_points(config, store, group)
        except OSError as exc:
            log.warning("cannot read the retention journals of group %s: %s", group, exc)
            continue
        times.update(own_point_times(points))
    return times


def _report(
    disk: DiskConfig,
    progress: DiskProgress,
    seen_size: tuple[int, int],
    config: AgentConfig,
    now: int,
    disks_on_host: Sequence[BlockDisk] | None,
    failover: FailoverRecord | None = None,
) -> DiskReport:
    if failover is not None and failover.phase == FailoverPhase.RELEASED:
        # Handed over to the recovered machine (and maybe detached): not probed.
        return _failed_over_report(disk, progress, config, failover)
    size = sector = None
    state, reason = progress.state, progress.resync_reason
    if failover is not None:
        reason = _failover_reason(failover)
    target = str(disk.path) if disk.path is not None else f"scsi_uuid {disk.scsi_uuid}"
    node: Path | None = None
    disk_dir: Path | None = None
    try:
        if disk.scsi_uuid is not None and disks_on_host is None:
            raise TargetError(target, "the host's disks cannot be enumerated (udev, sysfs)")
        node, disk_dir = target_location(disk, disks_on_host)
    except TargetError as exc:
        state, reason = DiskState.MISSING, exc.reason
    if node is not None:
        try:
            reasons = check_target(
                node, disk_dir=disk_dir, expected=expected_size(disk.source_size_bytes, *seen_size)
            )
        except TargetError as exc:
            state, reason = DiskState.MISSING, exc.reason
        else:
            try:
                with TargetDisk.open(node, writable=False) as device:
                    size, sector = device.size_bytes, device.sector_bytes
            except TargetError as exc:
                state, reason = DiskState.MISSING, exc.reason
            if reasons:
                # In use here says more than "cannot be opened here" (which may follow from it).
                state, reason = DiskState.PROTECTED, "; ".join(reasons)
    last_time = progress.last_source_time_ns
    resync_offset = progress.resync.offset if progress.state == DiskState.RESYNCING else 0
    resync_progress = None
    if progress.state == DiskState.RESYNCING and size:
        resync_progress = min(1.0, resync_offset / size)
    return DiskReport(
        id=disk.id,
        group=disk.group,
        target=target,
        size_bytes=size,
        sector_bytes=sector,
        state=state,
        reason=reason,
        last_seq=progress.last_seq,
        last_source_time_ns=last_time,
        committed_ns=progress.committed_ns,
        rpo_seconds=(now - last_time) / 1e9
        if last_time and state != DiskState.FAILED_OVER
        else None,
        undo_bytes=_tree_bytes(config.retention.path / disk.id),
        scsi_id=disk.scsi_uuid,
        device=None if node is None else str(node),
        resync_offset=resync_offset,
        resync_progress=resync_progress,
    )


def _failover_reason(failover: FailoverRecord) -> str:
    point = failover.requested if failover.point is None else failover.point.id
    return f"failover to {point}: {failover.phase}"


def _failed_over_report(
    disk: DiskConfig, progress: DiskProgress, config: AgentConfig, failover: FailoverRecord
) -> DiskReport:
    """The report of a released disk: what the state store says, no device looked at."""
    return DiskReport(
        id=disk.id,
        group=disk.group,
        target=str(disk.path) if disk.path is not None else f"scsi_uuid {disk.scsi_uuid}",
        size_bytes=None,
        sector_bytes=None,
        state=DiskState.FAILED_OVER,
        reason=_failover_reason(failover),
        last_seq=progress.last_seq,
        last_source_time_ns=progress.last_source_time_ns,
        committed_ns=progress.committed_ns,
        rpo_seconds=None,
        undo_bytes=_tree_bytes(config.retention.path / disk.id),
        scsi_id=disk.scsi_uuid,
        device=None,
        resync_offset=0,
        resync_progress=None,
    )


def _devnum(path: Path) -> int:
    try:
        return os.stat(path).st_rdev
    except OSError:
        return 0


def unconfigured_disks(
    config: AgentConfig, disks_on_host: Sequence[BlockDisk]
) -> list[UnconfiguredDisk]:
    """The host's real disks (no loop/dm/md) that no `[[disks]]` entry names, each with a
    note: why it has no SCSI id (disk.EnableUUID), or why it is in use on this host."""
    configured_ids = {disk.scsi_uuid for disk in config.disks if disk.scsi_uuid}
    configured_devnums = {_devnum(disk.path) for disk in config.disks if disk.path} - {0}
    listed = []
    for disk in candidate_disks(disks_on_host):
        if disk.scsi_id in configured_ids or (disk.devnum and disk.devnum in configured_devnums):
            continue
        notes = [no_identity_message(disk)] if disk.scsi_id is None else []
        try:
            reasons = check_target(disk.node, disk_dir=disk.sys_path)
        except TargetError as exc:
            reasons = (exc.reason,)
        if reasons:
            notes.append("in use: " + "; ".join(reasons))
        listed.append(UnconfiguredDisk(disk, "; ".join(notes)))
    return listed


def _tree_bytes(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
