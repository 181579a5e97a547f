"""A ZERO frame costs the agent memory by the write group, not by its length."""

from __future__ import annotations

from pathlib import Path

from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch
from tests.support.process_memory import peak_rss_bytes

MiB = 1 << 20
DISK = 256 * MiB


async def test_a_zero_frame_over_the_whole_disk_is_undone_group_by_group(tmp_path: Path):
    agent = AgentProcess.create(tmp_path, {"d0": DISK})
    agent.start()
    try:
        assert agent.process is not None
        before = peak_rss_bytes(agent.process.pid)
        with open(agent.disks["d0"], "r+b") as target:
            target.write(b"\xab" * MiB)

        status, answer = await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, DISK)]))

        assert status == 200, answer
        # Its undo data (the old bytes) is read a write group (8 MiB) at a time, two in flight.
        assert peak_rss_bytes(agent.process.pid) - before < 64 * MiB
        with open(agent.disks["d0"], "rb") as target:
            assert target.read(2 * MiB) == bytes(2 * MiB)
    finally:
        agent.stop()
