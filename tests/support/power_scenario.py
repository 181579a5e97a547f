"""Power cuts under a real agent: its state directory, retention and target on a power-loss file
system (`tests.support.powerfs`), a sender streaming random batches and keeping a model, the
power cut after a random number of file operations (during a batch, right after a 200, during
start-up recovery, pruning, ...), then the agent started on what survived and checked:

- the disk is `ok` at `last_seq`, which is the last seq whose 200 the sender saw or at most the
  one more that was in flight, and the target equals the model after batch `last_seq`;
- or the disk says `resync_required` (then a full resync brings it back, and that is counted);
- one recovery point listed, picked at random, restores exactly (an export).

With `images_per_start`, each start of the agent on what a cut left is imaged that many times
too (crash images, tests/support/crash_states.py), each checked offline in the same way by the
start-up code run in this process: cuts during start-up recovery, many more than the cuts that
restart the agent, for a fraction of a second each.

Seeded: the batches, the moments of the cuts and what each cut keeps come from one seed. Used by
tests/agent/test_power_loss.py (a bounded count) and scripts/torture.py (the long run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from protocol.events import Tag
from tests.support.agent_harness import AgentProcess
from tests.support.batches import Write, apply_in_memory, batch
from tests.support.powerfs import PowerFS
from tests.support.retention_scenario import BASE_TIME_NS, KiB, MiB, SourceDisk, random_writes
from tests.support.state_check import StateChecker, scratch_dir
from tests.support.waiting import WaitTimedOut

DISK_BYTES = 12 * MiB
# The agent's write groups are 8 MiB: a batch this big spans two.
BIG_BATCH_BYTES = 9 * MiB
BATCH_TIMEOUT = 60.0


@dataclass
class PowerCutReport:
    """What a run did and found."""

    model: str
    cuts: int = 0
    states_checked: int = 0
    batches_acked: int = 0
    in_flight_committed: int = 0
    cuts_in_start_up: int = 0
    # Crash images taken during the agent's starts after a cut, each checked offline.
    start_up_images: int = 0
    resyncs_required: int = 0
    points_restored: int = 0
    failures: list[str] = field(default_factory=list)


def resync_writes(image: bytes) -> list[Write]:
    """A full copy of `image`, in frames under the agent's frame limit (4 MiB): one frame of
    the whole disk is refused with 413 FRAME_TOO_LARGE."""
    return [(offset, image[offset : offset + MiB]) for offset in range(0, len(image), MiB)]


def _writes(rng: random.Random) -> list[Write]:
    if rng.random() < 0.12:
        # Bigger than a write group: two groups, the first synced before the second.
        start = rng.randrange(0, DISK_BYTES - BIG_BATCH_BYTES, 512)
        frames: list[Write] = [
            (offset, rng.randbytes(MiB)) for offset in range(start, start + BIG_BATCH_BYTES, MiB)
        ]
        return [*frames, *random_writes(rng, DISK_BYTES)]
    return random_writes(rng, DISK_BYTES)


def _body(
    source: SourceDisk,
    seq: int,
    writes: list[Write],
    tag: Tag | None,
    flags: tuple[str, ...] = (),
) -> bytes:
    when = BASE_TIME_NS + seq * 1_000_000_000
    return batch(source.id, seq, writes, tag=tag, flags=flags, source_time_ns=when)


class PowerCutRun:
    """One agent on one power-loss file system, cut `cuts` times."""

    def __init__(
        self,
        fs: PowerFS,
        workdir: Path,
        model: str,
        seed: int,
        keep: float,
        *,
        images_per_start: int = 0,
        scratch: Path | None = None,
    ) -> None:
        self.fs = fs
        self.images_per_start = images_per_start
        self.rng = random.Random(seed)
        self.keep = keep
        self.report = PowerCutReport(model)
        root = fs.mountpoint
        (root / "targets").mkdir()
        target = root / "targets" / "d0.img"
        target.write_bytes(bytes(DISK_BYTES))
        self.agent = AgentProcess.create(workdir, {"d0": target}, retention_path=root / "retention")
        self.agent.state_dir = root / "state"
        # Small segments: pruning and rolls happen within a short run.
        self.agent.retention_options = {"segment_bytes": "1MiB", "max_bytes": "48MiB"}
        self.agent.write_config()
        self.source = SourceDisk("d0", DISK_BYTES)
        self.images: Path | None = None
        self.checker: StateChecker | None = None
        if images_per_start and scratch is not None:
            self.images = scratch / "images"
            self.images.mkdir()
            self.checker = StateChecker(
                workdir.parent / "check", scratch / "check", self.agent.retention_options
            )

    async def run(self, cuts: int) -> PowerCutReport:
        self.agent.start()
        first: list[Write] = [(0, self.rng.randbytes(64 * KiB))]
        status, answer = await self.agent.put_batch(
            "d0", 1, _body(self.source, 1, first, None, ("resync", "resync_done"))
        )
        assert status == 200, answer
        self.source.history.append(first)
        self.fs.sync_all()
        try:
            while self.report.cuts < cuts and not self.report.failures:
                await self._one_cut()
        finally:
            self.agent.kill()
            self.fs.request("disarm")
            if not self.fs.powered:
                self.fs.power_on()
        return self.report

    async def _one_cut(self) -> None:
        self.fs.arm(self.rng.randint(1, 300), seed=self.rng.getrandbits(32), keep=self.keep)
        in_flight: list[Write] | None = None
        while self.fs.powered:
            seq = self.source.last_seq + 1
            writes = _writes(self.rng)
            tag = None
            if self.rng.random() < 0.2:
                tag = Tag(f"t{seq}", f"tag {seq}", "crash", "g1", BASE_TIME_NS + seq)
            try:
                status, _ = await asyncio.wait_for(
                    self.agent.put_batch("d0", seq, _body(self.source, seq, writes, tag)),
                    BATCH_TIMEOUT,
                )
            except (TimeoutError, OSError, aiohttp.ClientError):
                status = 0  # the agent lost its disk under the batch, or died
            if status == 200:
                self.source.history.append(writes)
                self.report.batches_acked += 1
            else:
                in_flight = writes
                if self.fs.powered:
                    self.report.failures.append(f"batch {seq} answered {status} with power on")
                    return
        self.report.cuts += 1
        await self._restart_and_check(in_flight)

    async def _restart_and_check(self, in_flight: list[Write] | None) -> None:
        self.agent.kill()
        self.fs.power_on()
        while True:
            if self.rng.random() < 0.25:
                # The next cut comes during start-up recovery.
                self.fs.arm(self.rng.randint(1, 40), seed=self.rng.getrandbits(32), keep=self.keep)
            self._arm_images(self.images_per_start)
            with contextlib.suppress(RuntimeError, WaitTimedOut):
                self.agent.start()  # a cut during start-up may stop it or keep it from ready
            self.fs.request("disarm")
            if self.fs.powered:
                break
            self.report.cuts_in_start_up += 1
            self.agent.kill()
            self.fs.power_on()
        self._arm_images(0)
        self._check_images(in_flight)
        await self._check(in_flight)

    def _arm_images(self, count: int) -> None:
        if self.images is not None:
            offsets = sorted(self.rng.sample(range(1, 41), count))
            self.fs.images_at(offsets, self.images, seed=self.rng.getrandbits(32), keep=self.keep)

    def _check_images(self, in_flight: list[Write] | None) -> None:
        """Check the images of the starts since the cut: each as the cut itself is checked."""
        if self.images is None or self.checker is None:
            return
        acked = self.source.last_seq

        def at(seq: int) -> bytes:
            if seq <= acked or in_flight is None:
                return self.source.at(seq)
            image = bytearray(self.source.at(acked))
            apply_in_memory(image, in_flight)
            return bytes(image)

        for image in sorted(self.images.iterdir()):
            if image.name.endswith(".part") or self.report.failures:
                shutil.rmtree(image, ignore_errors=True)
                continue
            verdict = self.checker.check(image, acked, in_flight is not None, at, at, self.rng)
            self.report.start_up_images += 1
            if verdict.failure is not None:
                self.report.failures.append(
                    f"image after operation {int(image.name)} of a start after a cut: "
                    f"{verdict.failure}"
                )

    async def _check(self, in_flight: list[Write] | None) -> None:
        report = self.report
        report.states_checked += 1
        described = await self.agent.disk()
        acked = self.source.last_seq
        last_seq = described["last_seq"]
        if last_seq == acked + 1 and in_flight is not None:
            self.source.history.append(in_flight)
            report.in_flight_committed += 1
        elif last_seq != acked:
            report.failures.append(f"last_seq {last_seq} after the 200 of batch {acked}")
            return
        if described["state"] == "resync_required":
            report.resyncs_required += 1
            await self._resync()
            return
        if described["state"] != "ok":
            report.failures.append(f"disk {described['state']}: {described}")
            return
        if self.agent.target_bytes("d0") != self.source.at(last_seq):
            report.failures.append(f"target differs from the model at batch {last_seq}")
            return
        await self._restore_a_point()

    async def _resync(self) -> None:
        seq = self.source.last_seq + 1
        writes = resync_writes(self.source.at(self.source.last_seq))
        flags = ("resync", "resync_done")
        status, answer = await self.agent.put_batch(
            "d0", seq, _body(self.source, seq, writes, None, flags)
        )
        if status != 200:
            self.report.failures.append(f"resync answered {status}: {answer}")
            return
        self.source.history.append(writes)

    async def _restore_a_point(self) -> None:
        points = [p for p in await self.agent.points() if "d0" in p["disks"]]
        if not points:
            return
        point = self.rng.choice(points)
        output = self.agent.workdir / "restored"
        code, out, err = self.agent.cli(
            "recover", "--group", "g1", "--point", point["id"], "--output", str(output), "--json"
        )
        if code != 0:
            self.report.failures.append(f"point {point['id']} not restored: {err.strip()}")
            return
        [restored] = json.loads(out)["disks"]
        image = Path(restored["path"]).read_bytes()
        Path(restored["path"]).unlink()
        if image != self.source.at(point["disks"]["d0"]):
            self.report.failures.append(f"point {point['id']} does not restore its batch exactly")
            return
        self.report.points_restored += 1


async def power_cuts(
    base: Path, *, model: str, cuts: int, seed: int, keep: float, images_per_start: int = 0
) -> PowerCutReport:
    """Mount a power-loss file system of `model` under `base` and cut it `cuts` times under an
    agent, imaging each start after a cut `images_per_start` times (see the module
    docstring)."""
    scratch = scratch_dir(base) if images_per_start else None
    try:
        with PowerFS.mounted(base / "fs", model=model) as fs:
            run = PowerCutRun(
                fs,
                base / "agent",
                model,
                seed,
                keep,
                images_per_start=images_per_start,
                scratch=scratch,
            )
            return await run.run(cuts)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
