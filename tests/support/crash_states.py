"""Many power-loss crash states from one run of the agent: the agent runs on a power-loss file
system (tests/support/powerfs.py) that is never cut; instead, at seeded file operations spread
over every batch, the file system writes the crash image a cut there would leave (its durable
state and, under `keep`, a random part of the pending writes) into a directory on tmpfs, and
goes on. Each image is then checked offline by the agent's own start-up recovery, run in this
process (tests/support/state_check.py): a fraction of a second a state instead of a restart of
the agent over FUSE, so that a run checks thousands. The end-to-end cuts
(tests/support/power_scenario.py) still prove the whole daemon on what a cut left.

The stream: random batches (some spanning two write groups, with ZERO frames and TAGs), and
every few dozen batches a resync (one batch, or two: a `resync` then a `resync_done`), with
pruning and segment rolls going on (small segments, a small retention). Images fall during a
batch, right after its 200 (the commit record append, pruning), and during a resync.

Which batches an image must hold: the sender asks the file system for its count of operations
right after each 200 (the same request arms the next images). An image taken after N
operations must be at least at the newest batch whose 200 came before a count <= N (its
commit, durable, was among those N operations), and at most one further, only if that one was
sent after a count <= N: the sender sends no batch before the 200 of the one before it.

Seeded: the batches, the operations at which images are taken and what each keeps.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import load_config
from agent.recovery.failover import fail_over_in_process, reprotect_in_process
from agent.recovery.restore import restore_in_place
from protocol.events import Tag
from tests.support.agent_harness import AgentProcess
from tests.support.batches import Write, apply_in_memory, batch
from tests.support.power_scenario import BIG_BATCH_BYTES, DISK_BYTES
from tests.support.powerfs import PowerFS
from tests.support.retention_scenario import BASE_TIME_NS, KiB, MiB, random_writes
from tests.support.state_check import (
    FAILOVER,
    IN_PLACE,
    StateChecker,
    quiet_logs,
    scratch_dir,
)

RETENTION: dict[str, object] = {"segment_bytes": "1MiB", "max_bytes": "48MiB"}
IMAGES_PER_BATCH = 4
# A resync about every this many batches.
RESYNC_EVERY = 30
# After this fraction of the batches the sender waits a retention round (pruning, the commit
# record), imaging its first operations: states right after a 200 with no batch in flight.
IDLE_EVERY = 1 / 6
IDLE_SECONDS = 1.2
# Group g1 rolled back to a random point with the agent stopped (the real failback, or a
# failover) before these batches, then every ROLLBACK_EVERY batches, in turn; each imaged
# IMAGES_PER_ROLLBACK times, and its resync after it as any batch.
ROLLBACK_AT = {5: IN_PLACE, 9: FAILOVER}
ROLLBACK_EVERY = 50
IMAGES_PER_ROLLBACK = 6
CHECKPOINT_EVERY = 32
BATCH_TIMEOUT = 120.0


@dataclass
class CrashStateReport:
    """What a run checked and found."""

    model: str
    keep: float
    states_checked: int = 0
    batches_acked: int = 0
    # States by what was going on: the kind of batch in flight, `after a 200` (none in flight),
    # an in-place recovery or failover, or the start and resync after one.
    by_moment: dict[str, int] = field(default_factory=dict)
    in_flight_committed: int = 0
    # Disks found `resync_required` where nothing asked for a resync (a gap), and where a
    # failover's reprotect did (as it must).
    resyncs_required: int = 0
    reprotected: int = 0
    points_restored: int = 0
    image_bytes: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


class Model:
    """The source disk after every batch, rebuilt from checkpoints; and what the target holds,
    which differs after an in-place recovery or a failover rolled it back to a point, until a
    resync writes it whole."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.history: list[list[Write]] = []
        self._checkpoints: dict[int, bytes] = {0: bytes(size)}
        self._recent: dict[int, bytes] = {}
        # seq -> (the point the target was rolled back to while at that seq, the count of
        # operations when that began).
        self._rolled_back: dict[int, tuple[int, int]] = {}

    @property
    def last_seq(self) -> int:
        return len(self.history)

    def append(self, writes: list[Write]) -> None:
        self.history.append(writes)
        if self.last_seq % CHECKPOINT_EVERY == 0:
            self._checkpoints[self.last_seq] = self.at(self.last_seq)

    def roll_back(self, point: int, count: int) -> None:
        """The target was rolled back to the content after batch `point`, from the `count`th
        file operation on."""
        self._rolled_back[self.last_seq] = (point, count)

    def at(self, seq: int) -> bytes:
        """The source after batch `seq`: what a recovery point of `seq` restores."""
        if seq in self._recent:
            return self._recent[seq]
        base = max(k for k in self._checkpoints if k <= seq)
        image = bytearray(self._checkpoints[base])
        for writes in self.history[base:seq]:
            apply_in_memory(image, writes)
        if len(self._recent) >= 4:
            self._recent.pop(min(self._recent))
        self._recent[seq] = bytes(image)
        return self._recent[seq]

    def target_at(self, seq: int, count: int) -> bytes:
        """What the target holds at `seq` after `count` file operations: the source, but after
        a rollback to a point the point's content, and the batches since written over it."""
        since = [k for k, (_, start) in self._rolled_back.items() if k <= seq and start <= count]
        if not since:
            return self.at(seq)
        base = max(since)
        image = bytearray(self.at(self._rolled_back[base][0]))
        for writes in self.history[base:seq]:
            apply_in_memory(image, writes)
        return bytes(image)


