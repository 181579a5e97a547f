"""The batch endpoint over real mutual TLS: acknowledged batches land, in order, exactly once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data, Tag
from tests.support.agent_harness import AgentProcess
from tests.support.batches import apply_in_memory, batch, resync_batch

MiB = 1 << 20
DISK = 16 * MiB


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path, {"d0": DISK})
    agent.start()
    yield agent
    agent.stop()


async def test_info_describes_the_agent_and_its_limits(agent: AgentProcess) -> None:
    status, info = await agent.get_json("/v1/info")
    assert status == 200
    assert info["agent"] == "mtagent" and info["protocol"] == 1
    assert info["max_frame_bytes"] == 4 * MiB
    assert info["max_batch_bytes"] >= 64 * MiB


async def test_a_new_disk_is_listed_as_needing_a_resync(agent: AgentProcess) -> None:
    (disk,) = await agent.all_disks()
    assert disk == {
        "id": "d0",
        "group": "g1",
        "size_bytes": DISK,
        "sector_bytes": 512,
        "state": "resync_required",
        "last_seq": 0,
        "last_source_time_ns": 0,
        "resync": True,
        "resync_offset": 0,
    }


async def test_unknown_disk_is_404_with_its_code(agent: AgentProcess) -> None:
    status, body = await agent.get_json("/v1/disks/nope")
    assert status == 404 and body["error"]["code"] == "UNKNOWN_DISK"
    status, body = await agent.put_batch("nope", 1, resync_batch("nope", 1, [(0, b"x" * 512)]))
    assert status == 404 and body["error"]["code"] == "UNKNOWN_DISK"


async def test_an_acknowledged_batch_is_on_the_target_with_last_seq_and_state(
    agent: AgentProcess,
) -> None:
    payload = os.urandom(MiB) + b"A" * MiB
    writes = [(4096, payload), (8 * MiB, 512 * 3), (DISK - 512, b"z" * 512)]
    status, result = await agent.put_batch("d0", 1, resync_batch("d0", 1, writes))
    assert status == 200, result
    assert result["seq"] == 1 and result["last_seq"] == 1 and result["state"] == "ok"
    expected = bytearray(DISK)
    apply_in_memory(expected, writes)
    assert agent.target_bytes("d0") == expected
    disk = await agent.disk("d0")
    assert disk["last_seq"] == 1 and disk["state"] == "ok" and disk["resync"] is False
    assert disk["last_source_time_ns"] == 1_700_000_000_000_000_000


async def test_overlapping_extents_in_one_batch_apply_in_order(agent: AgentProcess) -> None:
    writes = [(0, b"a" * 8192), (4096, b"b" * 8192), (2048, 1024)]
    status, _ = await agent.put_batch("d0", 1, resync_batch("d0", 1, writes))
    assert status == 200
    expected = bytearray(DISK)
    apply_in_memory(expected, writes)
    assert agent.target_bytes("d0")[: 3 * 4096] == expected[: 3 * 4096]


async def test_batches_after_the_resync_apply_in_sequence(agent: AgentProcess) -> None:
    expected = bytearray(DISK)
    first = [(0, os.urandom(64 * 1024))]
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, first)))[0] == 200
    apply_in_memory(expected, first)
    for seq in range(2, 6):
        writes = [(seq * 65536, os.urandom(65536)), (0, bytes([seq]) * 512)]
        status, result = await agent.put_batch("d0", seq, batch("d0", seq, writes))
        assert status == 200, result
        apply_in_memory(expected, writes)
    assert agent.target_bytes("d0") == expected
    assert (await agent.disk("d0"))["last_seq"] == 5


async def test_a_non_resync_batch_on_a_new_disk_is_refused_with_resync_required(
    agent: AgentProcess,
) -> None:
    status, body = await agent.put_batch("d0", 1, batch("d0", 1, [(0, b"x" * 512)]))
    assert status == 409 and body["error"]["code"] == "RESYNC_REQUIRED"
    assert agent.target_bytes("d0") == bytes(DISK)


async def test_a_gap_in_sequence_is_refused_with_the_expected_seq(agent: AgentProcess) -> None:
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 512)])))[0] == 200
    status, body = await agent.put_batch("d0", 3, batch("d0", 3, [(0, b"c" * 512)]))
    assert status == 409
    assert body["error"]["code"] == "SEQUENCE_GAP" and body["error"]["expected_seq"] == 2
    assert agent.target_bytes("d0")[:512] == b"a" * 512


async def test_an_identical_replay_is_acknowledged_without_writing(agent: AgentProcess) -> None:
    body = resync_batch("d0", 1, [(0, b"a" * 4096)])
    assert (await agent.put_batch("d0", 1, body))[0] == 200
    # Change the target behind the agent's back: a replay that wrote would undo this.
    with open(agent.disks["d0"], "r+b") as f:
        f.write(b"X" * 512)
    status, result = await agent.put_batch("d0", 1, body)
    assert status == 200 and result["replayed"] is True and result["last_seq"] == 1
    assert agent.target_bytes("d0")[:4096] == b"X" * 512 + b"a" * 3584


async def test_different_content_under_an_acknowledged_seq_is_a_conflict(
    agent: AgentProcess,
) -> None:
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 512)])))[0] == 200
    assert (await agent.put_batch("d0", 2, batch("d0", 2, [(512, b"b" * 512)])))[0] == 200
    for seq in (1, 2):
        status, body = await agent.put_batch("d0", seq, batch("d0", seq, [(0, b"other" * 1024)]))
        assert status == 409 and body["error"]["code"] == "SEQUENCE_CONFLICT"
    assert agent.target_bytes("d0")[:1024] == b"a" * 512 + b"b" * 512


async def test_a_tagged_batch_is_acknowledged(agent: AgentProcess) -> None:
    tag = Tag("t-1", "hourly", "app", "g1", 1_700_000_000_000_000_001)
    body = resync_batch("d0", 1, [(0, b"t" * 512)], tag=tag)
    status, result = await agent.put_batch("d0", 1, body)
    assert status == 200 and result["frames"] == 4


async def test_state_survives_a_restart(agent: AgentProcess) -> None:
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 512)])))[0] == 200
    agent.stop()
    agent.start()
    disk = await agent.disk("d0")
    assert disk["last_seq"] == 1 and disk["state"] == "ok"
    assert (await agent.put_batch("d0", 2, batch("d0", 2, [(0, b"b" * 512)])))[0] == 200


async def test_metrics_count_applied_bytes_and_rejections(agent: AgentProcess) -> None:
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 4096)])))[0] == 200
    assert (await agent.put_batch("d0", 5, batch("d0", 5, [(0, b"a" * 512)])))[0] == 409
    text = agent.metrics_text()
    assert 'mtagent_applied_bytes_total{disk="d0"} 4096.0' in text
    assert 'mtagent_batches_total{disk="d0"} 1.0' in text
    assert 'mtagent_rejected_batches_total{code="SEQUENCE_GAP",disk="d0"} 1.0' in text
    assert 'mtagent_disk_last_seq{disk="d0"} 1.0' in text


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_memory_does_not_grow_with_batch_size(tmp_path: Path) -> None:
    size = 192 * MiB
    agent = AgentProcess.create(tmp_path, {"big": size})
    agent.start()
    try:
        assert agent.process is not None
        block = os.urandom(4 * MiB)

        async def frames() -> AsyncIterator[bytes]:
            encoder = BatchEncoder(1, compress=False)
            yield encoder.encode(Begin("big", 1, 1, frozenset({"resync", "resync_done"})))
            for offset in range(0, size, 4 * MiB):
                yield encoder.encode(Data(offset, block))
            yield encoder.end()

        baseline = peak_rss_bytes(agent.process.pid)
        status, answer = await agent.put_batch("big", 1, frames())
        assert status == 200, answer
        grown = peak_rss_bytes(agent.process.pid) - baseline
        # Two write groups (8 MiB each), one frame and socket buffers; never the batch.
        assert grown < 64 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB for a 192 MiB batch"
    finally:
        agent.stop()
