"""`mtagent status` shows how far back each disk can be restored: the WINDOW column, and
`oldest_point_ns` and `window_seconds` in --json, from the points `mtagent points` lists. Through
the real CLI, on the state and journals a real agent wrote."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.status import EXIT_DISK_NOT_OK, EXIT_NOT_SERVING
from tests.support.agent_harness import AgentProcess
from tests.support.batches import batch

MiB = 1 << 20
SECOND = 1_000_000_000
T0 = 1_800_000_000_000_000_000
# status's exit codes of a report (the agent may be stopped, a disk not `ok`), not a failure.
REPORTED = (0, EXIT_NOT_SERVING, EXIT_DISK_NOT_OK)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path, {"d0": MiB, "d1": MiB})
    agent.start()
    yield agent
    agent.stop()


async def send(
    agent: AgentProcess, disk: str, seq: int, at_s: int, flags: tuple[str, ...] = ()
) -> None:
    """Batch `seq` of `disk`, one sector written, its source time `at_s` seconds after T0."""
    body = batch(
        disk, seq, [(seq * 512, bytes([seq]) * 512)], flags=flags, source_time_ns=T0 + at_s * SECOND
    )
    status, answer = await agent.put_batch(disk, seq, body)
    assert status == 200, answer


async def copy_and_update(agent: AgentProcess, disk: str, at_s: tuple[int, ...]) -> None:
    """A full copy of `disk` (batch 1, at the first time), then one delta batch per other time."""
    await send(agent, disk, 1, at_s[0], flags=("resync", "resync_done"))
    for seq, when in enumerate(at_s[1:], start=2):
        await send(agent, disk, seq, when)


def status_json(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    code, out, err = agent.cli("status", "--json")
    assert code in REPORTED, err
    return {disk["id"]: disk for disk in json.loads(out)["disks"]}


def status_table(agent: AgentProcess) -> dict[str, dict[str, str]]:
    """Rows of the status table by disk, cells by column name (columns are 2+ spaces apart)."""
    code, out, err = agent.cli("status")
    assert code in REPORTED, err
    *table, agent_line = out.splitlines()
    assert agent_line.startswith("agent: ")
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in table)
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


async def test_the_window_of_a_disk_is_its_newest_point_minus_its_oldest(
    agent: AgentProcess,
) -> None:
    await copy_and_update(agent, "d0", (0, 10, 70, 3670))
    agent.stop()

    d0 = status_json(agent)["d0"]

    assert (d0["oldest_point_ns"], d0["window_seconds"]) == (T0, 3670.0)
    assert status_table(agent)["d0"]["WINDOW"] == "1h01m"
    # The same points `mtagent points` lists.
    times = [p["time_ns"] for p in agent.cli_points() if p["id"].startswith("d0@")]
    assert (min(times), (max(times) - min(times)) / 1e9) == (T0, 3670.0)


async def test_a_disk_never_copied_has_no_window(agent: AgentProcess) -> None:
    await copy_and_update(agent, "d0", (0, 10))
    agent.stop()

    d1 = status_json(agent)["d1"]

    assert (d1["oldest_point_ns"], d1["window_seconds"]) == (None, None)
    assert status_table(agent)["d1"]["WINDOW"] == "-"


async def test_a_disk_with_a_single_point_has_a_window_of_zero(agent: AgentProcess) -> None:
    await copy_and_update(agent, "d1", (42,))
    agent.stop()

    d1 = status_json(agent)["d1"]

    assert (d1["oldest_point_ns"], d1["window_seconds"]) == (T0 + 42 * SECOND, 0.0)
    assert status_table(agent)["d1"]["WINDOW"] == "0s"


async def test_a_resync_cuts_the_window_back_to_its_end(agent: AgentProcess) -> None:
    await copy_and_update(agent, "d0", (0, 10, 70, 3670))
    assert status_json(agent)["d0"]["window_seconds"] == 3670.0
    # A resync batch's undo is dropped at commit: no point before it can be reached any more,
    # and while the disk is resyncing it has none at all.
    await send(agent, "d0", 5, 4000, flags=("resync",))
    assert status_table(agent)["d0"]["WINDOW"] == "-"
    await send(agent, "d0", 6, 4100, flags=("resync", "resync_done"))
    await send(agent, "d0", 7, 4160)
    agent.stop()

    d0 = status_json(agent)["d0"]

    assert (d0["oldest_point_ns"], d0["window_seconds"]) == (T0 + 4100 * SECOND, 60.0)
    assert status_table(agent)["d0"]["WINDOW"] == "1m00s"


async def test_disks_leaves_the_recovery_window_to_status(agent: AgentProcess) -> None:
    await copy_and_update(agent, "d0", (0, 10))
    agent.stop()

    code, out, err = agent.cli("disks", "--json")

    assert code == 0, err
    d0 = next(disk for disk in json.loads(out)["disks"] if disk["id"] == "d0")
    assert "window_seconds" not in d0 and "oldest_point_ns" not in d0
    assert status_json(agent)["d0"]["window_seconds"] == 10.0
