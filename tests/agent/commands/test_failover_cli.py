"""`mtagent failover` and `mtagent reprotect`: they ask the running agent, or with none running do
the work themselves; `status` shows a failed-over group as such, never as behind."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from tests.support.failover_scenario import DISK, A, group_a_with_history, two_groups


async def test_the_command_asks_the_running_agent_and_status_shows_the_failover(
    tmp_path: Path,
) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(21))
        code, _, err = await asyncio.to_thread(
            agent.cli, "failover", "--group", "A", "--point", "latest"
        )
        assert code == 1 and "give --cert and --key" in err

        code, out, err = await asyncio.to_thread(
            agent.cli, "failover", "--group", "A", "--point", "latest-app",
            "--cert", agent.cert, "--key", agent.key, "--json",
        )  # fmt: skip
        assert code == 0, err
        answer = json.loads(out)
        assert (answer["via"], answer["phase"], answer["point"]["id"]) == (
            "agent",
            "released",
            "tag:t1",
        )
        for disk in A:
            assert agent.target_bytes(disk) == sources[disk].at(2)

        code, out, _ = await asyncio.to_thread(agent.cli, "status", "--json")
        assert code == 4  # the agent serves, and two disks are not ok
        disks = {d["id"]: d for d in json.loads(out)["disks"]}
        for disk in A:
            assert disks[disk]["state"] == "failed_over"
            assert disks[disk]["reason"] == "failover to tag:t1: released"
            assert disks[disk]["rpo_seconds"] is None
        assert disks["b0"]["state"] != "failed_over"
        code, out, _ = await asyncio.to_thread(agent.cli, "status")
        assert "failed_over" in out

        code, out, err = await asyncio.to_thread(
            agent.cli, "reprotect", "--group", "A", "--cert", agent.cert, "--key", agent.key
        )
        assert code == 0, err
        assert "reprotected" in out
        assert (await agent.disk("a0"))["state"] == "resync_required"
    finally:
        agent.stop()


async def test_with_no_agent_running_the_command_does_the_failover_itself(
    tmp_path: Path,
) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(22))
    finally:
        agent.stop()

    code, out, err = await asyncio.to_thread(
        agent.cli, "failover", "--group", "A", "--point", "latest", "--json"
    )
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["via"], answer["phase"], answer["point"]["id"]) == (
        "in_process",
        "released",
        "tag:t1",
    )
    for disk in A:
        assert agent.target_bytes(disk) == sources[disk].at(2)
    code, _, err = await asyncio.to_thread(
        agent.cli, "failover", "--group", "A", "--point", "latest-crash"
    )
    assert code == 1 and "has failed over to tag:t1; reprotect it" in err

    # The agent leaves the released disks alone, and takes them back at a reprotect.
    agent.start()
    try:
        for disk in A:
            described = await agent.disk(disk)
            assert (described["state"], described["failover_phase"]) == ("failed_over", "released")
            assert described["size_bytes"] == 0  # not opened
        code, out, err = await asyncio.to_thread(
            agent.cli, "reprotect", "--group", "A", "--cert", agent.cert, "--key", agent.key
        )
        assert code == 0, err
        described = await agent.disk("a0")
        assert (described["state"], described["size_bytes"]) == ("resync_required", DISK)
    finally:
        agent.stop()


async def test_recovery_in_place_refuses_a_group_that_is_failed_over(tmp_path: Path) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(23))
    finally:
        agent.stop()
    code, _, err = await asyncio.to_thread(
        agent.cli, "failover", "--group", "A", "--point", "latest-app"
    )
    assert code == 0, err

    # Its disks may be the recovered machine's by now: rolling them back again would not do.
    code, out, err = await asyncio.to_thread(
        agent.cli, "recover", "--group", "A", "--point", "latest", "--in-place"
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "group A has a failover to tag:t1 (released)" in err
    assert "mtagent reprotect --group A" in err
    for disk in A:
        assert agent.target_bytes(disk) == sources[disk].at(2)