@dataclass(frozen=True)
class Rollback:
    """An in-place recovery or a failover, between two counts of operations."""

    kind: str
    start: int
    end: int
    point: str
    seq: int
    # The last batch acknowledged before it.
    last_seq: int

    @property
    def leaves(self) -> str:
        """The disk's state after it (a failover's after its reprotect), until a resync."""
        return "recovered" if self.kind == IN_PLACE else "resync_required"


@dataclass(frozen=True)
class Planned:
    """One batch to send."""

    kind: str
    writes: list[Write]
    flags: tuple[str, ...] = ()
    tag: Tag | None = None


class CrashStateRun:
    """One agent on one power-loss file system, imaged at seeded operations and never cut."""

    def __init__(
        self, fs: PowerFS, workdir: Path, images: Path, model: str, seed: int, keep: float
    ) -> None:
        self.fs = fs
        self.images = images
        self.rng = random.Random(seed)
        self.keep = keep
        self.report = CrashStateReport(model, keep)
        root = fs.mountpoint
        (root / "targets").mkdir()
        target = root / "targets" / "d0.img"
        target.write_bytes(bytes(DISK_BYTES))
        self.agent = AgentProcess.create(
            workdir / "agent", {"d0": target}, retention_path=root / "retention"
        )
        self.agent.state_dir = root / "state"
        self.agent.retention_options = dict(RETENTION)
        self.agent.write_config()
        self.images.mkdir()
        self.checker = StateChecker(workdir / "check", images.parent / "check", RETENTION)
        self.model = Model(DISK_BYTES)
        # The count of operations read right after the 200 of each batch, and its seq.
        self.ack_counts: list[int] = []
        self.ack_seqs: list[int] = []
        # The kind of each batch sent, and the count of operations right before it was, by seq.
        self.kinds: dict[int, str] = {}
        self.sent_at: dict[int, int] = {}
        # Mutating operations a batch of a kind took, as last seen.
        self.ops_of: dict[str, int] = {}
        self.queue: list[Planned] = []
        self.rollbacks: list[Rollback] = []

    async def run(self, states: int) -> CrashStateReport:
        started = time.monotonic()
        self.agent.start()
        try:
            first: list[Write] = [(0, self.rng.randbytes(64 * KiB))]
            await self._send(Planned("resync", first, ("resync", "resync_done")))
            self.fs.sync_all()
            while self.report.states_checked < states and not self.report.failures:
                kind = self._rollback_due()
                if kind is not None:
                    await self._roll_back(kind)
                self._check_images(limit=states)
                if self.report.failures:
                    break
                planned = self._next()
                before = self._arm(planned.kind)
                # Read after the images were checked: none after it came before the batch.
                self.sent_at[self.model.last_seq + 1] = before
                if not await self._send(planned):
                    break
                self.ops_of[planned.kind] = self.ack_counts[-1] - before
                if self.rng.random() < IDLE_EVERY:
                    await self._idle()
            self._arm("none", offsets=[])
            self._check_images(limit=states)
        finally:
            self.agent.kill()
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report

    def _count(self) -> int:
        return int(self.fs.status()["mutations"])

    def _next(self) -> Planned:
        if not self.queue:
            self.queue = self._plan()
        return self.queue.pop(0)

    def _plan(self) -> list[Planned]:
        rng = self.rng
        seq = self.model.last_seq + 1
        if rng.random() < 1 / RESYNC_EVERY:
            return self._resync()
        tag = None
        if rng.random() < 0.2:
            tag = Tag(f"t{seq}", f"tag {seq}", "crash", "g1", BASE_TIME_NS + seq)
        if rng.random() < 0.1:
            # Bigger than a write group (8 MiB): two groups, the first synced before the second.
            start = rng.randrange(0, DISK_BYTES - BIG_BATCH_BYTES, 512)
            frames = [
                (offset, rng.randbytes(MiB))
                for offset in range(start, start + BIG_BATCH_BYTES, MiB)
            ]
            return [Planned("two groups", [*frames, *random_writes(rng, DISK_BYTES)], tag=tag)]
        return [Planned("tag" if tag else "small", random_writes(rng, DISK_BYTES), tag=tag)]

    def _resync(self) -> list[Planned]:
        """A full resync: half random, half zeros (ZERO frames), in frames under the frame
        limit; one batch, or two (`resync`, then `resync_done`)."""
        rng = self.rng
        image = rng.randbytes(DISK_BYTES // 2)
        frames: list[Write] = [
            (offset, image[offset : offset + MiB]) for offset in range(0, len(image), MiB)
        ]
        frames.append((DISK_BYTES // 2, DISK_BYTES // 2))
        if rng.random() < 0.5:
            return [Planned("resync", frames, ("resync", "resync_done"))]
        half = len(frames) // 2
        return [
            Planned("resync", frames[:half], ("resync",)),
            Planned("resync", frames[half:], ("resync", "resync_done")),
        ]

    def _rollback_due(self) -> str | None:
        if self.queue:
            return None  # not inside a resync of two batches
        seq = self.model.last_seq + 1
        if seq in ROLLBACK_AT:
            return ROLLBACK_AT[seq]
        if seq % ROLLBACK_EVERY == 0:
            return IN_PLACE if seq // ROLLBACK_EVERY % 2 else FAILOVER
        return None

    async def _roll_back(self, kind: str) -> None:
        """Stop the agent, roll g1 back to a random point (`kind`), imaging it, then start the
        agent again (imaging its start) and resync."""
        points = [p for p in await self.agent.points() if "d0" in p["disks"]]
        if not points:
            return
        point = self.rng.choice(points)
        self.agent.stop()
        config = load_config(self.agent.config_path)
        start = self._arm(kind, offsets=self._offsets(kind, IMAGES_PER_ROLLBACK, 60))
        with quiet_logs():
            if kind == IN_PLACE:
                await asyncio.to_thread(restore_in_place, config, "g1", point["id"])
            else:
                quiet = lambda *_: None  # noqa: E731
                await asyncio.to_thread(fail_over_in_process, config, "g1", point["id"], quiet)
        end = self._arm("start", offsets=[])
        self.ops_of[kind] = end - start
        seq = point["disks"]["d0"]
        self.rollbacks.append(Rollback(kind, start, end, point["id"], seq, self.model.last_seq))
        if kind == FAILOVER:
            with quiet_logs():
                await asyncio.to_thread(reprotect_in_process, config, "g1")
        self.model.roll_back(point["disks"]["d0"], start)
        self._arm("start", offsets=self._offsets("start", 3, 40))
        self.agent.start()
        self.queue = self._resync()

    def _offsets(self, kind: str, count: int, guess: int) -> list[int]:
        span = max(int(self.ops_of.get(kind, guess) * 1.2), count)
        return sorted(self.rng.sample(range(1, span + 1), count))

    def _arm(self, kind: str, offsets: list[int] | None = None) -> int:
        """Arm the images of the next batch (of `kind`). Returns the count of operations now."""
        if offsets is None:
            offsets = self._offsets(kind, IMAGES_PER_BATCH, 60)
        return self.fs.images_at(
            offsets, self.images, seed=self.rng.getrandbits(32), keep=self.keep
        )

    async def _idle(self) -> None:
        self._arm("idle", offsets=sorted(self.rng.sample(range(1, 25), 3)))
        await asyncio.sleep(IDLE_SECONDS)

    async def _send(self, planned: Planned) -> bool:
        seq = self.model.last_seq + 1
        when = BASE_TIME_NS + seq * 1_000_000_000
        body = batch(
            "d0", seq, planned.writes, flags=planned.flags, tag=planned.tag, source_time_ns=when
        )
        self.kinds[seq] = planned.kind
        status, answer = await asyncio.wait_for(
            self.agent.put_batch("d0", seq, body), BATCH_TIMEOUT
        )
        if status != 200:
            self.report.failures.append(f"batch {seq} ({planned.kind}) answered {status}: {answer}")
            return False
        # Read at once: every operation of the batch's commit came before this count.
        self.ack_counts.append(self._count())
        self.ack_seqs.append(seq)
        self.model.append(planned.writes)
        self.report.batches_acked += 1
        return True

    def _acked_at(self, count: int) -> int:
        """The newest seq whose 200 the sender had seen before `count` operations."""
        index = bisect.bisect_right(self.ack_counts, count) - 1
        return self.ack_seqs[index] if index >= 0 else 0

    def _check_images(self, limit: int) -> None:
        for image in sorted(self.images.iterdir()):
            if image.name.endswith(".part"):
                continue
            if self.report.states_checked >= limit or self.report.failures:
                _remove(image)
                continue
            self._check_one(image)

    def _check_one(self, image: Path) -> None:
        report = self.report
        count = int(image.name)
        report.image_bytes += sum(p.stat().st_size for p in image.rglob("*") if p.is_file())
        rollback = next((r for r in self.rollbacks if r.start <= count < r.end), None)
        after: Rollback | None = None
        acked = self._acked_at(count)
        if rollback is not None:
            moment = rollback.kind
            expected = self.model.at(rollback.seq)
            verdict = self.checker.check_rollback(image, rollback.kind, rollback.point, expected)
        else:
            in_flight = count >= self.sent_at.get(acked + 1, count + 1)
            moment = self.kinds[acked + 1] if in_flight else "after a 200"
            after = next(
                (r for r in self.rollbacks if r.end <= count and r.last_seq == acked), None
            )
            if after is not None:
                moment = f"{'resync' if in_flight else 'start'} after the {after.kind}"
            verdict = self.checker.check(
                image,
                acked,
                in_flight,
                functools.partial(self.model.target_at, count=count),
                self.model.at,
                self.rng,
            )
        report.states_checked += 1
        report.by_moment[moment] = report.by_moment.get(moment, 0) + 1
        if verdict.failure is not None:
            report.failures.append(
                f"image after operation {count} ({moment}, 200 of batch {acked} seen): "
                f"{verdict.failure}"
            )
            return
        if rollback is None and verdict.last_seq == acked + 1:
            report.in_flight_committed += 1
        elif rollback is None and after is not None and verdict.state != after.leaves:
            report.failures.append(
                f"image after operation {count} ({moment}): the disk is {verdict.state}, "
                f"not {after.leaves}"
            )
            return
        if verdict.state == "resync_required":
            if after is not None and after.kind == FAILOVER:
                report.reprotected += 1
            else:
                report.resyncs_required += 1
        if verdict.restored is not None:
            report.points_restored += 1


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


async def crash_states(
    base: Path, *, model: str, states: int, seed: int, keep: float
) -> CrashStateReport:
    """Mount a power-loss file system of `model` under `base`, run an agent on it and check
    `states` crash images taken along the way (see the module docstring)."""
    scratch = scratch_dir(base)
    try:
        with PowerFS.mounted(base / "fs", model=model) as fs:
            run = CrashStateRun(fs, base, scratch / "images", model, seed, keep)
            return await run.run(states)
    finally:
        _remove(scratch)
