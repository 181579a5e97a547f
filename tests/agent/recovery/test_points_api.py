"""Recovery points through the API, the CLI and the metrics, as disks go through resyncs and an
in-place recovery; and the lock that keeps an in-place recovery and an agent apart."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.events import Tag
from tests.support.agent_harness import REPO, AgentProcess
from tests.support.batches import batch
from tests.support.retention_scenario import (
    KiB,
    MiB,
    SourceDisk,
    send,
)

DISK = MiB


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK, "d1": DISK})
    agent.start()
    yield agent
    agent.stop()


def tag(tag_id: str, kind: str = "app") -> Tag:
    return Tag(tag_id, f"{kind} point {tag_id}", kind, "g1", 1_800_000_000_000_000_000)


async def copied(agent: AgentProcess) -> dict[str, SourceDisk]:
    sources = {disk: SourceDisk(disk, DISK) for disk in ("d0", "d1")}
    for source in sources.values():
        await send(agent, source, [(0, os.urandom(DISK))], flags=("resync", "resync_done"))
    return sources


async def ids(agent: AgentProcess) -> list[str]:
    return [point["id"] for point in await agent.points()]


async def test_an_unknown_group_is_404_unknown_group(agent: AgentProcess) -> None:
    status, body = await agent.get_json("/v1/groups/nope/recovery-points")
    assert status == 404 and body["error"]["code"] == "UNKNOWN_GROUP"
    code, _, err = agent.cli("points", "--group", "nope")
    assert code == 1 and "no disk is in group 'nope'" in err


async def test_disks_never_copied_have_no_points(agent: AgentProcess) -> None:
    assert await ids(agent) == []
    code, out, _ = agent.cli("points", "--group", "g1")
    assert code == 0 and "no recovery point" in out


async def test_a_tag_is_a_group_point_once_every_disk_acknowledged_it(agent: AgentProcess) -> None:
    sources = await copied(agent)
    await send(agent, sources["d0"], [(0, b"a" * 512)], tag=tag("nightly"))
    assert "tag:nightly" not in await ids(agent)
    await send(agent, sources["d1"], [(512, b"b" * 512)], tag=tag("nightly"))
    listed = await ids(agent)
    assert "tag:nightly" in listed
    [point] = [p for p in agent.cli_points() if p["id"] == "tag:nightly"]
    assert point == {
        "id": "tag:nightly",
        "kind": "app",
        "name": "app point nightly",
        "time_ns": 1_800_000_000_000_000_000,
        "disks": {"d0": 2, "d1": 2},
    }
    code, out, _ = agent.cli("points", "--group", "g1")
    [line] = [line for line in out.splitlines() if line.startswith("tag:nightly")]
    assert code == 0
    assert line.split()[1:4] == ["app", "2027-01-15T08:00:00.000Z", "d0@2,d1@2"]
    assert line.endswith("app point nightly")


async def test_a_resync_withdraws_older_points_and_its_end_is_a_point(agent: AgentProcess) -> None:
    sources = await copied(agent)
    for _ in range(3):
        await send(agent, sources["d0"], [(0, os.urandom(4 * KiB))])
    assert [i for i in await ids(agent) if i.startswith("d0")] == [f"d0@{s}" for s in range(1, 5)]
    await send(agent, sources["d0"], [(0, os.urandom(64 * KiB))], flags=("resync",))
    assert not [i for i in await ids(agent) if i.startswith("d0")]  # resyncing: none
    await send(agent, sources["d0"], [(DISK // 2, os.urandom(64 * KiB))], flags=("resync",))
    await send(agent, sources["d0"], [(0, bytes(512))], flags=("resync", "resync_done"))
    await send(agent, sources["d0"], [(4 * KiB, os.urandom(4 * KiB))])
    assert [i for i in await ids(agent) if i.startswith("d0")] == ["d0@7", "d0@8"]


async def test_metrics_count_points_and_tell_the_retention_drive(agent: AgentProcess) -> None:
    sources = await copied(agent)
    for disk in ("d0", "d1"):
        await send(agent, sources[disk], [(0, os.urandom(4 * KiB))], tag=tag("t1", "crash"))
    text = agent.metrics_text()
    assert 'mtagent_recovery_points{group="g1",kind="crash"} 5.0' in text
    assert 'mtagent_recovery_points{group="g1",kind="app"} 0.0' in text
    for name in (
        'mtagent_retention_used_bytes{disk="d0"}',
        "mtagent_retention_free_bytes ",
        'mtagent_retention_window_seconds{group="g1"}',
        'mtagent_recovery_point_oldest_age_seconds{group="g1"}',
        'mtagent_retention_pruned_bytes_total{reason="window"} 0.0',
        "mtagent_retention_paused_seconds_total 0.0",
        "mtagent_retention_paused 0.0",
    ):
        assert name in text, name


async def test_in_place_recovery_needs_the_agent_stopped_and_leaves_disks_recovered(
    agent: AgentProcess,
) -> None:
    sources = await copied(agent)
    rng = random.Random(5)
    for step in range(4):
        for disk in ("d0", "d1"):
            writes = [(rng.randrange(0, DISK - 8 * KiB, 512), rng.randbytes(8 * KiB))]
            await send(agent, sources[disk], writes, tag=tag(f"t{step}") if step == 1 else None)
    config = str(agent.config_path)
    code, _, err = agent.cli("recover", "--group", "g1", "--point", "tag:t1", "--in-place")
    assert code == 1 and "agent.lock is held by pid" in err and "stop the agent first" in err
    # And an agent does not start beside another one on the same state.
    second = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--config", config],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1 and "already working on these disks" in second.stderr

    agent.stop()
    code, out, err = agent.cli("recover", "--group", "g1", "--point", "tag:t1", "--in-place")
    assert code == 0, err
    assert "now 'recovered'" in out
    for disk in ("d0", "d1"):
        assert agent.target_bytes(disk) == sources[disk].at(3)
    agent.start()
    status, disk = await agent.get_json("/v1/disks/d0")
    assert disk["state"] == "recovered" and disk["resync"] is True
    assert await ids(agent) == []
    seq = sources["d0"].last_seq + 1
    status, answer = await agent.put_batch("d0", seq, batch("d0", seq, [(0, bytes(512))]))
    assert status == 409 and answer["error"]["code"] == "RESYNC_REQUIRED"
    # The sender resyncs: points come back from its end on.
    for disk in ("d0", "d1"):
        body = batch(disk, seq, [(0, os.urandom(4 * KiB))], flags=("resync", "resync_done"))
        status, answer = await agent.put_batch(disk, seq, body)
        assert status == 200, answer
    assert await ids(agent) == [f"d0@{seq}", f"d1@{seq}"]
