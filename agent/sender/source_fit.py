"""Before anything is sent: the source measured, and checked against the disk and the
agent's limits."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from agent.sender.errors import PushFailed, source_unreadable
from blockio.scan.source_image import image_bytes
from protocol.documents import Disk, Info


def measure_source(disk: str, source: Path, base: Path | None = None) -> tuple[int, int]:
    """The source's size in bytes and its mtime in nanoseconds (the batches' source time),
    checking that `base`, if given, can be opened too. Blocks: call it off the event loop.

    Raises PushFailed naming the file that cannot be read.
    """
    try:
        size = image_bytes(source)
        mtime_ns = os.stat(source).st_mtime_ns
        if base is not None:
            image_bytes(base)
    except OSError as exc:
        raise source_unreadable(disk, source, exc) from exc
    return size, mtime_ns


def check_fits(
    disk_id: str,
    source: Path,
    size: int,
    *,
    info: Info,
    disk: Disk,
    sizes: Mapping[str, int],
    shorter_ok: bool = False,
) -> None:
    """Check that a source of `size` bytes, sent in `sizes` ("frame size", "batch size"),
    can go to the agent's `disk` within the limits of its `info`. A source shorter than the
    disk is refused unless `shorter_ok` (a verify, which reports it instead).

    Raises PushFailed saying why not.
    """
    # The agent's Info field that bounds each size a run may send in.
    limits = {
        "frame size": ("max_frame_bytes", info.max_frame_bytes),
        "batch size": ("max_batch_bytes", info.max_batch_bytes),
    }
    problem = source_problem(
        source,
        size,
        disk_bytes=disk.size_bytes,
        sector=disk.sector_bytes,
        sizes={name: (value, *limits[name]) for name, value in sizes.items()},
        shorter_ok=shorter_ok,
    )
    if problem:
        raise PushFailed(f"disk {disk_id}: {problem}", disk=disk_id)


def source_problem(
    source: Path,
    size: int,
    *,
    disk_bytes: int,
    sector: int,
    sizes: dict[str, tuple[int, str, int | None]],
    shorter_ok: bool = False,
) -> str | None:
    """Why a source of `size` bytes, sent in the given frame and batch sizes, cannot go to
    a disk of `disk_bytes` with `sector`-byte sectors; None if it can. A shorter source is a
    problem unless `shorter_ok`: the target's tail would keep what it holds, and the replica
    would not be a copy of the source."""
    if size > disk_bytes:
        return f"source {source} is {size} bytes, larger than the disk ({disk_bytes} bytes)"
    if size % sector:
        return (
            f"source {source} is {size} bytes, not a multiple of the disk's {sector}-byte sectors"
        )
    if size < disk_bytes and not shorter_ok:
        return (
            f"source {source} is {size} bytes, smaller than the disk ({disk_bytes} bytes): "
            f"the target's last {disk_bytes - size} bytes would keep what they hold; extend "
            f"the source to the disk's size (truncate -s {disk_bytes}) and push again"
        )
    for name, (value, key, limit) in sizes.items():
        if value <= 0 or value % sector:
            return f"{name} {value} is not a multiple of the disk's {sector}-byte sectors"
        if limit is not None and value > limit:
            return f"{name} {value} exceeds the agent's {key} of {limit}"
    return None
