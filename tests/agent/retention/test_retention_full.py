"""A real full retention drive: a small ext4 file system on a loop device, filled up, under both
`on_full` policies. Nothing acknowledged is lost, nothing half-written is left, the agent keeps
answering."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoopDeviceFactory
from tests.support.agent_harness import AgentProcess
from tests.support.batches import batch
from tests.support.retention_scenario import (
    KiB,
    MiB,
    SourceDisk,
    send,
    settled_points,
)
from tests.support.waiting import wait_until_async

FS_BYTES = 16 * MiB
DISK = 8 * MiB
EXTENT = 512 * KiB


@pytest.fixture
def retention_fs(tmp_path: Path, loop_device: LoopDeviceFactory) -> Iterator[Path]:
    """An empty ext4 file system of FS_BYTES mounted at tmp_path/retention-fs (no blocks
    reserved for root: free space is what the agent gets)."""
    device = loop_device(FS_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(device)], check=True)
    mountpoint = tmp_path / "retention-fs"
    mountpoint.mkdir()
    subprocess.run(["mount", str(device), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def fill(mountpoint: Path, leave_bytes: int) -> Path:
    """Grow a filler file until about `leave_bytes` are left free on the file system."""
    stat = os.statvfs(mountpoint)
    free = stat.f_bavail * stat.f_frsize
    filler = mountpoint / "filler"
    with open(filler, "ab") as f:
        f.write(bytes(max(0, free - leave_bytes)))
        f.flush()
        os.fsync(f.fileno())
    return filler


def make_agent(tmp_path: Path, retention: Path, **options: object) -> AgentProcess:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK}, retention_path=retention)
    agent.retention_options = {"segment_bytes": "256KiB", **options}
    agent.write_config()
    agent.start()
    return agent


def check_passes(agent: AgentProcess) -> None:
    code, out, _ = agent.cli("check")
    assert code == 0, out


def free_share(path: Path) -> float:
    """The share of the file system at `path` that is free."""
    stat = os.statvfs(path)
    return stat.f_bavail / stat.f_blocks


def initial_copy(rng: random.Random) -> list[tuple[int, bytes]]:
    return [(offset, rng.randbytes(MiB)) for offset in range(0, DISK, MiB)]


def random_batch(rng: random.Random) -> list[tuple[int, bytes]]:
    return [(rng.randrange(0, DISK - EXTENT + 1, 512), rng.randbytes(EXTENT))]


async def test_shrink_prunes_the_oldest_undo_and_keeps_replicating(
    tmp_path: Path, retention_fs: Path
) -> None:
    agent = make_agent(tmp_path, retention_fs / "undo", on_full="shrink", high_water=0.5)
    source = SourceDisk("d0", DISK)
    rng = random.Random(7)
    try:
        await send(agent, source, initial_copy(rng), flags=("resync", "resync_done"))
        for _ in range(32):  # 16 MiB of undo data: the drive's size
            await send(agent, source, random_batch(rng))
        assert agent.target_bytes("d0") == source.at(source.last_seq)
        # Pruning runs beside replication (after commits and every second): let it catch up.
        await wait_until_async(
            lambda: free_share(retention_fs) > 0.4,
            timeout=10,
            interval=0.1,
            what=lambda: f"pruning to free 40% of the drive, {free_share(retention_fs):.0%} free",
        )
        assert agent.metric("mtagent_retention_pruned_bytes_total", reason="high_water") > 0
        assert "ahead of the retention window" in agent.log()
        seqs = await settled_points(agent)
        assert seqs[-1] == source.last_seq and seqs[0] > 8  # the window shrank
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{seqs[0]}", "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "out" / "d0.img").read_bytes() == source.at(seqs[0])
        check_passes(agent)

        # Now the drive is full of something else: a batch that cannot get its undo space is
        # refused, rolled back whole, and the agent goes on once space returns.
        filler = fill(retention_fs, leave_bytes=128 * KiB)
        # A round of the policy prunes all it can (rounds run every second, and none is
        # observable from outside, so this one is waited for by time)...
        await asyncio.sleep(1.5)
        fill(retention_fs, leave_bytes=128 * KiB)  # ...and the space it freed is taken too
        acknowledged = agent.target_bytes("d0")
        seq = source.last_seq + 1
        writes = random_batch(rng)
        status, answer = await agent.put_batch("d0", seq, batch("d0", seq, writes))
        assert status == 507 and answer["error"]["code"] == "RETENTION_FULL", answer
        assert "no space left for undo data" in answer["error"]["message"]
        assert agent.target_bytes("d0") == acknowledged
        status, disk = await agent.get_json("/v1/disks/d0")
        assert status == 200 and disk["last_seq"] == source.last_seq
        filler.unlink()
        await send(agent, source, writes)
        assert agent.target_bytes("d0") == source.at(source.last_seq)
        check_passes(agent)
    finally:
        agent.stop()


async def test_pause_answers_507_before_touching_anything_until_space_returns(
    tmp_path: Path, retention_fs: Path
) -> None:
    agent = make_agent(tmp_path, retention_fs / "undo", on_full="pause", high_water=0.6)
    source = SourceDisk("d0", DISK)
    rng = random.Random(8)
    try:
        await send(agent, source, initial_copy(rng), flags=("resync", "resync_done"))
        for _ in range(4):
            await send(agent, source, random_batch(rng))
        filler = fill(retention_fs, leave_bytes=int(0.3 * FS_BYTES))
        journal = retention_fs / "undo" / "d0"
        seq = source.last_seq + 1
        writes = random_batch(rng)
        answers: list[tuple[int, dict[str, Any]]] = []

        async def refused() -> bool:
            nonlocal seq, writes
            answers.append(await agent.put_batch("d0", seq, batch("d0", seq, writes)))
            status, answer = answers[-1]
            if status == 507:
                return True
            assert status == 200, answer
            source.history.append(writes)
            seq, writes = seq + 1, random_batch(rng)
            return False

        await wait_until_async(
            refused, timeout=10, interval=0.1, what="the policy to pause within its tick (507)"
        )
        status, answer = answers[-1]
        assert status == 507 and answer["error"]["code"] == "RETENTION_FULL"
        assert re.search(r"high-water mark 60%", answer["error"]["message"])
        acknowledged = agent.target_bytes("d0")
        sizes = {p.name: p.stat().st_size for p in journal.glob("seg-*")}
        status, answer = await agent.put_batch("d0", seq, batch("d0", seq, writes))
        assert status == 507
        assert agent.target_bytes("d0") == acknowledged
        assert {p.name: p.stat().st_size for p in journal.glob("seg-*")} == sizes
        assert agent.metric("mtagent_retention_paused") == 1
        status, _ = await agent.get_json("/v1/groups/g1/recovery-points")
        assert status == 200

        filler.unlink()

        async def accepted() -> bool:
            answers.append(await agent.put_batch("d0", seq, batch("d0", seq, writes)))
            return answers[-1][0] == 200

        await wait_until_async(
            accepted,
            timeout=10,
            interval=0.1,
            what=lambda: f"batches to be accepted once space returns, last {answers[-1]}",
        )
        source.history.append(writes)
        assert agent.target_bytes("d0") == source.at(source.last_seq)
        assert agent.metric("mtagent_retention_paused_seconds_total") > 0
        assert "refused with 507 RETENTION_FULL" in agent.log()
        check_passes(agent)
    finally:
        agent.stop()
