"""A real agent restarted after a power cut that tore the never-synced end of its journal: the
COMMIT record of the last acknowledged batch (appended, not synced) and the next batch's first
group (appended, not yet synced) persisted only in part, leaving zeros followed by non-zero
bytes. The agent cuts that tail off, writes the COMMIT record again from state.db, serves the
disk `ok` at the acknowledged batch with every recovery point, and takes the next batch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockio.journal.reader import scan_headers
from blockio.journal.records import RecordKind, UndoRecord, encode_record
from tests.support.agent_harness import AgentProcess
from tests.support.batches import batch, resync_batch

KiB = 1 << 10
MiB = 1 << 20
DISK = 4 * MiB


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent whose disk d0 took batch 1 (a full copy) and batches 2 and 3, then was killed."""
    target = tmp_path / "d0.img"
    target.write_bytes(random.Random(14).randbytes(DISK))
    agent = AgentProcess.create(tmp_path / "agent", {"d0": target})
    agent.start()
    rng = random.Random(3)

    async def send() -> None:
        status, _ = await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"1" * 4096)]))
        assert status == 200
        for seq in (2, 3):
            body = batch("d0", seq, [(seq * MiB, rng.randbytes(64 * KiB))], compress=False)
            status, answer = await agent.put_batch("d0", seq, body)
            assert status == 200, answer

    asyncio.run(send())
    agent.kill()
    yield agent
    agent.stop()


def tear_the_unsynced_tail(agent: AgentProcess, *, next_group: bool) -> int:
    """Leave d0's journal as a power cut can: batch 3's COMMIT record with its header lost
    (zeros) and its JSON kept; with `next_group`, batch 4's first group behind it, its first
    record's header lost and its second record kept. Returns where the durable prefix ends."""
    [segment] = sorted((agent.workdir / "retention" / "d0").glob("seg-*.undo"))
    with open(segment, "rb") as f:
        headers, _ = scan_headers(f, segment)
    commit = headers[-1]
    assert (commit.kind, commit.seq) == (RecordKind.COMMIT, 3)
    data = bytearray(segment.read_bytes())
    data[commit.position : commit.position + 64] = bytes(64)
    if next_group:
        target = agent.target_bytes("d0")
        for i, offset in enumerate((0, 2 * MiB + 512)):
            old = target[offset : offset + 32 * KiB]
            record = UndoRecord("d0", 4, offset, len(old), 1, old, group_start=i == 0)
            encoded = encode_record(record)
            data += bytes(512) + encoded[512:] if i == 0 else encoded
    segment.write_bytes(bytes(data))
    return commit.position


@pytest.mark.parametrize("next_group", [False, True], ids=["commit-torn", "next-group-torn"])
async def test_the_agent_cuts_a_torn_unsynced_tail_and_serves_the_disk(
    agent: AgentProcess, next_group: bool
) -> None:
    acknowledged = agent.target_bytes("d0")
    durable = tear_the_unsynced_tail(agent, next_group=next_group)

    agent.start()

    described = await agent.disk()
    assert (described["state"], described["last_seq"]) == ("ok", 3), described
    assert agent.target_bytes("d0") == acknowledged
    assert f"cut the unsynced tail at byte {durable}" in agent.log()
    assert "DAMAGED" not in agent.log()
    # Batch 1 (a full copy) keeps no undo: the points reach back to it.
    assert sorted(p["disks"]["d0"] for p in await agent.points()) == [1, 2, 3]
    status, answer = await agent.put_batch("d0", 4, batch("d0", 4, [(MiB, b"4" * 4096)]))
    assert status == 200, answer
    assert agent.target_bytes("d0")[MiB : MiB + 4096] == b"4" * 4096
