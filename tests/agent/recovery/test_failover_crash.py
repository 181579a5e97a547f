"""The agent killed (SIGKILL) at chosen moments of a failover: at its next start it finishes the
same failover, to the same point, and the disks hold that point byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.failover_scenario import DISK, A, group_a_with_history, two_groups
from tests.support.waiting import wait_until


@pytest.mark.parametrize(
    "step",
    [
        "requested",  # recorded, the point not chosen yet
        "undo:a0",  # part of a0's undo written: a0 half rolled back
        "rolled_back:a0",  # a0 rolled back, a1 not yet
        "rolled_back",  # every disk rolled back, not released
    ],
)
async def test_a_failover_cut_off_by_sigkill_is_finished_at_the_next_start(
    tmp_path: Path, step: str, make_target: Callable[[str], Path]
) -> None:
    agent = two_groups(tmp_path / "agent", {disk: make_target(disk) for disk in (*A, "b0")})
    gate = tmp_path / "agent" / "gate"
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(11))
        (gate / f"{step}.hold").touch()
        asking = asyncio.create_task(agent.post_json("/v1/groups/A/failover", {"point": "latest"}))
        await asyncio.to_thread(
            wait_until, (gate / f"{step}.reached").exists, timeout=60, what=f"step {step}"
        )
        agent.kill()
        with contextlib.suppress(Exception):  # the connection dies with the agent
            await asyncio.wait_for(asking, 30)
        (gate / f"{step}.hold").unlink()

        agent.start()
        for disk in A:
            described = await agent.wait_for_disk(
                disk, lambda d: d.get("failover_phase") == "released", timeout=60
            )
            assert described["state"] == "failed_over"
            assert described["failover_point"] == "tag:t1"
            assert agent.target_bytes(disk) == sources[disk].at(2)
        assert "finishing the failover" in agent.log()
        # The command run again gets the same failover.
        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "latest"})
        assert status == 200 and answer["point"]["id"] == "tag:t1", answer
    finally:
        agent.stop()


async def test_a_failover_cut_off_is_finished_by_the_command_with_the_agent_stopped(
    tmp_path: Path,
) -> None:
    agent = two_groups(tmp_path / "agent", {disk: DISK for disk in (*A, "b0")})
    gate = tmp_path / "agent" / "gate"
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(13))
        (gate / "rolled_back:a0.hold").touch()
        asking = asyncio.create_task(agent.post_json("/v1/groups/A/failover", {"point": "latest"}))
        await asyncio.to_thread(
            wait_until, (gate / "rolled_back:a0.reached").exists, timeout=60, what="a0 rolled back"
        )
    finally:
        agent.kill()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asking, 30)

    code, _, err = await asyncio.to_thread(
        agent.cli, "failover", "--group", "A", "--point", "latest-app"
    )
    assert code == 1 and "is failing over to tag:t1 (phase rolling_back)" in err
    code, out, err = await asyncio.to_thread(
        agent.cli, "failover", "--group", "A", "--point", "latest", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["point"]["id"] == "tag:t1"
    for disk in A:
        assert agent.target_bytes(disk) == sources[disk].at(2)
