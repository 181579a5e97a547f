"""Whether a target is in use on this host, and so must never be written (README "Target disks").

The master target's own disks sit beside the replication targets: a mistyped id or a /dev/sdX
renumbered at boot must never make the agent overwrite a mounted file system, a swap area, an
LVM/MD/device-mapper member or the disk the system runs from. Such a device is `protected`.

The decision is pure (`protection_reasons`, `size_reason`) over facts that thin readers gather
from /proc/self/mountinfo, /proc/swaps and sysfs (`read_host_use`, `read_disk_layout`), so it is
tested with tables as well as with real loop devices. `open_for_replication` checks, claims the
device exclusively (O_EXCL: from then on the kernel refuses every new mount, swapon or LVM/MD
claim of it) and checks again, which closes the window between the first check and the claim.

Size: the protocol does not carry the source disk's size, so a target is protected when it is
smaller than what is known to be needed: `source_size` in the config, and the size the target had
when it was last opened for writing (a smaller disk under the same id or path is another disk, or
a shrunk one; either way replicating into it would lose the end of the source).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from blockio.disks.target import TargetBusy, TargetDisk, TargetUnusable

PROC = Path("/proc")
SYSFS = Path("/sys")

# sysfs `size` counts 512-byte units whatever the logical sector size.
_SYSFS_SIZE_UNIT = 512

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class DeviceProtected(TargetUnusable):
    """The target is in use on this host (or too small) and was not opened for writing.
    `reasons` holds one line per finding."""

    def __init__(self, path: Path | str, reasons: Iterable[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__(path, "protected: " + "; ".join(self.reasons))


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo: the device number and where it is mounted."""

    devnum: int
    mount_point: str
    source: str


@dataclass(frozen=True, slots=True)
class BlockNode:
    """A disk or partition: its kernel name, device number and sysfs holders (dm-0, md0...)."""

    name: str
    devnum: int
    holders: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DiskLayout:
    """A disk and its partitions, as sysfs shows them."""

    disk: BlockNode
    partitions: tuple[BlockNode, ...] = ()


@dataclass(frozen=True, slots=True)
class HostUse:
    """What this host uses right now: mounts, active swap (devices by number, files by
    (st_dev, st_ino)), and every block device under the root file system (its device, the
    disk of a root partition, the disks below a root on LVM/MD)."""

    mounts: tuple[Mount, ...] = ()
    swap_devnums: frozenset[int] = frozenset()
    swap_files: frozenset[tuple[int, int]] = frozenset()
    root_devnums: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ExpectedSize:
    """The least a target must hold, and where that figure comes from (for the message)."""

    size_bytes: int
    source: str


def expected_size(
    source_size_bytes: int | None, seen_bytes: int, seen_ns: int
) -> ExpectedSize | None:
    """The least a target must hold: the configured source size, or the size the target had
    when it was last opened for writing (`seen_*`, 0 when never), whichever is larger."""
    configured = source_size_bytes or 0
    if configured and configured >= seen_bytes:
        return ExpectedSize(configured, "of the source disk (source_size in the config)")
    if seen_bytes:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen_ns / 1e9))
        return ExpectedSize(seen_bytes, f"it had when it was last opened ({when})")
    return None


