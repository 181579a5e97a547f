"""Whether the agent is ready, healthy, and how its disks are doing, in words for people.

Ready (what /healthz and systemd's READY=1 say): the state store is open, every
disk's undo journal is recovered (or the disk is known missing), and both listeners
are bound. Healthy (what keeps systemd's watchdog fed): the event loop turns and the
state store answers a read within a deadline. A missing or failing disk is neither:
it is reported per disk, because restarting the agent would not bring it back and
would interrupt the other disks.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from agent.metrics import DiskSnapshot
from agent.replication.state import StateStore
from agent.units import human_duration
from protocol.documents import DiskState

log = logging.getLogger(__name__)

Phase = Literal["starting", "ready", "stopping"]


class Readiness:
    """The daemon's phase and, while not ready, why not. Owned by the daemon."""

    def __init__(self) -> None:
        self.phase: Phase = "starting"
        self.reason = "opening the state store and the disks, recovering undo journals"
        self.disks: Callable[[], Iterable[DiskSnapshot]] | None = None

    @property
    def is_ready(self) -> bool:
        return self.phase == "ready"

    def set_ready(self, disks: Callable[[], Iterable[DiskSnapshot]]) -> None:
        """Journals recovered and listeners bound; `disks()` tells their state from now on."""
        self.phase, self.reason, self.disks = "ready", "", disks

    def set_stopping(self) -> None:
        self.phase = "stopping"
        self.reason = "stop requested: finishing or rolling back batches in flight"

    def describe(self) -> dict[str, Any]:
        """The /healthz body: `status`, `reason` when not ready, disk counts by state."""
        body: dict[str, Any] = {"status": self.phase}
        if self.reason:
            body["reason"] = self.reason
        if self.disks is not None:
            states = Counter(snap.state for snap in self.disks())
            body["disks"] = {"total": sum(states.values()), **dict(sorted(states.items()))}
        return body


def status_line(snapshots: Iterable[DiskSnapshot], now_ns: int | None = None) -> str:
    """One line for systemd's STATUS=: disks ok of total, the others by state, worst RPO.

    Example: "2/3 disks ok (1 missing), worst RPO 4m12s on vm1-disk0".
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    snaps = list(snapshots)
    if not snaps:
        return "no disks configured"
    states = Counter(snap.state for snap in snaps)
    line = f"{states.pop(DiskState.OK, 0)}/{len(snaps)} disks ok"
    if states:
        line += " (" + ", ".join(f"{n} {state}" for state, n in sorted(states.items())) + ")"
    replicated = [snap for snap in snaps if snap.last_source_time_ns]
    if not replicated:
        return line + ", nothing replicated yet"
    worst = min(replicated, key=lambda snap: snap.last_source_time_ns)
    lag = max(0.0, (now_ns - worst.last_source_time_ns) / 1e9)
    return f"{line}, worst RPO {human_duration(lag)} on {worst.disk}"


class HealthProbe:
    """`await probe()` -> whether the agent is healthy (see the module docstring).

    The store is read on a thread of its own with a deadline; a read still stuck from
    an earlier probe makes the agent unhealthy at once instead of piling up threads.
    `reason` says why the last probe failed ("" after a good one).
    """

    def __init__(self, store: StateStore, deadline_seconds: float) -> None:
        self._store = store
        self._deadline = deadline_seconds
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="health")
        self._pending: asyncio.Future[object] | None = None
        self.reason = ""

    async def __call__(self) -> bool:
        if self._pending is not None and not self._pending.done():
            return self._unhealthy("the state store has not answered the previous health read")
        loop = asyncio.get_running_loop()
        # Any disk id will do: the read goes through the same connection and lock as commits.
        self._pending = loop.run_in_executor(self._executor, self._store.progress, "")
        try:
            async with asyncio.timeout(self._deadline):
                await asyncio.shield(self._pending)
        except TimeoutError:
            return self._unhealthy(f"the state store did not answer within {self._deadline:g} s")
        except sqlite3.Error as exc:
            return self._unhealthy(f"the state store failed a read: {exc}")
        if self.reason:
            log.info("healthy again")
        self.reason = ""
        return True

    def _unhealthy(self, reason: str) -> bool:
        if reason != self.reason:
            log.error("unhealthy: %s", reason)
        self.reason = reason
        return False

    def close(self) -> None:
        """Release the probe's thread (without waiting for a stuck read)."""
        self._executor.shutdown(wait=False)
