"""`mtagent status` shows how far a resync under way has come (RESYNC column, and `resync_offset`
and `resync_progress` in --json), through the real CLI beside a running agent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.status import EXIT_DISK_NOT_OK
from tests.support.agent_harness import AgentProcess, run_mtagent
from tests.support.batches import batch, resync_batch

MiB = 1 << 20
DISK = 8 * MiB


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path, dict.fromkeys(("d0", "d1", "d2"), DISK))
    agent.start()
    yield agent
    agent.stop()


async def acknowledged(agent: AgentProcess, disk: str, seq: int, body: bytes) -> dict[str, Any]:
    """The agent's answer to batch `seq` of `disk`, which must be acknowledged."""
    status, answer = await agent.put_batch(disk, seq, body)
    assert status == 200, answer
    return answer


async def half_way(agent: AgentProcess) -> None:
    """d0: two resync batches acknowledged, reaching 3 MiB of 8, no `resync_done` yet;
    d1: resynced whole (`ok`); d2: new (`resync_required`)."""
    first = batch("d0", 1, [(0, b"a" * MiB), (2 * MiB, 4096)], flags=("resync",))
    assert (await acknowledged(agent, "d0", 1, first))["state"] == "resyncing"
    second = batch("d0", 2, [(2 * MiB, b"b" * MiB)], flags=("resync",))
    assert (await acknowledged(agent, "d0", 2, second))["state"] == "resyncing"
    whole = resync_batch("d1", 1, [(0, b"c" * 4096)])
    assert (await acknowledged(agent, "d1", 1, whole))["state"] == "ok"


def status(agent: AgentProcess, *args: str) -> str:
    result = run_mtagent("status", "--config", agent.config_path, *args)
    # The agent serves; d0 is resyncing and d2 was never copied: not `ok`.
    assert result.returncode == EXIT_DISK_NOT_OK, result.stderr
    return result.stdout


def table(text: str) -> dict[str, dict[str, str]]:
    """Rows of the status table by disk, cells by column name (columns are 2+ spaces apart)."""
    *table, _agent = text.splitlines()
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in table)
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


async def test_the_status_table_shows_the_part_of_the_disk_a_resync_has_made_equal(
    agent: AgentProcess,
) -> None:
    await half_way(agent)

    rows = table(status(agent))

    assert (rows["d0"]["STATE"], rows["d0"]["RESYNC"]) == ("resyncing", "37% of 8.0 MiB")
    assert (rows["d1"]["STATE"], rows["d1"]["RESYNC"]) == ("ok", "-")
    assert (rows["d2"]["STATE"], rows["d2"]["RESYNC"]) == ("resync_required", "-")


async def test_status_json_gives_the_resync_offset_and_progress(agent: AgentProcess) -> None:
    await half_way(agent)

    disks = {d["id"]: d for d in json.loads(status(agent, "--json"))["disks"]}

    assert (disks["d0"]["resync_offset"], disks["d0"]["resync_progress"]) == (3 * MiB, 0.375)
    assert (disks["d1"]["resync_offset"], disks["d1"]["resync_progress"]) == (0, None)
    assert (disks["d2"]["resync_offset"], disks["d2"]["resync_progress"]) == (0, None)
    # Additive: what status --json said before is still there.
    assert {"state", "last_seq", "rpo_seconds", "undo_bytes"} <= disks["d0"].keys()


async def test_the_resync_column_empties_when_resync_done_commits(agent: AgentProcess) -> None:
    await half_way(agent)
    done = batch("d0", 3, [(3 * MiB, b"d" * MiB)], flags=("resync", "resync_done"))
    assert (await acknowledged(agent, "d0", 3, done))["state"] == "ok"

    rows = table(status(agent))

    assert (rows["d0"]["STATE"], rows["d0"]["RESYNC"]) == ("ok", "-")
