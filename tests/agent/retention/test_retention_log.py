"""What the retention task logs of what it does: each undo segment sealed, the segments it prunes
(and why), and the recovery points that went with them; each with the fields journald indexes."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig, RetentionConfig, ServerConfig, TlsConfig
from agent.log_fields import record_fields
from agent.metrics import AgentMetrics
from agent.recovery.points import running_points
from agent.replication.apply import ApplyLimits, apply_batch
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate
from agent.replication.state import StateStore
from agent.retention.keeper import RetentionKeeper
from agent.retention.metrics import RetentionMetrics
from blockio.journal.pruning import DriveSpace
from tests.support.batches import ChunkedBody, batch, resync_batch
from tests.support.retention_scenario import KiB, MiB, file_replica

HOUR_NS = 3600 * 10**9
KEEPER = "agent.retention.keeper"


@dataclass
class Scene:
    """One disk with 64 KiB undo segments, its retention task on a clock the test sets."""

    tmp_path: Path
    replica: Replica
    store: StateStore
    keeper: RetentionKeeper
    gate: RetentionGate
    now: int = 0
    last_seq: int = 0

    async def send(self, count: int, rng: random.Random) -> None:
        metrics, limits = AgentMetrics(CollectorRegistry()), ApplyLimits(4 * MiB, 64 * MiB, 10.0)
        for _ in range(count):
            self.last_seq += 1
            seq = self.last_seq
            if seq == 1:
                body = resync_batch("d0", 1, [(0, rng.randbytes(MiB))])
            else:
                offset = rng.randrange(0, MiB - 32 * KiB, 512)
                body = batch("d0", seq, [(offset, rng.randbytes(32 * KiB))])
            body_reader = ChunkedBody(body)
            await apply_batch(
                self.replica, self.store, seq, body_reader, limits, metrics, self.gate
            )

    def points(self) -> list[int]:
        config = AgentConfig(
            file=self.tmp_path / "agent.toml",
            server=ServerConfig("127.0.0.1", 0, "127.0.0.1", 0, self.tmp_path / "state"),
            tls=TlsConfig(self.tmp_path / "c", self.tmp_path / "k", self.tmp_path / "ca"),
            retention=RetentionConfig(self.tmp_path / "retention"),
            disks=(self.replica.config,),
        )
        points = running_points(config, {"d0": self.replica}, self.store, "g1")
        return [p.disks["d0"] for p in points]


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    replica, store = file_replica(tmp_path)
    await replica.run(replica.open_blocking)
    gate = RetentionGate()
    scene = Scene(tmp_path, replica, store, None, gate)  # type: ignore[arg-type]
    scene.keeper = RetentionKeeper(
        RetentionConfig(tmp_path / "retention", window_seconds=3600),
        {"d0": replica},
        store,
        gate,
        RetentionMetrics(CollectorRegistry()),
        clock=lambda: scene.now,
        space=lambda path: DriveSpace(100 * 2**30, 90 * 2**30),
    )
    yield scene
    await replica.run(replica.close_blocking)
    replica.executor.shutdown()
    store.close()


def keeper_records(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == KEEPER and r.getMessage().startswith(start)]


async def test_each_segment_sealed_since_the_last_round_is_logged_once(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(1)
    await scene.send(6, rng)
    scene.now = time.time_ns()
    with caplog.at_level(logging.INFO, KEEPER):
        await scene.keeper.tick()  # the segments sealed before the task started: noted only
        assert keeper_records(caplog, "disk d0: undo segment") == []
        assert scene.replica.journal is not None
        before = scene.replica.journal.summaries()[-1].number
        await scene.send(6, rng)
        await scene.keeper.tick()
        await scene.keeper.tick()
    sealed = [
        s for s in scene.replica.journal.summaries()[:-1] if s.number >= before
    ]  # sealed since the first round
    records = keeper_records(caplog, "disk d0: undo segment")
    assert [record_fields(r)["SEGMENT"] for r in records] == [str(s.number) for s in sealed]
    assert sealed, "the batches filled at least one segment"
    first = sealed[0]
    assert records[0].getMessage() == (
        f"disk d0: undo segment {first.number} sealed "
        f"({first.size_bytes / MiB:.1f} MiB, batches {first.first_seq}..{first.last_seq})"
    )
    assert record_fields(records[0]) == {
        "DISK": "d0",
        "SEGMENT": str(first.number),
        "BYTES": str(first.size_bytes),
    }


async def test_pruning_logs_the_segments_removed_and_the_points_that_went_with_them(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    await scene.send(20, random.Random(2))
    replicated = time.time_ns()
    scene.now = replicated
    await scene.keeper.tick()
    before = scene.points()
    assert before == list(range(1, 21))
    assert scene.replica.journal is not None
    doomed = scene.replica.journal.summaries()[:-1]
    scene.now = replicated + HOUR_NS  # every sealed segment older than the window
    with caplog.at_level(logging.INFO, KEEPER):
        await scene.keeper.tick()
    after = scene.points()
    [pruned] = keeper_records(caplog, "disk d0: pruned")
    assert pruned.getMessage().endswith(
        "undo segments (%.1f MiB) older than the retention window"
        % (sum(s.size_bytes for s in doomed) / MiB)
    )
    assert record_fields(pruned) == {
        "DISK": "d0",
        "REASON": "window",
        "SEGMENTS": ",".join(str(s.number) for s in doomed),
        "BYTES": str(sum(s.size_bytes for s in doomed)),
    }
    [dropped] = keeper_records(caplog, "disk d0: recovery points")
    assert dropped.getMessage() == (
        f"disk d0: recovery points of batches 1..{after[0] - 1} dropped with their undo"
    )
    assert record_fields(dropped) == {"DISK": "d0", "FIRST_SEQ": "1", "LAST_SEQ": str(after[0] - 1)}
    assert before[: before.index(after[0])] == list(range(1, after[0]))


async def test_a_round_that_prunes_nothing_logs_nothing(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    await scene.send(20, random.Random(3))
    scene.now = time.time_ns()
    await scene.keeper.tick()
    with caplog.at_level(logging.INFO, KEEPER):
        await scene.keeper.tick()
    assert [r for r in caplog.records if r.name == KEEPER] == []


async def test_a_pause_and_its_end_are_logged_with_the_retention_field(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    await scene.send(4, random.Random(4))
    scene.now = time.time_ns()
    free = [1 * 2**30]
    paused = RetentionKeeper(
        RetentionConfig(scene.tmp_path / "retention", on_full="pause", high_water=0.8),
        {"d0": scene.replica},
        scene.store,
        scene.gate,
        RetentionMetrics(CollectorRegistry()),
        clock=lambda: scene.now,
        space=lambda path: DriveSpace(10 * 2**30, free[0]),
    )
    with caplog.at_level(logging.INFO, KEEPER):
        await paused.tick()  # 90% used, above the high-water mark: paused
        free[0] = 5 * 2**30
        await paused.tick()
    [refused] = keeper_records(caplog, "retention full")
    assert refused.levelno == logging.WARNING
    assert record_fields(refused)["RETENTION"] == "paused"
    assert record_fields(refused)["REASON"] in refused.getMessage()
    [room] = keeper_records(caplog, "retention has room again")
    assert record_fields(room) == {"RETENTION": "accepting"}
