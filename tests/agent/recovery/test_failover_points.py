"""Which point a failover chooses, and the requests it refuses without changing anything."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from tests.support.batches import batch
from tests.support.failover_scenario import DISK, A, group_a_with_history, tag, two_groups
from tests.support.retention_scenario import MiB, send


async def test_latest_of_a_two_disk_group_is_the_newest_point_common_to_both(
    tmp_path: Path, make_target: Callable[[str], Path]
) -> None:
    agent = two_groups(tmp_path / "agent", {disk: make_target(disk) for disk in (*A, "b0")})
    agent.start()
    rng = random.Random(5)
    try:
        sources = await group_a_with_history(agent, rng)  # t1 on both at batch 2, then 3 and 4
        # The newest batches, and a newer tag, are on a0 only.
        a0 = sources["a0"]
        await send(agent, a0, [(0, rng.randbytes(MiB))], tag=tag("t2", "A"))
        await send(agent, a0, [(MiB, rng.randbytes(MiB))])

        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "latest"})
        assert status == 200, answer
        assert answer["point"]["id"] == "tag:t1"
        assert answer["point"]["disks"] == {"a0": 2, "a1": 2}
        assert agent.target_bytes("a0") == a0.at(2)
        assert agent.target_bytes("a1") == sources["a1"].at(2)
    finally:
        agent.stop()


async def test_a_group_without_such_a_point_is_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(6))  # its only tag is app
        before = {disk: agent.target_bytes(disk) for disk in A}

        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "latest-crash"})
        assert status == 409 and answer["error"]["code"] == "NO_RECOVERY_POINT", answer
        assert answer["error"]["point"] == "latest-crash"
        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "tag:nope"})
        assert status == 409 and answer["error"]["code"] == "NO_RECOVERY_POINT", answer
        # A point of one disk does not move a machine of two.
        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "a0@3"})
        assert status == 409 and answer["error"]["code"] == "FAILOVER_REFUSED", answer
        status, answer = await agent.post_json("/v1/groups/A/failover", {"points": "latest"})
        assert status == 400 and answer["error"]["code"] == "BAD_REQUEST", answer
        status, answer = await agent.post_json("/v1/groups/Z/failover", {"point": "latest"})
        assert status == 404 and answer["error"]["code"] == "UNKNOWN_GROUP", answer

        for disk in A:
            assert agent.target_bytes(disk) == before[disk]
            described = await agent.disk(disk)
            assert described["state"] == "ok" and "failover_phase" not in described
        await send(agent, sources["a0"], [(0, bytes(512))])  # still replicating
    finally:
        agent.stop()


async def test_another_point_is_refused_until_the_group_is_reprotected(tmp_path: Path) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(7))
        status, first = await agent.post_json("/v1/groups/A/failover", {"point": "latest-app"})
        assert status == 200, first
        # Asked again (by its words or by the point chosen): the same failover, answered again.
        for spec in ("latest-app", "tag:t1"):
            status, again = await agent.post_json("/v1/groups/A/failover", {"point": spec})
            assert status == 200 and again == first
        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "latest"})
        assert status == 409 and answer["error"]["code"] == "FAILOVER_REFUSED", answer
        # A released disk answers no digests either: its target is not the agent's any more.
        request = {"offset": 0, "length": 65536, "chunk_bytes": 65536}
        status, answer = await agent.post_json("/v1/disks/a0/hashes", request)
        assert status == 409 and answer["error"]["code"] == "FAILED_OVER", answer

        status, answer = await agent.post_json("/v1/groups/A/reprotect", {})
        assert status == 200 and answer["phase"] == "reprotected", answer
        for disk in A:
            described = await agent.disk(disk)
            assert described["state"] == "resync_required" and described["size_bytes"] == DISK
            assert "failed over to tag:t1" in described["resync_reason"]
        # A batch that is not a resync is refused; a resync is taken (from the next seq).
        a0 = sources["a0"]
        seq = a0.last_seq + 1
        status, answer = await agent.put_batch("a0", seq, batch("a0", seq, [(0, bytes(512))]))
        assert status == 409 and answer["error"]["code"] == "RESYNC_REQUIRED", answer
        await send(agent, a0, [(0, bytes(512))], flags=("resync", "resync_done"))
        assert (await agent.disk("a0"))["state"] == "ok"
        status, answer = await agent.post_json("/v1/groups/A/reprotect", {})
        assert status == 200 and answer["phase"] == "reprotected"
        status, answer = await agent.post_json("/v1/groups/B/reprotect", {})
        assert status == 409 and answer["error"]["code"] == "FAILOVER_REFUSED", answer
    finally:
        agent.stop()
