"""A TAG marks a point of the batch's own consistency group only: one for another group is
refused with 400 WRONG_GROUP, and the batch leaves no trace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.events import Tag
from tests.support.agent_harness import AgentProcess
from tests.support.batches import batch, resync_batch

MiB = 1 << 20
DISK = 4 * MiB
TIME_NS = 1_700_000_000_000_000_001


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    """An agent whose d0 (group g1) is `ok` after one batch, so that it lists a point."""
    agent = AgentProcess.create(tmp_path, {"d0": DISK})
    agent.start()
    status, result = await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 4096)]))
    assert status == 200, result
    yield agent
    agent.stop()


async def test_a_tag_for_another_group_is_refused_with_wrong_group(
    replicated: AgentProcess,
) -> None:
    tag = Tag("t-vm2", "nightly", "app", "vm2", TIME_NS)
    body = batch("d0", 2, [(0, b"b" * 4096), (MiB, b"c" * 512)], tag=tag)

    status, answer = await replicated.put_batch("d0", 2, body)

    assert status == 400
    error = answer["error"]
    assert error["code"] == "WRONG_GROUP"
    assert (error["group"], error["expected"], error["frame"]) == ("vm2", "g1", 3)
    assert "'vm2'" in error["message"] and "'g1'" in error["message"]


async def test_a_refused_tag_leaves_target_last_seq_and_points_unchanged(
    replicated: AgentProcess,
) -> None:
    before = (replicated.target_bytes("d0"), await replicated.disk(), await replicated.points())
    tag = Tag("t-vm2", "nightly", "app", "vm2", TIME_NS)

    status, _ = await replicated.put_batch("d0", 2, batch("d0", 2, [(0, b"b" * 4096)], tag=tag))

    assert status == 400
    after = (replicated.target_bytes("d0"), await replicated.disk(), await replicated.points())
    assert after == before


async def test_the_batch_refused_for_its_tag_can_be_sent_again_with_the_right_group(
    replicated: AgentProcess,
) -> None:
    writes = [(0, b"b" * 4096)]
    wrong = Tag("t-2", "nightly", "app", "vm2", TIME_NS)
    assert (await replicated.put_batch("d0", 2, batch("d0", 2, writes, tag=wrong)))[0] == 400

    right = Tag("t-2", "nightly", "app", "g1", TIME_NS)
    status, result = await replicated.put_batch("d0", 2, batch("d0", 2, writes, tag=right))

    assert status == 200, result
    assert "tag:t-2" in [point["id"] for point in await replicated.points()]
