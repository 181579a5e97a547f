"""The agent killed with SIGKILL in the middle of a large batch: after the restart the
target holds exactly the last acknowledged state, and the batch can then be sent again."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data
from tests.support.agent_harness import AgentProcess, until_on_target
from tests.support.batches import apply_in_memory, batch, resync_batch

MiB = 1 << 20
DISK = 64 * MiB
FRAME = 4 * MiB


def big_batch(seq: int, seed: int) -> tuple[list[tuple[int, bytes]], list[bytes]]:
    """48 MiB of new data in 4 MiB frames: the writes and the encoded frames."""
    rng = __import__("random").Random(seed)
    writes = [(i * FRAME, rng.randbytes(FRAME)) for i in range(12)]
    encoder = BatchEncoder(seq, compress=False)
    frames = [encoder.encode(Begin("d0", seq, 2, frozenset()))]
    frames += [encoder.encode(Data(offset, data)) for offset, data in writes]
    frames.append(encoder.end())
    return writes, frames


@pytest.fixture(params=["file", "loop device"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "file":
        path = tmp_path / "target.img"
        path.write_bytes(bytes(DISK))
        return path
    make_loop: Callable[[int], Path] = request.getfixturevalue("loop_device")
    return make_loop(DISK)


async def test_sigkill_mid_batch_leaves_the_last_acknowledged_state(
    tmp_path: Path, target: Path
) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": target})
    agent.start()
    try:
        first = [
            (0, os.urandom(4 * MiB)),
            (4 * MiB, os.urandom(4 * MiB)),
            (40 * MiB, os.urandom(MiB)),
        ]
        assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, first)))[0] == 200
        acknowledged = agent.target_bytes("d0")
        writes, frames = big_batch(2, seed=7)

        async def slow_body() -> AsyncIterator[bytes]:
            for i, frame in enumerate(frames):
                yield frame
                if i >= 4:  # the first groups are on the target by now; give time to kill
                    await asyncio.sleep(1)  # a slow sender, so that the kill lands mid-batch

        sending = asyncio.create_task(agent.put_batch("d0", 2, slow_body()))
        await until_on_target(target, 0, writes[0][1][:MiB])
        agent.kill()
        with pytest.raises(Exception):  # noqa: B017 - the connection dies with the agent
            await sending

        agent.start()
        assert agent.target_bytes("d0") == acknowledged
        assert (await agent.disk("d0"))["last_seq"] == 1
        assert "rolled back" in agent.log()

        # The sender resumes: the cut-off batch is sent again and completes.
        assert (await agent.put_batch("d0", 2, b"".join(frames)))[0] == 200
        expected = bytearray(acknowledged)
        apply_in_memory(expected, writes)
        assert agent.target_bytes("d0") == expected
        assert (await agent.put_batch("d0", 3, batch("d0", 3, [(0, b"3" * 512)])))[0] == 200
    finally:
        agent.stop()
