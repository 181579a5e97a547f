"""Recovery to every listed point is exact: a random sequence of batches on a group of two disks
(overlapping writes, ZERO frames, TAG frames at some batches), then `mtagent recover --output`
and `--in-place` to each point, compared byte for byte with the source as it was at that point."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.replication.state import StateStore
from protocol.documents import DiskState
from protocol.events import Tag
from tests.support.agent_harness import AgentProcess, cli
from tests.support.retention_scenario import (
    MiB,
    SourceDisk,
    copy_of,
    random_writes,
    send,
)

DISK = 2 * MiB
DISKS = ("d0", "d1")
BATCHES = 40


class Scenario:
    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.sources = {disk: SourceDisk(disk, DISK) for disk in DISKS}
        # tag id -> {disk: seq of its tagged batch}, and its kind
        self.tags: dict[str, dict[str, int]] = {}
        self.tag_kinds: dict[str, str] = {}

    def image(self, disk: str, seq: int) -> bytes:
        return self.sources[disk].at(seq)


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("random")


@pytest.fixture(scope="module")
def scenario(tmp_module: Path) -> Iterator[Scenario]:
    agent = AgentProcess.create(tmp_module / "agent", dict.fromkeys(DISKS, DISK))
    # Small segments: the undo of the sequence spans many of them.
    agent.retention_options = {"segment_bytes": "64KiB"}
    agent.write_config()
    agent.start()
    scenario = Scenario(agent)
    try:
        asyncio.run(replicate(scenario))
        yield scenario
    finally:
        agent.stop()


async def replicate(scenario: Scenario) -> None:
    """The initial copy of each disk, then BATCHES random batches, some tagged."""
    agent = scenario.agent
    rng = random.Random(20261126)
    for disk in DISKS:
        first = [(i * 512 * 1024, rng.randbytes(512 * 1024)) for i in range(4)]
        await send(agent, scenario.sources[disk], first, flags=("resync", "resync_done"))
    pending: dict[str, list[Tag]] = {disk: [] for disk in DISKS}
    for step in range(BATCHES):
        if step % 7 == 3:
            tag_id = f"t{step}"
            kind = rng.choice(["app", "crash"])
            scenario.tag_kinds[tag_id] = kind
            tag = Tag(tag_id, f"snapshot {step}", kind, "g1", 1_800_000_000_000_000_000 + step)
            for disk in DISKS:
                pending[disk].append(tag)
        disk = rng.choice(DISKS)
        source = scenario.sources[disk]
        tag = pending[disk].pop(0) if pending[disk] else None
        await send(agent, source, random_writes(rng, DISK), tag=tag)
        if tag is not None:
            scenario.tags.setdefault(tag.tag_id, {})[disk] = source.last_seq


def expected_ids(scenario: Scenario) -> set[str]:
    ids = {
        f"{disk}@{seq}" for disk in DISKS for seq in range(1, scenario.sources[disk].last_seq + 1)
    }
    ids |= {f"tag:{tag}" for tag, disks in scenario.tags.items() if set(disks) == set(DISKS)}
    return ids


async def test_every_batch_and_every_complete_tag_is_listed(scenario: Scenario) -> None:
    points = await scenario.agent.points()
    assert {p["id"] for p in points} == expected_ids(scenario)
    assert any(len(disks) < len(DISKS) for disks in scenario.tags.values())  # one incomplete
    for point in points:
        assert set(point) == {"id", "kind", "name", "time_ns", "disks"}
        if point["id"].startswith("tag:"):
            tag_id = point["id"][4:]
            assert point["disks"] == scenario.tags[tag_id]
            assert point["kind"] == scenario.tag_kinds[tag_id]
        else:
            disk, seq = point["id"].split("@")
            assert point["disks"] == {disk: int(seq)}
            assert point["kind"] == "crash"
            assert point["time_ns"] == scenario.sources[disk].times[int(seq) - 1]


async def test_the_cli_lists_the_same_points_as_the_api(scenario: Scenario) -> None:
    points = await scenario.agent.points()
    assert scenario.agent.cli_points() == points


async def test_export_of_every_listed_point_is_exact(scenario: Scenario, tmp_path: Path) -> None:
    points = await scenario.agent.points()
    for n, point in enumerate(points):
        out = tmp_path / str(n)
        code, stdout, stderr = scenario.agent.cli(
            "recover", "--group", "g1", "--point", point["id"], "--output", str(out), "--json",
        )  # fmt: skip
        assert code == 0, stderr
        report = json.loads(stdout)
        assert report["point"] == point
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{d}.img" for d in point["disks"])
        for disk, seq in point["disks"].items():
            assert (out / f"{disk}.img").read_bytes() == scenario.image(disk, seq), point["id"]


async def test_export_by_latest_latest_app_and_time(scenario: Scenario, tmp_path: Path) -> None:
    agent = scenario.agent
    complete = sorted(
        (int(t[1:]), t) for t, disks in scenario.tags.items() if len(disks) == len(DISKS)
    )
    code, stdout, stderr = agent.cli(
        "recover", "--group", "g1", "--point", "latest",
        "--output", str(tmp_path / "latest"), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["point"]["id"] == f"tag:{complete[-1][1]}"
    app_tags = [
        t for t, k in scenario.tag_kinds.items() if k == "app" and len(scenario.tags[t]) == 2
    ]
    newest_app = max(app_tags, key=lambda t: int(t[1:]))
    code, stdout, stderr = agent.cli(
        "recover", "--group", "g1", "--point", "latest-app",
        "--output", str(tmp_path / "app"), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["point"]["id"] == f"tag:{newest_app}"
    # time:<ns> of a complete tag point picks it, not the ones after it.
    step, tag = complete[1]
    code, stdout, stderr = agent.cli(
        "recover", "--group", "g1",
        "--point", f"time:{1_800_000_000_000_000_000 + step}", "--output", str(tmp_path / "t"),
        "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["point"]["id"] == f"tag:{tag}"
    for disk, seq in scenario.tags[tag].items():
        assert (tmp_path / "t" / f"{disk}.img").read_bytes() == scenario.image(disk, seq)


async def test_in_place_recovery_to_every_listed_point_is_exact(
    scenario: Scenario, tmp_path: Path
) -> None:
    agent = scenario.agent
    points = await agent.points()
    agent.stop()
    try:
        for n, point in enumerate(points):
            config = copy_of(agent, tmp_path / str(n))
            code, _, stderr = cli(
                "recover", "--config", str(config), "--group", "g1", "--point", point["id"],
                "--in-place",
            )  # fmt: skip
            assert code == 0, stderr
            state = StateStore.open_readonly(tmp_path / str(n) / "state")
            try:
                for disk in DISKS:
                    target = (tmp_path / str(n) / "targets" / f"{disk}.img").read_bytes()
                    if disk in point["disks"]:
                        assert target == scenario.image(disk, point["disks"][disk]), point["id"]
                        assert state.progress(disk).state == DiskState.RECOVERED
                    else:
                        last = scenario.sources[disk].last_seq
                        assert target == scenario.image(disk, last)
                        assert state.progress(disk).state == "ok"
            finally:
                state.close()
    finally:
        agent.start()
