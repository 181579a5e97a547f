"""File targets made ready before the agent's first start: a missing one created at the size of
its source disk, sparse; one that is there left alone; never a block device.

`plan_file_target` only looks (stat); `create_file_target` writes, and only a file that does not
exist yet (O_EXCL): nothing here replaces, truncates or extends a file that is there, so running it
twice changes nothing. A missing block device is an error, not something to make: it is attached
by whoever runs the host (VMware adds the disk), and a regular file in its place under /dev would
be written instead of the disk.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from blockio.durable import fsync_directory
from blockio.errors import BlockIOError

# What a file target is created with: the agent (a service user) reads and writes it, nobody else.
FILE_TARGET_MODE = 0o600

# Device nodes live here; a target named below /dev that is missing is a device not attached.
_DEVICE_DIRECTORY = Path("/dev")


class FileTargetRefused(BlockIOError):
    """A target cannot be made ready as asked. `str()` is one line naming the disk, its path and
    what to do; `disk` and `path` are kept for callers that list several."""

    def __init__(self, disk: str, path: Path, reason: str) -> None:
        super().__init__(f"{disk}: {path} {reason}")
        self.disk = disk
        self.path = path
        self.reason = reason


class FileTargetAction(enum.Enum):
    """What becomes of one target (the values are the `--json` spelling, docs/cli.md)."""

    CREATE = "created"
    EXISTS = "exists"
    BLOCK_DEVICE = "block_device"


@dataclass(frozen=True, slots=True)
class FileTargetPlan:
    """One target and what becomes of it: created at `size_bytes`, or left alone because it
    exists (`size_bytes` is then its size) or is a block device (`size_bytes` None)."""

    disk: str
    path: Path
    size_bytes: int | None
    action: FileTargetAction


def plan_file_target(disk: str, path: Path, size_bytes: int | None) -> FileTargetPlan:
    """What `create_file_target` would do for the target of `disk` at `path`, whose source disk
    has `size_bytes` (None: not stated). Looks at the file system only.

    Raises FileTargetRefused when the target can be neither created nor left alone as it is: a
    missing target below /dev (a block device is attached, never made), a missing target whose
    size is not known or whose directory does not exist, a link to nothing, a file of another
    size than `size_bytes`, or anything else than a regular file or a block device at `path`.
    """
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return _plan_missing(disk, path, size_bytes)
    except OSError as exc:
        raise FileTargetRefused(disk, path, f"cannot be examined: {exc.strerror}") from exc
    if stat.S_ISBLK(found.st_mode):
        return FileTargetPlan(disk, path, None, FileTargetAction.BLOCK_DEVICE)
    if not stat.S_ISREG(found.st_mode):
        raise FileTargetRefused(
            disk, path, "is neither a regular file nor a block device: name another path"
        )
    if size_bytes is not None and found.st_size != size_bytes:
        # Resizing it would cut off data or claim a disk size the source does not have: the
        # operator decides which of the two is wrong.
        raise FileTargetRefused(
            disk,
            path,
            f"exists with {found.st_size} bytes, but source_size is {size_bytes} bytes: "
            "correct source_size, or move the file away to have it created again",
        )
    return FileTargetPlan(disk, path, found.st_size, FileTargetAction.EXISTS)


def _plan_missing(disk: str, path: Path, size_bytes: int | None) -> FileTargetPlan:
    if path.is_symlink():
        # O_EXCL would refuse it anyway; said now, before any other target is created.
        raise FileTargetRefused(
            disk, path, f"is a link to {os.readlink(path)}, which does not exist: fix the link"
        )
    if path.is_relative_to(_DEVICE_DIRECTORY):
        raise FileTargetRefused(
            disk, path, "does not exist: a block device is attached to this host, never created"
        )
    if size_bytes is None:
        raise FileTargetRefused(
            disk,
            path,
            "does not exist and its disk has no source_size: set source_size to the source "
            "disk's size",
        )
    if size_bytes <= 0:
        raise FileTargetRefused(disk, path, f"cannot be created with source_size {size_bytes}")
    if not path.parent.is_dir():
        # Not made here: a missing directory is as likely a mistyped path or an unmounted drive.
        raise FileTargetRefused(
            disk, path, f"cannot be created: its directory {path.parent} does not exist"
        )
    return FileTargetPlan(disk, path, size_bytes, FileTargetAction.CREATE)


def create_file_target(plan: FileTargetPlan) -> None:
    """Carry out `plan` when its action is CREATE (else do nothing): a new sparse file of
    `plan.size_bytes` zeros, mode 0600 whatever the umask, durable (file and directory synced).

    Raises FileTargetRefused when the file cannot be created, also when something appeared at
    the path since the plan was made (it is left as it is); a file cut off half-made is removed.
    """
    if plan.action is not FileTargetAction.CREATE:
        return
    assert plan.size_bytes is not None
    try:
        # O_EXCL: never open (and so never touch) whatever another process put there meanwhile.
        fd = os.open(
            plan.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_TARGET_MODE
        )
    except OSError as exc:
        raise FileTargetRefused(plan.disk, plan.path, f"cannot be created: {exc.strerror}") from exc
    try:
        try:
            os.fchmod(fd, FILE_TARGET_MODE)
            # A hole of the whole size: no block is written, reads return zeros.
            os.ftruncate(fd, plan.size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(plan.path.parent)
    except OSError as exc:
        plan.path.unlink(missing_ok=True)
        raise FileTargetRefused(plan.disk, plan.path, f"cannot be created: {exc.strerror}") from exc
