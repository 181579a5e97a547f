"""udev events of whole disks, read without blocking from a pyudev netlink monitor.

The monitor is a file descriptor an event loop can watch (`fileno()`); `read_events()` drains what
is queued and never waits. Events come from udev (not the raw kernel), so a disk that is added
shows up with the properties udev's rules gave it: its SCSI id is known when the event arrives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyudev

from blockio.disks.identity import identity_from_properties

# Where a running udevd answers; without it, no udev events are ever sent.
UDEV_CONTROL = Path("/run/udev/control")


@dataclass(frozen=True, slots=True)
class DiskEvent:
    """One udev event of a whole disk: `action` is add, remove, change, ... as udev says."""

    action: str
    node: str | None
    sys_name: str
    devnum: int
    scsi_id: str | None


def _event(device: pyudev.Device) -> DiskEvent:
    props = dict(device.properties)
    major, minor = props.get("MAJOR"), props.get("MINOR")
    return DiskEvent(
        action=device.action or "",
        node=device.device_node,
        sys_name=device.sys_name,
        devnum=os.makedev(int(major), int(minor)) if major and minor else 0,
        scsi_id=identity_from_properties(props),
    )


class DiskMonitor:
    """A netlink monitor of block disks (partitions left out). Build it with `open()`."""

    def __init__(self, monitor: pyudev.Monitor) -> None:
        self._monitor = monitor

    @classmethod
    def open(cls, context: pyudev.Context | None = None) -> DiskMonitor:
        """Start listening for udev's block-disk events.

        Raises OSError (or pyudev's errors) when the netlink socket cannot be made.
        """
        monitor = pyudev.Monitor.from_netlink(context or pyudev.Context(), source="udev")
        monitor.filter_by(subsystem="block", device_type="disk")
        monitor.start()
        return cls(monitor)

    def fileno(self) -> int:
        return int(self._monitor.fileno())

    def read_events(self) -> list[DiskEvent]:
        """Every event queued now, oldest first; an empty list when there is none. Never blocks."""
        events = []
        while (device := self._monitor.poll(timeout=0)) is not None:
            # The kernel filter is a hint, and an emulated netlink socket may not apply it.
            if device.subsystem == "block" and device.device_type == "disk":
                events.append(_event(device))
        return events

    def close(self) -> None:
        """Stop listening. Safe to call twice."""
        # pyudev closes the socket when the monitor is released.
        self._monitor = None


def udev_is_running(control: Path = UDEV_CONTROL) -> bool:
    """Whether udevd runs here: without it, disks still attach but no event tells of them."""
    return control.exists()
