"""`mtagent disks` and `mtagent status` through the real CLI, beside a running agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.status import EXIT_DISK_NOT_OK
from tests.support.agent_harness import AgentProcess, run_mtagent
from tests.support.batches import resync_batch

MiB = 1 << 20


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(
        tmp_path, {"d0": 4 * MiB, "d1": tmp_path / "absent.img"}, stall_timeout="5s"
    )
    agent.start()
    yield agent
    agent.stop()


async def push_one_batch(agent: AgentProcess) -> None:
    body = resync_batch("d0", 1, [(0, b"x" * 4096)], source_time_ns=1_000_000_000)
    async with agent.client() as session, session.put("/v1/disks/d0/batches/1", data=body) as r:
        assert r.status == 200


async def test_disks_json_shows_size_sector_and_state(agent: AgentProcess) -> None:
    await push_one_batch(agent)
    result = run_mtagent("disks", "--config", agent.config_path, "--json")
    assert result.returncode == 0, result.stderr
    disks = {d["id"]: d for d in json.loads(result.stdout)["disks"]}
    assert disks["d0"]["size_bytes"] == 4 * MiB and disks["d0"]["sector_bytes"] == 512
    assert disks["d0"]["state"] == "ok" and disks["d0"]["last_seq"] == 1
    assert disks["d1"]["state"] == "missing" and "absent.img" in disks["d1"]["target"]
    assert disks["d1"]["reason"]


async def test_status_table_shows_last_seq_and_lag(agent: AgentProcess) -> None:
    await push_one_batch(agent)
    result = run_mtagent("status", "--config", agent.config_path)
    assert result.returncode == EXIT_DISK_NOT_OK, result.stderr  # d1 is missing
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["DISK", "GROUP", "STATE", "LAST"]
    d0 = next(row.split() for row in rows if row.startswith("d0"))
    assert d0[2] == "ok" and d0[3] == "1"
    # source_time_ns was 1 s after the epoch: the lag is decades, shown in hours.
    assert d0[4].endswith("m") and "h" in d0[4]


def test_status_of_a_config_that_does_not_exist_fails_with_one_line(tmp_path: Path) -> None:
    result = run_mtagent("status", "--config", tmp_path / "nope.toml")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "nope.toml" in result.stderr


def test_a_usage_error_exits_2() -> None:
    assert run_mtagent("status", "--bogus").returncode == 2
    assert run_mtagent().returncode == 2


@pytest.mark.parametrize("command", ["serve", "certs", "push", "disks", "status"])
def test_every_command_has_help(command: str) -> None:
    result = run_mtagent(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
