"""Pruning by time (the retention task with an injected clock) and by size (a real agent over
max_bytes): whole oldest segments go, and the points whose undo data went with them are no
longer listed, while the others still restore exactly."""

from __future__ import annotations

import random
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.config import AgentConfig, DiskConfig, RetentionConfig, ServerConfig, TlsConfig
from agent.metrics import AgentMetrics
from agent.recovery.points import running_points
from agent.replication.apply import ApplyLimits, apply_batch
from agent.replication.retention_gate import RetentionGate
from agent.retention.keeper import RetentionKeeper
from agent.retention.metrics import RetentionMetrics
from blockio.journal.pruning import DriveSpace
from tests.support.agent_harness import AgentProcess
from tests.support.batches import ChunkedBody, batch, resync_batch
from tests.support.retention_scenario import (
    KiB,
    MiB,
    SourceDisk,
    file_replica,
    send,
    settled_points,
)

HOUR_NS = 3600 * 10**9


async def test_pruning_by_time_withdraws_the_points_whose_undo_is_gone(tmp_path: Path) -> None:
    replica, store = file_replica(tmp_path)
    target = replica.config.path
    assert target is not None
    await replica.run(replica.open_blocking)
    metrics, gate = AgentMetrics(CollectorRegistry()), RetentionGate()
    limits = ApplyLimits(4 * MiB, 64 * MiB, 10.0)
    rng = random.Random(1)
    first = resync_batch("d0", 1, [(0, rng.randbytes(MiB))])
    await apply_batch(replica, store, 1, ChunkedBody(first), limits, metrics, gate)
    for seq in range(2, 21):
        body = batch("d0", seq, [(rng.randrange(0, MiB - 32 * KiB, 512), rng.randbytes(32 * KiB))])
        await apply_batch(replica, store, seq, ChunkedBody(body), limits, metrics, gate)
    replicated_ns = time.time_ns()  # every undo record is older than this
    registry = CollectorRegistry()
    now = replicated_ns
    keeper = RetentionKeeper(
        RetentionConfig(tmp_path / "retention", window_seconds=3600),
        {"d0": replica},
        store,
        gate,
        RetentionMetrics(registry),
        clock=lambda: now,
        space=lambda path: DriveSpace(100 * 2**30, 90 * 2**30),
    )
    config = _config(tmp_path, target)
    before = running_points(config, {"d0": replica}, store, "g1")
    assert [p.disks["d0"] for p in before] == list(range(1, 21))

    now = replicated_ns + HOUR_NS // 2  # every segment inside the window
    await keeper.tick()
    assert running_points(config, {"d0": replica}, store, "g1") == before

    now = replicated_ns + HOUR_NS  # every sealed segment older than the window
    await keeper.tick()
    assert replica.journal is not None
    current = replica.journal.summaries()[-1]
    assert journal_segments(tmp_path) == [current.number]
    after = [p.disks["d0"] for p in running_points(config, {"d0": replica}, store, "g1")]
    oldest = current.first_commit_seq - 1
    assert after == list(range(oldest, 21)) and oldest > 1
    assert registry.get_sample_value("mtagent_retention_pruned_bytes_total", {"reason": "window"})
    await replica.run(replica.close_blocking)
    store.close()


def journal_segments(tmp_path: Path) -> list[int]:
    return sorted(int(p.name[4:12]) for p in (tmp_path / "retention" / "d0").glob("seg-*.undo"))


def _config(tmp_path: Path, target: Path) -> AgentConfig:
    return AgentConfig(
        file=tmp_path / "agent.toml",
        server=ServerConfig("127.0.0.1", 0, "127.0.0.1", 0, tmp_path / "state"),
        tls=TlsConfig(tmp_path / "c", tmp_path / "k", tmp_path / "ca"),
        retention=RetentionConfig(tmp_path / "retention"),
        disks=(DiskConfig("d0", "g1", target, None),),
    )


async def test_max_bytes_shrinks_the_window_and_the_rest_still_restores(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 2 * MiB})
    agent.retention_options = {"segment_bytes": "64KiB", "max_bytes": "256KiB"}
    agent.write_config()
    agent.start()
    source = SourceDisk("d0", 2 * MiB)
    rng = random.Random(2)
    try:
        await send(agent, source, [(0, rng.randbytes(2 * MiB))], flags=("resync", "resync_done"))
        for _ in range(24):
            offset = rng.randrange(0, 2 * MiB - 32 * KiB, 512)
            await send(agent, source, [(offset, rng.randbytes(32 * KiB))])
        seqs = await settled_points(agent)
        undo = sum(p.stat().st_size for p in (tmp_path / "agent/retention/d0").glob("seg-*"))
        assert undo <= 256 * KiB
        points = await agent.points()
        assert seqs == [p["disks"]["d0"] for p in points]
        assert seqs == list(range(seqs[0], source.last_seq + 1)) and seqs[0] > 5
        assert agent.cli_points() == points
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{seqs[0]}", "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "out" / "d0.img").read_bytes() == source.at(seqs[0])
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{seqs[0] - 1}", "--output", str(tmp_path / "gone"),
        )  # fmt: skip
        assert code == 1 and f"no recovery point 'd0@{seqs[0] - 1}'" in err
        text = agent.metrics_text()
        assert 'mtagent_retention_pruned_bytes_total{reason="max_bytes"}' in text
        assert "ahead of the retention window" in agent.log()
    finally:
        agent.stop()
