"""`mtagent status` says whether the agent is running (its lock in the state dir, its /healthz on
metrics_listen), not only what state.db says, and its exit code tells a script: 0 the agent
serves and every disk is `ok`, 3 the agent is not serving, 4 a disk is not `ok`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.commands.status import EXIT_DISK_NOT_OK, EXIT_NOT_SERVING
from agent.replication.instance_lock import acquire_agent_lock
from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch

MiB = 1 << 20


@pytest.fixture
def agent(tmp_path: Path) -> AgentProcess:
    """An agent with one disk, made `ok` by a whole resync, then stopped (its config keeps the
    ports it bound)."""
    return AgentProcess.create(tmp_path, {"d0": MiB})


async def make_ok(agent: AgentProcess) -> None:
    status, answer = await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"x" * 4096)]))
    assert (status, answer["state"]) == (200, "ok"), answer


def running_pid(agent: AgentProcess) -> int:
    assert agent.process is not None
    return agent.process.pid


def agent_line(out: str) -> str:
    last = out.splitlines()[-1]
    assert last.startswith("agent: "), out
    return last


async def test_status_exits_0_when_the_agent_serves_and_every_disk_is_ok(
    agent: AgentProcess,
) -> None:
    agent.start()
    try:
        await make_ok(agent)
        pid = running_pid(agent)
        code, out, err = agent.cli("status")
    finally:
        agent.stop()

    assert code == 0, err
    assert agent_line(out) == f"agent: running (pid {pid}), ready ({agent.metrics_url}/healthz)"


async def test_status_exits_3_and_says_so_when_the_agent_is_not_running(
    agent: AgentProcess,
) -> None:
    agent.start()
    await make_ok(agent)
    agent.stop()

    code, out, err = agent.cli("status")

    assert code == EXIT_NOT_SERVING, err
    line = agent_line(out)
    assert line.startswith("agent: not running (nothing holds ")
    assert "agent.lock" in line and f"nothing answers on {agent.metrics_url}/healthz" in line
    assert out.splitlines()[1].split()[2] == "ok"  # what state.db says is still shown


def test_status_of_a_never_started_agent_fails_naming_the_missing_state_store(
    agent: AgentProcess,
) -> None:
    code, _, err = agent.cli("status")

    assert code == 1
    assert "does not exist" in err and str(agent.workdir / "state") in err


def test_status_of_an_agent_that_ran_once_and_stopped_exits_3(agent: AgentProcess) -> None:
    agent.start()
    agent.stop()

    code, out, _ = agent.cli("status")

    assert code == EXIT_NOT_SERVING
    assert agent_line(out).startswith("agent: not running")


def test_a_lock_held_by_another_command_is_not_a_running_agent(agent: AgentProcess) -> None:
    agent.start()
    agent.stop()
    fd = acquire_agent_lock(
        agent.workdir / "state", holder="mtagent recover --in-place", refusal="test"
    )
    try:
        code, out, _ = agent.cli("status")
    finally:
        os.close(fd)

    assert code == EXIT_NOT_SERVING
    assert agent_line(out).endswith(f"is held by pid {os.getpid()} (mtagent recover --in-place)")


async def test_status_exits_4_when_the_agent_serves_but_a_disk_is_not_ok(
    agent: AgentProcess,
) -> None:
    agent.start()
    try:
        code, out, err = agent.cli("status")  # d0 was never copied: resync_required
    finally:
        agent.stop()

    assert code == EXIT_DISK_NOT_OK, err
    assert agent_line(out).startswith("agent: running")


async def test_status_json_tells_whether_the_agent_runs_with_the_same_exit_code(
    agent: AgentProcess,
) -> None:
    agent.start()
    try:
        await make_ok(agent)
        pid = running_pid(agent)
        running = agent.cli("status", "--json")
    finally:
        agent.stop()
    stopped = agent.cli("status", "--json")

    code, out, _ = running
    document = json.loads(out)
    assert code == 0 and document["schema"] == 1
    assert document["agent"] == {
        "running": True,
        "ready": True,
        "pid": pid,
        "health_url": f"{agent.metrics_url}/healthz",
        "health": "ready",
        "message": document["agent"]["message"],
    }
    assert document["disks"][0]["state"] == "ok"
    code, out, _ = stopped
    assert code == EXIT_NOT_SERVING
    assert json.loads(out)["agent"]["running"] is False
    assert json.loads(out)["agent"]["pid"] is None
