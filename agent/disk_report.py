"""What the CLI tells about each configured disk, read from the config, the device and the store.

The CLI works beside a running agent (SQLite WAL allows a reader) and without
one; it never opens a target for writing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, DiskConfig
from agent.state import DiskProgress, StateStore
from blockio.target import TargetDisk, TargetError


@dataclass(frozen=True, slots=True)
class DiskReport:
    """One configured disk as an operator sees it."""

    id: str
    group: str
    target: str
    size_bytes: int | None
    sector_bytes: int | None
    state: str
    reason: str
    last_seq: int
    last_source_time_ns: int
    committed_ns: int
    rpo_seconds: float | None
    undo_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def disk_reports(config: AgentConfig, now_ns: int | None = None) -> list[DiskReport]:
    """A report for every disk of `config`, in config order."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    store_path = config.server.state_dir / "state.db"
    store = StateStore.open_readonly(config.server.state_dir) if store_path.exists() else None
    try:
        return [
            _report(
                disk, store.progress(disk.id) if store else DiskProgress(disk.id), config, now_ns
            )
            for disk in config.disks
        ]
    finally:
        if store is not None:
            store.close()


def _report(disk: DiskConfig, progress: DiskProgress, config: AgentConfig, now: int) -> DiskReport:
    size = sector = None
    state, reason = progress.state, ""
    target = str(disk.path) if disk.path is not None else f"scsi_uuid {disk.scsi_uuid}"
    if disk.path is None:
        state, reason = "missing", "SCSI-UUID targets are not resolved yet"
    else:
        try:
            with TargetDisk.open(disk.path, writable=False) as device:
                size, sector = device.size_bytes, device.sector_bytes
        except TargetError as exc:
            state, reason = "missing", exc.reason
    last_time = progress.last_source_time_ns
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
        rpo_seconds=(now - last_time) / 1e9 if last_time else None,
        undo_bytes=_tree_bytes(config.retention.path / disk.id),
    )


def _tree_bytes(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    """90 -> '1m30s'; None -> 'never'."""
    if seconds is None:
        return "never"
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
