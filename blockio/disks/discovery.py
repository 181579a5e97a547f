"""Finding target disks by SCSI UUID: pyudev enumeration of the host's block disks.

Each whole disk (DEVTYPE=disk) becomes a `BlockDisk` record: device node, canonical SCSI id, size,
logical sector size, vendor/model and /dev/disk/by-id links. The id comes, in order, from the udev
properties (`identity_from_properties`), from sysfs `device/wwid` (filled by the kernel, so it
works where udev has not run), and from the /dev/disk/by-id/scsi-3... and wwn-0x... links. A
configured id is matched against the records by `locate`, a pure function: none found is
`DiskNotFound` (with a `disk.EnableUUID` explanation when disks without any identity are attached),
more than one is `AmbiguousDisk` (multipath paths of one LUN: refusing beats writing one path).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyudev

from blockio.disks.identity import (
    identity_from_by_id_name,
    identity_from_properties,
    identity_from_wwid,
)
from blockio.disks.target import TargetUnusable

BY_ID_DIR = Path("/dev/disk/by-id")

# sysfs `size` counts 512-byte units whatever the logical sector size.
_SYSFS_SIZE_UNIT = 512

ENABLE_UUID_HINT = (
    "VMware shows a disk's SCSI UUID to the guest only with disk.EnableUUID = TRUE: power the "
    "master target VM off, add disk.EnableUUID = TRUE under Edit Settings > VM Options > "
    "Advanced > Configuration Parameters, and power it on again"
)


@dataclass(frozen=True, slots=True)
class BlockDisk:
    """One whole disk of this host as udev and sysfs describe it."""

    node: Path
    sys_path: Path
    devnum: int
    scsi_id: str | None
    size_bytes: int
    sector_bytes: int
    vendor: str
    model: str
    by_id: tuple[str, ...]
    # Loop, RAM, zram, dm and md devices: never a VMware disk, never listed as a candidate.
    virtual: bool

    @property
    def name(self) -> str:
        return self.sys_path.name

    @property
    def is_vmware(self) -> bool:
        return self.vendor.lower().startswith("vmware")

    def to_json(self) -> dict[str, object]:
        return {
            "device": str(self.node),
            "scsi_id": self.scsi_id,
            "size_bytes": self.size_bytes,
            "sector_bytes": self.sector_bytes,
            "vendor": self.vendor,
            "model": self.model,
            "by_id": list(self.by_id),
        }


def no_identity_message(disk: BlockDisk) -> str:
    """What to tell an operator about a disk that shows no SCSI identity at all."""
    label = " ".join(part for part in (disk.vendor, disk.model) if part)
    what = f"{disk.node} ({label})" if label else str(disk.node)
    return f"{what} shows no SCSI UUID (no ID_SERIAL, ID_WWN or wwid): {ENABLE_UUID_HINT}"


class DiskNotFound(TargetUnusable):
    """No attached disk carries the configured SCSI id."""


class AmbiguousDisk(TargetUnusable):
    """More than one disk carries the configured SCSI id (multipath paths of one LUN)."""


def locate(scsi_id: str, disks: Sequence[BlockDisk]) -> BlockDisk:
    """The one disk of `disks` whose canonical id is `scsi_id` (canonical too).

    Raises DiskNotFound when none has it (the message explains disk.EnableUUID when some
    attached disk shows no identity at all), AmbiguousDisk when several have it.
    """
    matches = [disk for disk in disks if disk.scsi_id == scsi_id]
    if len(matches) == 1:
        return matches[0]
    where = f"scsi_uuid {scsi_id}"
    if matches:
        nodes = ", ".join(str(disk.node) for disk in matches)
        raise AmbiguousDisk(
            where,
            f"{len(matches)} disks carry this id ({nodes}): several paths to one LUN "
            "(multipath?); refusing to pick one",
        )
    anonymous = [disk for disk in disks if disk.scsi_id is None and not disk.virtual]
    reason = "no attached disk carries this SCSI id"
    if anonymous:
        nodes = ", ".join(str(disk.node) for disk in anonymous)
        verb = "shows" if len(anonymous) == 1 else "show"
        reason += f"; {nodes} {verb} no SCSI UUID at all: {ENABLE_UUID_HINT}"
    raise DiskNotFound(where, reason)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip()


def _attribute(device: pyudev.Device, name: str) -> str:
    try:
        return _text(device.attributes.get(name))
    except (OSError, UnicodeDecodeError):
        return ""


def _int_attribute(device: pyudev.Device, name: str, default: int) -> int:
    try:
        return int(_attribute(device, name))
    except ValueError:
        return default


def _disk_from_udev(device: pyudev.Device) -> BlockDisk:
    props = dict(device.properties)
    scsi_id = identity_from_properties(props)
    if scsi_id is None:
        scsi_id = identity_from_wwid(_attribute(device, "device/wwid"))
    links = set(device.device_links) | set(props.get("DEVLINKS", "").split())
    by_id = tuple(sorted(link for link in links if link.startswith(f"{BY_ID_DIR}/")))
    major, minor = props.get("MAJOR"), props.get("MINOR")
    devnum = os.makedev(int(major), int(minor)) if major and minor else 0
    sys_path = Path(device.sys_path)
    return BlockDisk(
        node=Path(device.device_node or f"/dev/{device.sys_name}"),
        sys_path=sys_path,
        devnum=devnum,
        scsi_id=scsi_id,
        size_bytes=_int_attribute(device, "size", 0) * _SYSFS_SIZE_UNIT,
        sector_bytes=_int_attribute(device, "queue/logical_block_size", 512),
        vendor=_attribute(device, "device/vendor") or props.get("ID_VENDOR", "").replace("_", " "),
        model=_attribute(device, "device/model") or props.get("ID_MODEL", "").replace("_", " "),
        by_id=by_id,
        virtual="/devices/virtual/" in f"{sys_path}/",
    )


def _link_target(link: Path) -> Path:
    # readlink and a join, not realpath: the by-id links are one level deep (../../sdb), and this
    # stays true to what the link says even where stat of the node is not possible.
    return Path(os.path.normpath(link.parent / os.readlink(link)))


def by_id_identities(by_id_dir: Path = BY_ID_DIR) -> dict[Path, tuple[str, str]]:
    """Device node -> (canonical id, link) for every scsi-3... and wwn-0x... link in
    `by_id_dir` (empty when the directory does not exist)."""
    found: dict[Path, tuple[str, str]] = {}
    try:
        names = sorted(os.listdir(by_id_dir))
    except FileNotFoundError:
        return found
    for name in names:
        scsi_id = identity_from_by_id_name(name)
        if scsi_id is None:
            continue
        link = by_id_dir / name
        try:
            found.setdefault(_link_target(link), (scsi_id, str(link)))
        except OSError:
            continue
    return found


def _with_by_id(disk: BlockDisk, links: dict[Path, tuple[str, str]]) -> BlockDisk:
    """The record with its id filled in from a by-id link when udev and sysfs gave none."""
    if disk.node not in links:
        return disk
    scsi_id, link = links[disk.node]
    return BlockDisk(
        node=disk.node,
        sys_path=disk.sys_path,
        devnum=disk.devnum,
        scsi_id=disk.scsi_id or scsi_id,
        size_bytes=disk.size_bytes,
        sector_bytes=disk.sector_bytes,
        vendor=disk.vendor,
        model=disk.model,
        by_id=tuple(sorted({*disk.by_id, link})),
        virtual=disk.virtual,
    )


def enumerate_disks(
    context: pyudev.Context | None = None, by_id_dir: Path = BY_ID_DIR
) -> list[BlockDisk]:
    """Every whole block disk udev knows, in udev's order, with its identity.

    Raises OSError (or pyudev's errors) only when udev/sysfs cannot be read at all.
    """
    context = context or pyudev.Context()
    disks = [
        _disk_from_udev(device)
        for device in context.list_devices(subsystem="block", DEVTYPE="disk")
    ]
    links = by_id_identities(by_id_dir)
    return [_with_by_id(disk, links) for disk in disks]


def candidate_disks(disks: Iterable[BlockDisk]) -> list[BlockDisk]:
    """The disks that could be replication targets: not loop/RAM/dm/md devices."""
    return [disk for disk in disks if not disk.virtual]


def resolve_scsi_id(
    scsi_id: str, context: pyudev.Context | None = None, by_id_dir: Path = BY_ID_DIR
) -> BlockDisk:
    """The attached disk that carries canonical `scsi_id`, looked up afresh.

    Raises DiskNotFound, AmbiguousDisk (both TargetUnusable); TargetUnusable when udev
    cannot be read.
    """
    try:
        disks = enumerate_disks(context, by_id_dir)
    except (OSError, pyudev.DeviceNotFoundError) as exc:
        raise TargetUnusable(f"scsi_uuid {scsi_id}", f"cannot enumerate disks: {exc}") from exc
    return locate(scsi_id, disks)
