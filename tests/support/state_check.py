"""One crash state checked the way the agent would meet it: the same start-up recovery the daemon
runs before it answers (`agent.server.contexts.open_replicas`, then the retention task's first
round, which completes the commit records a crash lost), run in this process on a crash image
(`PowerLossState.crash_image`) instead of a restarted agent over FUSE: milliseconds instead of
seconds, so that one run can check a thousand states.

The checks are those of the end-to-end power cuts (tests/support/power_scenario.py):

- recovery opens the disk (a disk left `missing` is a failure);
- `last_seq` is the last seq whose 200 the sender had seen when the image was taken, or the
  one more that was in flight then;
- the disk is `ok` (or `resyncing`, inside a resync of several batches) and the target equals
  the model after batch `last_seq`; or it says `resync_required` (counted, not a failure);
- a recovery point listed, picked at random, restores exactly (`mtagent recover --output`'s
  own code).

A state imaged during an in-place recovery or a failover (done with the agent stopped) is
checked the way the operator goes on: the same recovery or failover, to the same point, run
again on it must finish, leave the target exactly at the point and the disk `recovered` or
`failed_over`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig, load_config
from agent.recovery.failover import fail_over_in_process
from agent.recovery.points import running_points
from agent.recovery.restore import export_point, restore_in_place
from agent.replication.replica import Replica
from agent.replication.retention_gate import complete_commit_records
from agent.replication.state import StateStore
from agent.retention.drive import prepare_retention_dir
from protocol.documents import DiskState
from tests.support.agent_harness import AgentProcess

# The model: the disk's content after batch `seq`.
ImageAt = Callable[[int], bytes]
IN_PLACE = "in-place recovery"
FAILOVER = "failover"


@dataclass(frozen=True)
class Verdict:
    """What start-up recovery made of one crash state."""

    state: str
    last_seq: int
    failure: str | None = None
    # The seq of the point restored exactly, or None when none was listed (or it failed).
    restored: int | None = None


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    # Recovery logs what it rolled back at warning: a thousand states would bury the progress.
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class StateChecker:
    """Checks crash images of disk d0 (group g1) of an agent whose state directory, retention
    and target were the root of a power-loss file system: `state/`, `retention/`,
    `targets/d0.img`. Each image is moved to `scratch/state` (`scratch` on the images' file
    system), checked and removed; the agent's configuration and certificates go to `workdir`."""

    def __init__(self, workdir: Path, scratch: Path, retention_options: dict[str, object]) -> None:
        self.root = scratch / "state"
        self.exports = scratch / "exports"
        scratch.mkdir(parents=True, exist_ok=True)
        agent = AgentProcess.create(
            workdir,
            {"d0": self.root / "targets" / "d0.img"},
            retention_path=self.root / "retention",
        )
        agent.state_dir = self.root / "state"
        agent.retention_options = dict(retention_options)
        agent.write_config()
        self.config: AgentConfig = load_config(agent.config_path)

    def check(
        self,
        image: Path,
        acked: int,
        in_flight: bool,
        target_at: ImageAt,
        point_at: ImageAt,
        rng: random.Random,
    ) -> Verdict:
        """Check the crash image `image` (removed after), taken when the sender had seen the
        200 of batch `acked` and, if `in_flight`, sent batch `acked + 1`: the target must hold
        `target_at(last_seq)`, a point of seq n restore `point_at(n)`."""
        if self.root.exists():
            shutil.rmtree(self.root)
        os.rename(image, self.root)
        try:
            with quiet_logs():
                return self._check(acked, in_flight, target_at, point_at, rng)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            shutil.rmtree(self.exports, ignore_errors=True)

    def check_rollback(self, image: Path, kind: str, point: str, expected: bytes) -> Verdict:
        """Check the crash image `image` (removed after), taken during the `kind` (IN_PLACE or
        FAILOVER) of group g1 to `point`, whose content is `expected`."""
        if self.root.exists():
            shutil.rmtree(self.root)
        os.rename(image, self.root)
        try:
            with quiet_logs():
                return self._check_rollback(kind, point, expected)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _check_rollback(self, kind: str, point: str, expected: bytes) -> Verdict:
        try:
            if kind == IN_PLACE:
                restore_in_place(self.config, "g1", point)
                wanted = DiskState.RECOVERED
            else:
                # It runs its own event loop: not on this thread, which may run one.
                with ThreadPoolExecutor(1) as thread:
                    quiet = lambda *_: None  # noqa: E731
                    thread.submit(fail_over_in_process, self.config, "g1", point, quiet).result()
                wanted = DiskState.FAILED_OVER
        except Exception as exc:
            return Verdict("?", 0, f"{kind} to {point} run again: {exc!r}")
        store = StateStore.open_readonly(self.config.server.state_dir)
        try:
            progress = store.progress("d0")
        finally:
            store.close()
        verdict = Verdict(progress.state.value, progress.last_seq)
        if progress.state != wanted:
            return _failed(verdict, f"{kind} to {point} run again left the disk {progress.state}")
        [disk] = self.config.disks
        assert disk.path is not None
        if disk.path.read_bytes() != expected:
            return _failed(verdict, f"{kind} to {point} run again: the target is not the point")
        return verdict

    def _check(
        self,
        acked: int,
        in_flight: bool,
        target_at: ImageAt,
        point_at: ImageAt,
        rng: random.Random,
    ) -> Verdict:
        config = self.config
        [disk] = config.disks
        prepare_retention_dir(config.retention)
        store = StateStore.open(config.server.state_dir)
        try:
            replica = Replica(
                disk,
                config.retention.path / disk.id,
                store.progress(disk.id),
                store=store,
                segment_bytes=config.retention.segment_bytes,
            )
            try:
                return self._recovered(replica, store, acked, in_flight, target_at, point_at, rng)
            finally:
                replica.close_blocking()
                replica.executor.shutdown(wait=True)
        finally:
            store.close()

    def _recovered(
        self,
        replica: Replica,
        store: StateStore,
        acked: int,
        in_flight: bool,
        target_at: ImageAt,
        point_at: ImageAt,
        rng: random.Random,
    ) -> Verdict:
        try:
            replica.open_blocking()
            assert replica.journal is not None
            complete_commit_records(replica.journal, store, replica.progress.last_seq)
        except Exception as exc:  # whatever it is, the disk would stay `missing`
            state = replica.state.value
            return Verdict(state, replica.progress.last_seq, f"start-up recovery: {exc!r}")
        state, last_seq = replica.state, replica.progress.last_seq
        verdict = Verdict(state.value, last_seq)
        if not (last_seq == acked or (in_flight and last_seq == acked + 1)):
            more = " (one in flight)" if in_flight else ""
            return _failed(verdict, f"last_seq {last_seq} after the 200 of batch {acked}{more}")
        if state == DiskState.RESYNC_REQUIRED:
            return verdict
        # `recovered`: rolled back in place, waiting for its resync (the model knows to what).
        if state not in (DiskState.OK, DiskState.RESYNCING, DiskState.RECOVERED):
            return _failed(verdict, f"disk {state.value}: {replica.state_reason}")
        assert replica.target is not None
        if _target_bytes(replica) != target_at(last_seq):
            return _failed(verdict, f"target differs from the model at batch {last_seq}")
        points = running_points(self.config, {replica.id: replica}, store, "g1")
        points = [p for p in points if replica.id in p.disks]
        if not points:
            return verdict
        point = rng.choice(points)
        try:
            export_point(self.config, "g1", point.id, self.exports)
        except Exception as exc:
            return _failed(verdict, f"point {point.id} not restored: {exc!r}")
        seq = point.disks[replica.id]
        if (self.exports / f"{replica.id}.img").read_bytes() != point_at(seq):
            return _failed(verdict, f"point {point.id} does not restore batch {seq} exactly")
        return Verdict(state.value, last_seq, restored=seq)


def _target_bytes(replica: Replica) -> bytes:
    assert replica.config.path is not None
    return replica.config.path.read_bytes()


def _failed(verdict: Verdict, failure: str) -> Verdict:
    return Verdict(verdict.state, verdict.last_seq, failure)


def scratch_dir(base: Path) -> Path:
    """A new directory for the images and the state under check, on tmpfs when there is one
    (/dev/shm: a thousand images of tens of MiB need not reach a disk), else under `base`."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        return Path(tempfile.mkdtemp(prefix="mtagent-crash-states-", dir=shm))
    path = base / "scratch"
    path.mkdir(parents=True)
    return path
