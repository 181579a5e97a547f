"""Helpers of the failover tests: an agent with two groups (a0, a1 in A; b0 in B) and the
failover's test hook, and a history of group A whose newest group point is `tag:t1`."""

from __future__ import annotations

import random
import time
from pathlib import Path

from protocol.events import Tag
from tests.support.agent_harness import AgentProcess
from tests.support.retention_scenario import MiB, SourceDisk, send

DISK = 32 * MiB
A = ("a0", "a1")
GATE_ENV = "MTAGENT_TEST_FAILOVER_GATE"


def two_groups(workdir: Path, targets: dict[str, int | Path]) -> AgentProcess:
    """An agent with a0, a1 in group A and b0 in group B, and the failover test hook's gate."""
    agent = AgentProcess.create(workdir, targets)
    agent.groups = {"a0": "A", "a1": "A", "b0": "B"}
    agent.write_config()
    gate = workdir / "gate"
    gate.mkdir()
    agent.env[GATE_ENV] = str(gate)
    return agent


def tag(tag_id: str, group: str, kind: str = "app") -> Tag:
    # A minute ago: the point's age is told from its time.
    return Tag(tag_id, f"snapshot {tag_id}", kind, group, time.time_ns() - 60 * 10**9)


async def group_a_with_history(agent: AgentProcess, rng: random.Random) -> dict[str, SourceDisk]:
    """a0 and a1 copied in full, an app-consistent tag t1 on both, then two more batches on
    each that a failover to `latest` must take back (up to 16 MiB of undo per disk)."""
    sources = {disk: SourceDisk(disk, DISK) for disk in A}
    for source in sources.values():
        await send(agent, source, [(0, rng.randbytes(4 * MiB))], flags=("resync", "resync_done"))
        await send(agent, source, [(8 * MiB, rng.randbytes(MiB))], tag=tag("t1", "A"))
    for source in sources.values():
        for _ in range(2):
            start = rng.randrange(0, DISK - 8 * MiB, 512)
            await send(
                agent,
                source,
                [(start, rng.randbytes(4 * MiB)), (start + 4 * MiB, rng.randbytes(4 * MiB))],
            )
    return sources
