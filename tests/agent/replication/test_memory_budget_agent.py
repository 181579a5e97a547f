"""Many disks streaming at once stay within the agent's memory budget, and all land."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch
from tests.support.process_memory import peak_rss_bytes

MiB = 1 << 20
DISKS = 32
BATCH = 8 * MiB
# Two slots of 2 x (8 MiB + 4 MiB): two write groups in flight, whatever the number of disks.
BUDGET = 48 * MiB
# What the agent may hold outside the budget: per connection, what aiohttp and TLS buffer before
# reading stops. Measured: 64 MiB of growth with this budget, 53 MiB with one slot (24 MiB),
# 295 MiB with no budget to speak of (4 GiB).
PER_CONNECTION = MiB + MiB // 2


async def test_thirty_two_disks_at_once_land_within_the_memory_budget(tmp_path: Path):
    agent = AgentProcess.create(
        tmp_path, {f"d{i:02d}": 16 * MiB for i in range(DISKS)}, memory_budget="48MiB"
    )
    agent.start()
    try:
        assert agent.process is not None
        before = peak_rss_bytes(agent.process.pid)
        contents = {disk: os.urandom(BATCH) for disk in agent.disks}
        bodies = {
            disk: resync_batch(disk, 1, [(o, data[o : o + MiB]) for o in range(0, BATCH, MiB)])
            for disk, data in contents.items()
        }

        answers = await asyncio.gather(*(agent.put_batch(d, 1, b) for d, b in bodies.items()))

        assert [status for status, _ in answers] == [200] * DISKS, answers
        growth = peak_rss_bytes(agent.process.pid) - before
        assert growth < BUDGET + DISKS * PER_CONNECTION, f"peak RSS grew {growth / MiB:.0f} MiB"
        for disk, target in agent.disks.items():
            with open(target, "rb") as f:
                assert f.read(BATCH) == contents[disk], disk
    finally:
        agent.stop()