def _unescape(field: str) -> str:
    # mountinfo and swaps write space, tab, newline and backslash as \040, \011, \012, \134.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """The mounts of proc(5) mountinfo text: `id parent major:minor root mount-point options
    [optional fields...] - fstype source super-options`. Lines that do not parse are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            major, minor = (int(part) for part in fields[2].split(":"))
        except ValueError:
            continue
        source = _unescape(fields[separator + 2]) if len(fields) > separator + 2 else ""
        mounts.append(Mount(os.makedev(major, minor), _unescape(fields[4]), source))
    return tuple(mounts)


def parse_swaps(text: str) -> tuple[str, ...]:
    """The file names of /proc/swaps text (a header line, then `Filename Type Size Used
    Priority` per active swap area)."""
    names = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields:
            names.append(_unescape(fields[0]))
    return tuple(names)


def protection_reasons(layout: DiskLayout, host: HostUse) -> tuple[str, ...]:
    """Why the disk of `layout` must not be written on a host that uses what `host` says;
    empty when nothing on the host uses it or any of its partitions."""
    reasons: list[str] = []
    root_mounted_directly = False
    for node in (layout.disk, *layout.partitions):
        label = node.name if node is layout.disk else f"partition {node.name}"
        for mount in host.mounts:
            if mount.devnum == node.devnum:
                reasons.append(f"{label} is mounted at {mount.mount_point}")
                root_mounted_directly = root_mounted_directly or mount.mount_point == "/"
        if node.devnum in host.swap_devnums:
            reasons.append(f"{label} is in use as swap")
        if node.holders:
            reasons.append(
                f"{label} is held by {', '.join(node.holders)} "
                "(a member of LVM, MD RAID or device-mapper)"
            )
    if not root_mounted_directly and any(
        node.devnum in host.root_devnums for node in (layout.disk, *layout.partitions)
    ):
        reasons.append(f"{layout.disk.name} carries the root file system")
    return tuple(reasons)


def swap_file_reason(dev_ino: tuple[int, int], host: HostUse) -> str | None:
    """Why a regular file must not be written: it is an active swap file; else None."""
    return "it is an active swap file" if dev_ino in host.swap_files else None


def size_reason(size_bytes: int, expected: ExpectedSize | None) -> str | None:
    """Why a target of `size_bytes` is too small for `expected`; None when it is big enough."""
    if expected is None or size_bytes >= expected.size_bytes:
        return None
    return (
        f"it holds {size_bytes} bytes, less than the {expected.size_bytes} bytes {expected.source}"
    )


# -- thin readers ---------------------------------------------------------------------------


def _read_devnum(dev_file: Path) -> int:
    major, minor = (int(part) for part in dev_file.read_text().strip().split(":"))
    return os.makedev(major, minor)


def _entries(directory: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(directory)))
    except FileNotFoundError:
        return ()


def sysfs_dir(devnum: int, sysfs: Path = SYSFS) -> Path:
    """The sysfs directory of block device `devnum` (/sys/dev/block/M:m resolved).
    Raises OSError when the kernel has no such device."""
    return (sysfs / "dev" / "block" / f"{os.major(devnum)}:{os.minor(devnum)}").resolve(strict=True)


def read_disk_layout(disk_dir: Path, devnum: int | None = None) -> DiskLayout:
    """The disk at sysfs directory `disk_dir` with its holders and partitions (the children
    that hold a `partition` file), each with its holders. `devnum` overrides the disk's `dev`
    attribute (the number of the node actually opened). Raises OSError when sysfs cannot be
    read."""
    number = _read_devnum(disk_dir / "dev") if devnum is None else devnum
    partitions = []
    for name in _entries(disk_dir):
        child = disk_dir / name
        if (child / "partition").is_file():
            holders = _entries(child / "holders")
            partitions.append(BlockNode(name, _read_devnum(child / "dev"), holders))
    disk = BlockNode(disk_dir.name, number, _entries(disk_dir / "holders"))
    return DiskLayout(disk, tuple(partitions))


def _devices_below(devnums: Iterable[int], sysfs: Path) -> frozenset[int]:
    """`devnums` and everything they are built on: the disk of a partition, the slaves of a
    dm/md device, recursively."""
    seen: set[int] = set()
    pending = list(devnums)
    while pending:
        devnum = pending.pop()
        if devnum in seen:
            continue
        seen.add(devnum)
        try:
            directory = sysfs_dir(devnum, sysfs)
        except OSError:
            continue
        below = []
        if (directory / "partition").is_file():
            below.append(directory.parent / "dev")
        below += [directory / "slaves" / name / "dev" for name in _entries(directory / "slaves")]
        for dev_file in below:
            try:
                pending.append(_read_devnum(dev_file))
            except (OSError, ValueError):
                continue
    return frozenset(seen)


def read_host_use(proc: Path = PROC, sysfs: Path = SYSFS) -> HostUse:
    """What this host uses now, from mountinfo, swaps and sysfs. Raises OSError when
    /proc cannot be read."""
    mounts = parse_mountinfo((proc / "self" / "mountinfo").read_text())
    swap_devnums: set[int] = set()
    swap_files: set[tuple[int, int]] = set()
    for name in parse_swaps((proc / "swaps").read_text()):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            swap_devnums.add(st.st_rdev)
        else:
            swap_files.add((st.st_dev, st.st_ino))
    roots: set[int] = set()
    for mount in mounts:
        if mount.mount_point != "/":
            continue
        roots.add(mount.devnum)
        # btrfs and others show an anonymous 0:N device; the source names the real one.
        try:
            st = os.stat(mount.source)
        except (OSError, ValueError):
            continue
        if stat.S_ISBLK(st.st_mode):
            roots.add(st.st_rdev)
    return HostUse(
        mounts=mounts,
        swap_devnums=frozenset(swap_devnums),
        swap_files=frozenset(swap_files),
        root_devnums=_devices_below(roots, sysfs),
    )


def check_target(
    path: Path,
    *,
    disk_dir: Path | None = None,
    expected: ExpectedSize | None = None,
    proc: Path = PROC,
    sysfs: Path = SYSFS,
) -> tuple[str, ...]:
    """Why the target at `path` (a block device or a regular file) must not be written; empty
    when it may be. Nothing is opened. `disk_dir` is the device's sysfs directory when the
    caller knows it (discovery does); otherwise it is found from the device number.

    A block device whose sysfs entry cannot be read is protected: what cannot be inspected is
    not written. Anything else than a block device or a regular file gives no reason here
    (opening it refuses it). Raises TargetUnusable when `path` does not exist.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TargetUnusable(path, "does not exist") from None
    except OSError as exc:
        raise TargetUnusable(path, f"cannot be examined: {exc.strerror or exc}") from exc
    host = read_host_use(proc, sysfs)
    reasons: list[str] = []
    if stat.S_ISBLK(st.st_mode):
        try:
            directory = disk_dir if disk_dir is not None else sysfs_dir(st.st_rdev, sysfs)
            layout = read_disk_layout(directory, st.st_rdev)
            size = int((directory / "size").read_text()) * _SYSFS_SIZE_UNIT
        except (OSError, ValueError) as exc:
            return (f"its sysfs entry cannot be read ({exc}), so its use cannot be checked",)
        reasons += protection_reasons(layout, host)
    elif stat.S_ISREG(st.st_mode):
        if (reason := swap_file_reason((st.st_dev, st.st_ino), host)) is not None:
            reasons.append(reason)
        size = st.st_size
    else:
        return ()
    if (reason := size_reason(size, expected)) is not None:
        reasons.append(reason)
    return tuple(reasons)


def open_for_replication(
    path: Path,
    *,
    disk_dir: Path | None = None,
    expected: ExpectedSize | None = None,
    direct_io: bool = False,
) -> TargetDisk:
    """Open `path` for writing only if nothing on this host uses it and it is big enough.

    Checks (`check_target`), opens it (block devices exclusively, O_EXCL), and checks again
    with the claim held: a mount that won the race shows then, and from then on the kernel
    refuses new ones. Raises DeviceProtected (a TargetUnusable) with the reasons when the
    target is in use or too small, before any byte is written; TargetUnusable when it is
    missing or cannot be opened.
    """
    reasons = check_target(path, disk_dir=disk_dir, expected=expected)
    if reasons:
        raise DeviceProtected(path, reasons)
    try:
        target = TargetDisk.open(path, writable=True, direct_io=direct_io)
    except TargetBusy as exc:
        raise DeviceProtected(path, [exc.reason]) from exc
    try:
        reasons = check_target(path, disk_dir=disk_dir, expected=expected)
    except BaseException:
        target.close()
        raise
    if reasons:
        target.close()
        raise DeviceProtected(path, reasons)
    return target
