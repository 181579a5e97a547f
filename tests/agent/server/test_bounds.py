"""Every batch is bounded, replayed or not: a replay's body is held to the limits of a new batch
(413), widened to the size of the batch acknowledged under its seq (so lowered limits never turn a
replay into a 413), and a batch has a total deadline however steadily it trickles (408
BATCH_TIMEOUT), after which it is rolled back and its disk is free again; other disks never wait
for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data
from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch

KiB = 1 << 10
MiB = 1 << 20
LIMIT = 1 * MiB
TIME_NS = 1_700_000_000_000_000_000


async def test_a_replayed_batch_flooding_past_the_batch_limit_is_cut_with_413(
    tmp_path: Path,
) -> None:
    agent = AgentProcess.create(
        tmp_path, {"d0": 8 * MiB}, max_frame_bytes="64KiB", max_batch_bytes="1MiB"
    )
    agent.start()
    try:
        status, answer = await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 512)]))
        assert status == 200, answer
        received_before = agent.metric("mtagent_received_bytes_total", disk="d0")
        sent = 0

        async def flood() -> AsyncIterator[bytes]:
            # Batch 1 again, growing without end (until 256 MiB, the test's own guard).
            nonlocal sent
            encoder = BatchEncoder(1, compress=False)
            frame = encoder.encode(Begin("d0", 1, TIME_NS, frozenset({"resync"})))
            while sent < 256 * MiB:
                sent += len(frame)
                yield frame
                frame = encoder.encode(Data(0, bytes(64 * KiB)))

        status, answer = await agent.put_batch("d0", 1, flood())

        assert (status, answer["error"]["code"]) == (413, "BATCH_TOO_LARGE")
        taken = agent.metric("mtagent_received_bytes_total", disk="d0") - received_before
        assert LIMIT < taken <= LIMIT + 2 * MiB  # the limit, and what was read with it
        assert (await agent.disk("d0"))["last_seq"] == 1
    finally:
        agent.stop()


async def test_a_trickling_batch_is_cut_at_its_deadline_while_another_disk_goes_on(
    tmp_path: Path,
) -> None:
    agent = AgentProcess.create(
        tmp_path, {"d0": 4 * MiB, "d1": 4 * MiB}, batch_timeout="5s", stall_timeout="60s"
    )
    agent.start()
    try:
        before = agent.target_bytes("d0")
        body = resync_batch("d0", 1, [(0, b"t" * 64 * KiB)], compress=False)
        started = asyncio.Event()

        async def trickle() -> AsyncIterator[bytes]:
            # Never silent for long (no stall), never done: 256 bytes every 50 ms.
            for at in range(0, len(body), 256):
                started.set()
                yield body[at : at + 256]
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(agent.put_batch("d0", 1, trickle()))
        await started.wait()
        other = await agent.put_batch("d1", 1, resync_batch("d1", 1, [(0, b"o" * 4096)]))
        assert other[0] == 200, other  # acknowledged while d0's batch trickles
        assert not trickling.done()

        status, answer = await asyncio.wait_for(trickling, 30)

        assert (status, answer["error"]["code"]) == (408, "BATCH_TIMEOUT")
        assert agent.target_bytes("d0") == before
        assert (await agent.disk("d0"))["last_seq"] == 0
        # Its disk is free again: the same batch, sent whole, is acknowledged.
        assert (await agent.put_batch("d0", 1, body))[0] == 200
    finally:
        agent.stop()


async def test_a_replay_after_the_limits_were_lowered_is_recognised_as_a_replay(
    tmp_path: Path,
) -> None:
    agent = AgentProcess.create(tmp_path, {"d0": 8 * MiB})
    agent.start()
    try:
        writes = [(0, b"r" * 512 * KiB), (MiB, b"s" * 512 * KiB)]  # 1 MiB in frames of 512 KiB
        body = resync_batch("d0", 1, writes, compress=False)
        status, answer = await agent.put_batch("d0", 1, body)
        assert status == 200, answer
        agent.stop()
        # The operator lowers both limits below batch 1 (a restart applies them), and the
        # sender, which never saw batch 1's answer, sends it again.
        agent.server_options.update(max_frame_bytes="64KiB", max_batch_bytes="256KiB")
        agent.write_config()
        agent.start()

        status, answer = await agent.put_batch("d0", 1, body)

        assert (status, answer.get("replayed")) == (200, True), answer
        # Other content of that size under seq 1 is a conflict, not a 413; past its size, and
        # for a new batch, the lowered limits hold.
        other = resync_batch("d0", 1, [(0, b"x" * 512 * KiB), (MiB, b"s" * 512 * KiB)])
        assert (await agent.put_batch("d0", 1, other))[1]["error"]["code"] == "SEQUENCE_CONFLICT"
        larger = resync_batch("d0", 1, [*writes, (2 * MiB, b"t" * 4 * KiB)], compress=False)
        assert (await agent.put_batch("d0", 1, larger))[1]["error"]["code"] == "BATCH_TOO_LARGE"
        new = resync_batch("d0", 2, writes, compress=False)
        assert (await agent.put_batch("d0", 2, new))[1]["error"]["code"] == "FRAME_TOO_LARGE"
        assert (await agent.disk("d0"))["last_seq"] == 1
    finally:
        agent.stop()
