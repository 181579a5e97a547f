"""scripts/loadgen.py against a real agent: machines writing at a rate, checked by a model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_harness import REPO, AgentProcess

MiB = 1 << 20
GROUPS = {"d0": "vm1", "d1": "vm1", "d2": "vm2", "d3": "vm2"}


@pytest.fixture
def two_machines(tmp_path: Path) -> Any:
    agent = AgentProcess.create(tmp_path / "agent", dict.fromkeys(GROUPS, 8 * MiB))
    agent.groups.update(GROUPS)
    agent.write_config()
    agent.start()
    yield agent
    agent.stop()


def loadgen(agent: AgentProcess, command: str, workdir: Path, *options: str) -> tuple[int, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "scripts/loadgen.py",
            command,
            "--server",
            agent.url,
            "--cert",
            str(agent.cert),
            "--key",
            str(agent.key),
            "--ca",
            str(agent.ca),
            "--workdir",
            str(workdir),
            *options,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stderr == "" or done.returncode != 0, done.stderr
    return done.returncode, json.loads(done.stdout)


LIGHT_LOAD = ("--rate", "1MB", "--peak", "2MB", "--duration", "3", "--crash-every", "1",
              "--app-every", "2", "--heartbeat", "0.5", "--batch-bytes", "256KiB")  # fmt: skip


def test_every_target_equals_its_model_after_a_run(two_machines: AgentProcess, tmp_path: Path):
    code, summary = loadgen(two_machines, "run", tmp_path / "load", *LIGHT_LOAD)

    assert code == 0, summary
    assert summary["disks"] == 4 and summary["machines"] == 2
    assert summary["errors"] == {} and summary["differing"] == {}
    assert summary["acked_bytes"] > 0
    for disk, target in two_machines.disks.items():
        assert target.read_bytes() == (tmp_path / "load" / f"{disk}.model").read_bytes(), disk


async def test_group_points_are_cut_on_every_disk_of_the_machine(
    two_machines: AgentProcess, tmp_path: Path
):
    code, summary = loadgen(two_machines, "run", tmp_path / "load", *LIGHT_LOAD)

    assert code == 0, summary
    assert summary["group_points"]["app"] >= 2 and summary["group_points"]["crash"] >= 2
    for group in ("vm1", "vm2"):
        tagged = [p for p in await two_machines.points(group) if p["id"].startswith("tag:")]
        assert {p["kind"] for p in tagged} == {"app", "crash"}, group


def test_check_names_a_target_changed_behind_the_agent(two_machines: AgentProcess, tmp_path: Path):
    workdir = tmp_path / "load"
    assert loadgen(two_machines, "run", workdir, *LIGHT_LOAD)[0] == 0
    target = two_machines.disks["d2"]
    with open(target, "r+b") as f:
        f.seek(5 * MiB + 7)
        byte = f.read(1)
        f.seek(5 * MiB + 7)
        f.write(bytes([byte[0] ^ 0xFF]))

    code, summary = loadgen(two_machines, "check", workdir)

    assert code == 1
    assert summary["differing"] == {"d2": [5 * MiB]}


async def test_an_idle_disk_is_kept_in_sync_by_empty_batches(
    two_machines: AgentProcess, tmp_path: Path
):
    started_ns = time.time_ns()
    idle = ("--rate", "0", "--peak", "0", "--duration", "2", "--heartbeat", "0.2",
            "--crash-every", "100", "--app-every", "100")  # fmt: skip

    code, summary = loadgen(two_machines, "run", tmp_path / "load", *idle)

    assert code == 0, summary
    assert summary["acked_bytes"] == 0
    assert summary["empty_batches"] >= 4 * 2
    for disk, target in two_machines.disks.items():
        state = await two_machines.disk(disk)
        assert state["last_source_time_ns"] > started_ns + 2 * 10**9
        assert target.read_bytes() == bytes(8 * MiB)


def test_a_machine_holds_back_while_its_backlog_is_full(two_machines: AgentProcess, tmp_path: Path):
    # 64 MB/s asked against a backlog of one batch: the generator must wait for the agent (its
    # memory stays bounded), and what it did write still lands exactly.
    code, summary = loadgen(
        two_machines, "run", tmp_path / "load", "--rate", "64MB", "--peak", "64MB",
        "--duration", "3", "--batch-bytes", "256KiB", "--max-backlog", "256KiB",
    )  # fmt: skip

    assert code == 0, summary
    assert summary["held_back_seconds"] > 0
    assert summary["errors"] == {} and summary["differing"] == {}
