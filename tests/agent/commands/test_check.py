"""`mtagent check`: a sound journal passes, beside a running agent too; a missing segment, a
journal that runs ahead of the state store or falls short of it, fails with one line each."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from tests.support.agent_harness import AgentProcess
from tests.support.retention_scenario import KiB, MiB, SourceDisk, clone, send

DISK = 2 * MiB


async def replicated(tmp_path: Path, batches: int) -> tuple[AgentProcess, SourceDisk]:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK})
    agent.retention_options = {"segment_bytes": "64KiB"}
    agent.write_config()
    agent.start()
    source = SourceDisk("d0", DISK)
    rng = random.Random(3)
    await send(agent, source, [(0, rng.randbytes(DISK))], flags=("resync", "resync_done"))
    for _ in range(batches):
        await send(
            agent, source, [(rng.randrange(0, DISK - 32 * KiB, 512), rng.randbytes(32 * KiB))]
        )
    return agent, source


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[AgentProcess, SourceDisk]:
    """One replicated disk (agent stopped), copied for each test."""
    agent, source = asyncio.run(replicated(tmp_path_factory.mktemp("check"), batches=10))
    agent.stop()
    return agent, source


@pytest.fixture
def replica_of_base(
    base: tuple[AgentProcess, SourceDisk], tmp_path: Path
) -> tuple[AgentProcess, SourceDisk]:
    agent, source = base
    return clone(agent, tmp_path / "agent"), copy.deepcopy(source)


async def test_a_sound_journal_passes_even_while_the_agent_replicates(
    replica_of_base: tuple[AgentProcess, SourceDisk],
) -> None:
    agent, source = replica_of_base
    agent.start()
    try:

        async def keep_sending() -> None:
            for _ in range(10):
                await send(agent, source, [(0, os.urandom(64 * KiB))])

        sending = asyncio.create_task(keep_sending())
        while not sending.done():
            code, out, _ = await asyncio.to_thread(agent.cli, "check")
            assert code == 0, out
        await sending
        code, out, _ = agent.cli("check")
        assert code == 0
        assert out.splitlines()[-1].startswith("checked 1 journals: ")
        assert out.splitlines()[-1].endswith(": no problem")
    finally:
        agent.stop()


async def test_the_json_report_counts_what_was_checked(
    replica_of_base: tuple[AgentProcess, SourceDisk],
) -> None:
    agent, source = replica_of_base
    code, out, _ = agent.cli("check", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    [disk] = report["disks"]
    assert disk["disk"] == "d0" and disk["problems"] == []
    assert disk["commits"] == source.last_seq and disk["records"] == 10
    assert disk["undo_bytes"] == 10 * 32 * KiB


async def test_a_segment_missing_in_the_middle_is_a_problem(
    replica_of_base: tuple[AgentProcess, SourceDisk],
) -> None:
    agent, _ = replica_of_base
    journal = agent.workdir / "retention" / "d0"
    segments = sorted(journal.glob("seg-*.undo"))
    segments[2].unlink()
    code, out, _ = agent.cli("check")
    assert code == 1
    assert f"d0: {journal}: segments 3 to 3 are missing" in out
    assert "first commit record is of batch" in out
    assert out.splitlines()[-1].endswith(": 2 problems")


async def test_a_journal_that_does_not_match_the_state_store_is_a_problem(
    replica_of_base: tuple[AgentProcess, SourceDisk], tmp_path: Path
) -> None:
    agent, source = replica_of_base
    state = agent.workdir / "state"
    shutil.copytree(state, tmp_path / "older-state")
    agent.start()
    try:
        for _ in range(3):
            await send(agent, source, [(0, os.urandom(4 * KiB))])
    finally:
        agent.stop()
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "older-state", state)  # a state store from before those batches
    code, out, _ = agent.cli("check")
    assert code == 1
    assert (
        "holds a commit record of batch 14, but the state store's last committed batch is 11" in out
    )
