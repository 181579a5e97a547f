"""A damaged segment (a flipped byte, a truncated tail) is found by `mtagent check` and at
start-up, said clearly, and the agent does not list points it cannot restore; the points it still
lists restore exactly."""

from __future__ import annotations

import asyncio
import copy
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import load_config
from agent.recovery.points import running_points
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate
from agent.replication.state import StateStore
from agent.retention.keeper import RetentionKeeper
from agent.retention.metrics import RetentionMetrics
from blockio.journal.catalog import load_summaries
from blockio.journal.reader import scan_headers
from blockio.journal.records import RecordHeader, RecordKind
from tests.support.agent_harness import AgentProcess
from tests.support.damage import flip_byte
from tests.support.retention_scenario import KiB, MiB, SourceDisk, clone, send

DISK = 2 * MiB


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[AgentProcess, SourceDisk]:
    """One replicated disk (agent stopped), copied for each test."""
    return asyncio.run(replicated(tmp_path_factory.mktemp("damage")))


@pytest.fixture
def replica_of_base(
    base: tuple[AgentProcess, SourceDisk], tmp_path: Path
) -> tuple[AgentProcess, SourceDisk]:
    agent, source = base
    return clone(agent, tmp_path / "agent"), copy.deepcopy(source)


async def replicated(tmp_path: Path, batches: int = 16) -> tuple[AgentProcess, SourceDisk]:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK})
    agent.retention_options = {"segment_bytes": "64KiB"}
    agent.write_config()
    agent.start()
    source = SourceDisk("d0", DISK)
    rng = random.Random(11)
    await send(agent, source, [(0, rng.randbytes(DISK))], flags=("resync", "resync_done"))
    for _ in range(batches):
        offset = rng.randrange(0, DISK - 32 * KiB, 512)
        await send(agent, source, [(offset, rng.randbytes(32 * KiB))])
    agent.stop()
    return agent, source


def segments(agent: AgentProcess) -> list[Path]:
    return sorted((agent.workdir / "retention" / "d0").glob("seg-*.undo"))


def first_undo(path: Path) -> RecordHeader:
    with open(path, "rb") as f:
        headers, _ = scan_headers(f, path)
    return next(h for h in headers if h.kind == RecordKind.UNDO and h.stored_bytes)


def flip_payload(path: Path) -> None:
    flip_byte(path, first_undo(path).payload_position + 100, 0x20)


def flip_header(path: Path) -> None:
    flip_byte(path, first_undo(path).position + 24, 0x20)  # the offset field


def cut_inside_a_record(path: Path) -> None:
    os.truncate(path, first_undo(path).payload_position + 100)


def last_commit_seq(path: Path) -> int:
    with open(path, "rb") as f:
        headers, _ = scan_headers(f, path)
    return max(h.seq for h in headers if h.kind == RecordKind.COMMIT)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_payload, "old data digest mismatch"),
        (flip_header, "header digest mismatch"),
        (cut_inside_a_record, "the segment ends inside a record"),
    ],
    ids=["flipped payload byte", "flipped header byte", "truncated sealed segment"],
)
async def test_a_damaged_segment_is_reported_and_its_points_withdrawn(
    replica_of_base: tuple[AgentProcess, SourceDisk],
    tmp_path: Path,
    damage: Callable[[Path], None],
    message: str,
) -> None:
    agent, source = replica_of_base
    victim = segments(agent)[2]
    reachable_from = last_commit_seq(victim)  # batches after it do not need the segment
    damage(victim)

    code, out, _ = agent.cli("check")
    assert code == 1
    assert f"d0: {victim}: byte " in out and message in out

    agent.start()
    try:
        assert f"undo journal {victim}: DAMAGED" in agent.log() and message in agent.log()
        points = await agent.points()
        seqs = [p["disks"]["d0"] for p in points]
        assert seqs == list(range(reachable_from, source.last_seq + 1))
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{reachable_from}", "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "out" / "d0.img").read_bytes() == source.at(reachable_from)
        await send(agent, source, [(0, os.urandom(4 * KiB))])  # replication goes on
    finally:
        agent.stop()


async def test_a_journal_whose_tail_was_cut_off_lists_only_the_newest_point(
    replica_of_base: tuple[AgentProcess, SourceDisk], tmp_path: Path
) -> None:
    agent, source = replica_of_base
    newest = segments(agent)[-1]
    os.truncate(newest, first_undo(newest).payload_position + 100)

    code, out, _ = agent.cli("check")
    assert code == 1 and "the tail of the journal is missing" in out

    agent.start()
    try:
        assert "is missing from the journal" in agent.log()
        points = await agent.points()
        assert [p["id"] for p in points] == [f"d0@{source.last_seq}"]
        await send(agent, source, [(0, os.urandom(4 * KiB))])
        points = await agent.points()
        seqs = [p["disks"]["d0"] for p in points]
        assert seqs == [source.last_seq - 1, source.last_seq]
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{seqs[0]}", "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "out" / "d0.img").read_bytes() == source.at(seqs[0])
    finally:
        agent.stop()
    code, out, _ = agent.cli("check")
    assert code == 1 and "its undo records were lost" in out


async def test_damage_that_left_size_and_time_alone_is_found_by_the_background_scrub(
    replica_of_base: tuple[AgentProcess, SourceDisk],
) -> None:
    agent, source = replica_of_base
    victim = segments(agent)[2]
    reachable_from = last_commit_seq(victim)
    before = victim.stat()
    flip_payload(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # as bit rot would leave it

    config = load_config(agent.config_path)
    store = StateStore.open(config.server.state_dir)
    disk = config.disks[0]
    replica = Replica(
        disk,
        config.retention.path / "d0",
        store.progress("d0"),
        store=store,
        segment_bytes=config.retention.segment_bytes,
    )
    await replica.run(replica.open_blocking)
    try:
        replicas = {"d0": replica}
        listed = [p.disks["d0"] for p in running_points(config, replicas, store, "g1")]
        assert listed[0] == 1  # the cached summary still vouches for the segment
        keeper = RetentionKeeper(
            config.retention,
            replicas,
            store,
            RetentionGate(),
            RetentionMetrics(CollectorRegistry()),
        )
        for _ in range(len(segments(agent))):
            await keeper.scrub_one()
        listed = [p.disks["d0"] for p in running_points(config, replicas, store, "g1")]
        assert listed == list(range(reachable_from, source.last_seq + 1))
    finally:
        await replica.run(replica.close_blocking)
        store.close()
    [summary] = [s for s in load_summaries(victim.parent, "d0")[0] if s.damage]
    assert "old data digest mismatch" in str(summary.damage)  # the sidecar remembers
