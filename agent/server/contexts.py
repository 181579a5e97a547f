"""Every cleanup context of the data-port application: each resource and background task set up
before the listeners take requests and torn down after they stop, in the order `create_app`
appends them (the disks before their watch and the retention task; the agent lock is taken by
`run_daemon` before any of them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pyudev
from aiohttp import web

from agent.log_fields import log_fields
from agent.recovery.failover import GroupFailovers, StepGate
from agent.replication.disk_watch import DiskWatcher
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate
from agent.replication.state import FailoverPhase, StateStore
from agent.retention.drive import prepare_retention_dir
from agent.retention.keeper import RetentionKeeper
from agent.retention.metrics import RetentionCollector, RetentionMetrics
from agent.server import keys
from blockio.disks.udev_monitor import DiskMonitor, udev_is_running

log = logging.getLogger(__name__)


async def open_replicas(app: web.Application) -> AsyncIterator[None]:
    """Open the state store and every disk, rolling back batches cut off by a crash, once the
    retention directory is ready (RetentionDirRefused, before any disk is opened, if it is not:
    see `agent.retention.drive`)."""
    config = app[keys.CONFIG]
    await asyncio.to_thread(prepare_retention_dir, config.retention)
    store = await asyncio.to_thread(StateStore.open, config.server.state_dir)
    failovers = {f.group: f for f in await asyncio.to_thread(store.open_failovers)}
    replicas: dict[str, Replica] = {}
    for disk in config.disks:
        progress = await asyncio.to_thread(store.progress, disk.id)
        replica = Replica(
            disk,
            config.retention.path / disk.id,
            progress,
            store=store,
            segment_bytes=config.retention.segment_bytes,
        )
        replica.failover = failovers.get(disk.group)
        if replica.released:
            # Handed over to the recovered machine: left alone until the group is reprotected.
            replica.unavailable_reason = f"released by the failover of group {disk.group}"
            replicas[disk.id] = replica
            continue
        try:
            await replica.run(replica.open_blocking)
        except OSError as exc:
            replica.unavailable_reason = str(exc)
            log.error(
                "disk %s: target unavailable: %s", disk.id, exc, extra=log_fields(disk=disk.id)
            )
        except Exception as exc:
            replica.unavailable_reason = str(exc)
            log.error("disk %s: %s", disk.id, exc, extra=log_fields(disk=disk.id))
        replicas[disk.id] = replica
    app[keys.STORE] = store
    app[keys.REPLICAS] = replicas
    app[keys.METRICS].watch_disks(lambda: [r.snapshot() for r in replicas.values()])
    yield
    for replica in replicas.values():
        async with replica.lock:
            await replica.run(replica.close_blocking)
        replica.executor.shutdown(wait=True)
    await asyncio.to_thread(store.close)


async def watch_disks(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the udev monitor on the event loop, from after the replicas are opened
    (append it after `open_replicas`) until before they are closed.

    Where no monitor can be made (no netlink), the agent runs on without it: a missing disk is
    then opened by its next batch and a removed one fails its next I/O.
    """
    watcher = DiskWatcher(app[keys.REPLICAS].values())
    try:
        monitor = DiskMonitor.open()
    except (OSError, pyudev.DeviceNotFoundError) as exc:
        log.warning(
            "no udev monitor (%s): disks are looked for again only at their next batch", exc
        )
        yield
        return
    if not udev_is_running():
        log.warning("udevd is not running: hot-added disks are found at their next batch only")
    loop = asyncio.get_running_loop()
    fd = monitor.fileno()
    loop.add_reader(fd, watcher.on_readable, monitor)
    # Disks that came between the replicas' opening and now had no one listening.
    watcher.schedule(watcher.open_missing())
    try:
        yield
    finally:
        loop.remove_reader(fd)
        await watcher.stop()
        monitor.close()


async def run_retention(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the retention gate, metrics and task (after the disks are open)."""
    config = app[keys.CONFIG]
    replicas = app[keys.REPLICAS]
    store = app[keys.STORE]
    registry = app[keys.REGISTRY]
    gate = RetentionGate()
    app[keys.RETENTION_GATE] = gate
    keeper = RetentionKeeper(config.retention, replicas, store, gate, RetentionMetrics(registry))
    registry.register(RetentionCollector(config, replicas, store, gate, lambda: keeper.full))
    await keeper.tick()
    task = asyncio.create_task(keeper.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_failovers(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the failovers of groups (after the disks are open); a failover cut off
    by a stop or a crash is finished from its recorded phase, in the background."""
    failovers = GroupFailovers(
        app[keys.CONFIG], app[keys.REPLICAS], app[keys.STORE], StepGate.from_environment()
    )
    app[keys.FAILOVERS] = failovers
    app[keys.METRICS].watch_failovers(failovers.snapshots, [p.value for p in FailoverPhase])
    failovers.resume()
    yield
    await failovers.stop()
