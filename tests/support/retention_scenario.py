"""Helpers of the retention and recovery tests: a source model with its history, batches sent
to a real agent, and snapshots of an agent's files for in-place runs."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import DiskConfig
from agent.replication.replica import Replica
from agent.replication.state import StateStore
from protocol.events import Tag
from tests.support.agent_harness import AgentProcess, free_port
from tests.support.batches import Write, apply_in_memory, batch
from tests.support.waiting import wait_until_async

KiB = 1 << 10
MiB = 1 << 20
BASE_TIME_NS = 1_800_000_000_000_000_000


@dataclass
class SourceDisk:
    """A source disk as the sender sees it, with the writes of every batch kept, so that its
    content at the end of any batch can be rebuilt."""

    id: str
    size: int
    history: list[list[Write]] = field(default_factory=list)  # index seq - 1
    times: list[int] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return len(self.history)

    def at(self, seq: int) -> bytes:
        """The disk's content at the end of batch `seq` (0: before the first)."""
        image = bytearray(self.size)
        for writes in self.history[:seq]:
            apply_in_memory(image, writes)
        return bytes(image)


def file_replica(
    tmp_path: Path, size: int = MiB, *, segment_bytes: int = 64 * KiB
) -> tuple[Replica, StateStore]:
    """Disk d0 of group g1 on a zeroed file target of `size` in `tmp_path`, with its state store
    and undo journal there too (not opened yet: `await replica.run(replica.open_blocking)`)."""
    target = tmp_path / "d0.img"
    target.write_bytes(bytes(size))
    store = StateStore.open(tmp_path / "state")
    replica = Replica(
        DiskConfig("d0", "g1", target, None),
        tmp_path / "retention" / "d0",
        store.progress("d0"),
        store=store,
        segment_bytes=segment_bytes,
    )
    return replica, store


def random_writes(rng: random.Random, size: int, *, zeros: bool = True) -> list[Write]:
    """1 to 4 DATA extents (random or compressible bytes) and maybe a ZERO extent, sector
    aligned, overlapping at will."""
    writes: list[Write] = []
    for _ in range(rng.randint(1, 4)):
        length = rng.randint(1, 128) * 512
        offset = rng.randrange(0, size - length + 1, 512)
        # Half random, half compressible: undo records raw and LZ4.
        random_data = rng.random() < 0.5
        data = rng.randbytes(length) if random_data else bytes([rng.randrange(256)]) * length
        writes.append((offset, data))
    if zeros and rng.random() < 0.4:
        length = rng.randint(1, 256) * 512
        writes.insert(
            rng.randrange(len(writes) + 1), (rng.randrange(0, size - length + 1, 512), length)
        )
    return writes


async def send(
    agent: AgentProcess,
    source: SourceDisk,
    writes: list[Write],
    *,
    flags: tuple[str, ...] = (),
    tag: Tag | None = None,
) -> None:
    """Send the next batch of `source` and record it; fails unless it is acknowledged."""
    seq = source.last_seq + 1
    when = BASE_TIME_NS + (seq + len(source.id)) * 1_000_000_000
    body = batch(source.id, seq, writes, flags=flags, tag=tag, source_time_ns=when)
    status, answer = await agent.put_batch(source.id, seq, body)
    assert status == 200, answer
    source.history.append(writes)
    source.times.append(when)


async def settled_points(agent: AgentProcess, disk: str = "d0") -> list[int]:
    """The seqs of `disk`'s listed points once the retention policy has caught up with the last
    commit: the list stays the same over a tick of the retention task (one a second)."""
    listed: list[list[int]] = []

    async def unchanged_over_a_tick() -> bool:
        points = await agent.points()
        listed.append([p["disks"][disk] for p in points if disk in p["disks"]])
        return len(listed) > 1 and listed[-1] == listed[-2]

    await wait_until_async(
        unchanged_over_a_tick,
        timeout=24,
        interval=1.2,
        what=lambda: f"the points to settle, last {listed[-1]}",
    )
    return listed[-1]


def copy_of(agent: AgentProcess, destination: Path) -> Path:
    """A copy of the agent's files (config, state, retention, targets) under `destination`, the
    config pointing at the copies; returns the copied config. The agent must be stopped."""
    shutil.copytree(agent.workdir, destination, ignore=shutil.ignore_patterns("agent.log"))
    config = destination / "agent.toml"
    config.write_text(config.read_text().replace(str(agent.workdir), str(destination)))
    return config


def clone(agent: AgentProcess, destination: Path) -> AgentProcess:
    """Another agent on a copy of `agent`'s files (certificates, state, journals, targets),
    listening on new ports. `agent` must be stopped."""
    shutil.copytree(agent.workdir, destination, ignore=shutil.ignore_patterns("agent.log"))
    copy = AgentProcess(
        destination,
        {disk: destination / path.relative_to(agent.workdir) for disk, path in agent.disks.items()},
        free_port(),
        free_port(),
        dict(agent.server_options),
        retention_options=dict(agent.retention_options),
    )
    copy.write_config()
    return copy
