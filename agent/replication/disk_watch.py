"""Following target disks as they come and go: udev events on the event loop (README "Target
disks").

A disk attached while the agent runs (the process server hot-adds target disks during reprotect)
is opened as soon as udev announces it: resolved, checked for use on this host, opened; its
replica leaves `missing` for its persisted state, or becomes `protected`. A disk removed turns
`missing` at once: its I/O is revoked so that a batch in flight fails instead of going on, and
that batch's undo records wait in the journal until the disk returns, when opening it rolls them
back. Nothing here blocks the loop: opening runs on each replica's I/O thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

from agent.log_fields import log_fields
from agent.replication.replica import Replica
from blockio.disks.udev_monitor import DiskEvent, DiskMonitor
from protocol.errors import TargetUnavailable

log = logging.getLogger(__name__)

# udev actions after which a missing disk may now be found (change: e.g. a LUN resized or
# re-presented under the same node).
_APPEARING = frozenset({"add", "change"})


def holds(replica: Replica, event: DiskEvent) -> bool:
    """Whether `replica` has the device of `event` open (same device number or node)."""
    target = replica.target
    if target is None:
        return False
    if event.devnum and target.devnum == event.devnum:
        return True
    return event.node is not None and str(target.path) == event.node


def may_be_target_of(replica: Replica, event: DiskEvent) -> bool:
    """Whether the disk of `event` could be `replica`'s target: its SCSI id matches, or cannot
    be told from the event (path targets, disks identified only by sysfs or by-id links)."""
    wanted = replica.config.scsi_uuid
    return wanted is None or event.scsi_id is None or event.scsi_id == wanted


class DiskWatcher:
    """Turns disk events into replica changes; owns the tasks that open disks."""

    def __init__(self, replicas: Iterable[Replica]) -> None:
        self.replicas = list(replicas)
        self._tasks: set[asyncio.Task[None]] = set()

    def on_readable(self, monitor: DiskMonitor) -> None:
        """The monitor's socket is readable: handle every queued event."""
        try:
            events = monitor.read_events()
        except OSError as exc:
            log.warning("reading udev events failed: %s", exc)
            return
        for event in events:
            self.handle(event)

    def handle(self, event: DiskEvent) -> None:
        """Act on one event: detach removed devices at once, open appearing ones soon."""
        log.info("udev: %s %s (%s)", event.action, event.node or event.sys_name, event.scsi_id)
        if event.action == "remove":
            for replica in self.replicas:
                if holds(replica, event):
                    replica.detach(f"device {event.node or event.sys_name} was removed")
            # A protected disk that went away is missing now; looking again tells.
            self.schedule(self.open_missing(only_protected=True))
        elif event.action in _APPEARING:
            self.schedule(self.open_missing(event))

    def schedule(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open_missing(
        self, event: DiskEvent | None = None, *, only_protected: bool = False
    ) -> None:
        """Try to open every replica without a target (that the event's disk could serve).

        A replica busy with a batch is left alone: that batch opens it itself.
        """
        for replica in self.replicas:
            # A released disk belongs to the recovered machine: not opened before a reprotect.
            if replica.target is not None or replica.lock.locked() or replica.released:
                continue
            if only_protected and not replica.protected_reason:
                continue
            if event is not None and not may_be_target_of(replica, event):
                continue
            async with replica.lock:
                if replica.target is not None or replica.released:
                    continue
                try:
                    target = await replica.ensure_open()
                except TargetUnavailable as exc:
                    log.info(
                        "disk %s: %s: %s",
                        replica.id,
                        replica.state,
                        exc,
                        extra=log_fields(disk=replica.id),
                    )
                    continue
            log.warning(
                "disk %s: target %s attached (%s bytes, %s-byte sectors); state %s",
                replica.id,
                target.path,
                target.size_bytes,
                target.sector_bytes,
                replica.state,
                extra=log_fields(disk=replica.id),
            )

    async def stop(self) -> None:
        """Cancel and wait for the open attempts under way."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
