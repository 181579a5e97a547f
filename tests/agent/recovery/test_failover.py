"""Failing one group over through the running agent while another group keeps replicating: the
failed-over disks hold the point byte for byte and are released; the other group's batches are
all acknowledged, land, and keep their ack latency within a small factor of what it was."""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tests.support.agent_harness import BATCH_CONTENT, AgentProcess
from tests.support.batches import batch
from tests.support.failover_scenario import DISK, A, group_a_with_history, two_groups
from tests.support.retention_scenario import BASE_TIME_NS, KiB, SourceDisk
from tests.support.waiting import wait_until


class GroupBSender:
    """Streams batches of b0 on one connection and times each acknowledgement."""

    def __init__(self, agent: AgentProcess, rng: random.Random) -> None:
        self.agent = agent
        self.rng = rng
        self.source = SourceDisk("b0", DISK)
        self.latencies: list[tuple[float, float]] = []  # (sent at, seconds to the ack)
        self.refused: list[tuple[int, object]] = []
        self.stop = asyncio.Event()

    async def run(self, count: int | None = None) -> None:
        async with self.agent.client() as session:
            while not self.stop.is_set() and (count is None or count > 0):
                seq = self.source.last_seq + 1
                first = seq == 1
                writes = [
                    (self.rng.randrange(0, DISK - 64 * KiB, 512), self.rng.randbytes(64 * KiB))
                ]
                flags = ("resync", "resync_done") if first else ()
                body = batch("b0", seq, writes, flags=flags, source_time_ns=BASE_TIME_NS + seq)
                sent = time.monotonic()
                async with session.put(
                    f"/v1/disks/b0/batches/{seq}", data=body, headers=BATCH_CONTENT
                ) as response:
                    answer = await response.json()
                    if response.status != 200:
                        self.refused.append((response.status, answer))
                        return
                self.latencies.append((sent, time.monotonic() - sent))
                self.source.history.append(writes)
                if count is not None:
                    count -= 1


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def test_a_group_fails_over_while_the_other_keeps_replicating(
    tmp_path: Path, make_target: Callable[[str], Path]
) -> None:
    agent = two_groups(tmp_path / "agent", {disk: make_target(disk) for disk in (*A, "b0")})
    gate = tmp_path / "agent" / "gate"
    agent.start()
    rng = random.Random(12)
    try:
        sources = await group_a_with_history(agent, rng)
        b = GroupBSender(agent, rng)
        await b.run(count=30)  # the baseline, nothing else going on
        before = [seconds for _, seconds in b.latencies]

        # Held after the first disk is rolled back, so that B's batches surely meet the
        # failover half-way; they meet the rollbacks themselves too.
        (gate / "rolled_back:a0.hold").touch()
        streaming = asyncio.create_task(b.run())
        started = time.monotonic()
        failing_over = asyncio.create_task(
            agent.post_json("/v1/groups/A/failover", {"point": "latest"})
        )
        await asyncio.to_thread(
            wait_until,
            lambda: (gate / "rolled_back:a0.reached").exists(),
            timeout=60,
            what="the failover to roll a0 back",
        )
        status, refused = await agent.put_batch("a0", 5, batch("a0", 5, [(0, bytes(512))]))
        assert status == 409 and refused["error"]["code"] == "FAILED_OVER", refused
        a1 = await agent.disk("a1")
        assert a1["state"] == "failed_over" and a1["failover_phase"] == "rolling_back"
        landed = len(b.latencies)
        await asyncio.to_thread(
            wait_until, lambda: len(b.latencies) >= landed + 10, timeout=60, what="B's batches"
        )
        (gate / "rolled_back:a0.hold").unlink()
        status, answer = await failing_over
        ended = time.monotonic()
        b.stop.set()
        await streaming

        assert status == 200, answer
        assert answer["phase"] == "released"
        assert answer["point"]["id"] == "tag:t1" and answer["point"]["kind"] == "app"
        assert answer["point"]["disks"] == {"a0": 2, "a1": 2}
        assert answer["point_age_seconds"] >= 60
        for disk in A:
            assert agent.target_bytes(disk) == sources[disk].at(2)
            described = await agent.disk(disk)
            assert described["state"] == "failed_over"
            assert (described["failover_phase"], described["failover_point"]) == (
                "released",
                "tag:t1",
            )

        # Every batch of B was acknowledged and is on its disk.
        assert b.refused == []
        assert agent.target_bytes("b0") == b.source.at(b.source.last_seq)
        during = [seconds for sent, seconds in b.latencies[30:] if started <= sent <= ended]
        assert len(during) >= 10
        ratio = median_ms(during) / median_ms(before)
        print(
            f"\nB ack latency: before {median_ms(before):.1f} ms (n={len(before)}), "
            f"during the failover {median_ms(during):.1f} ms (n={len(during)}), "
            f"ratio {ratio:.2f}; failover {ended - started:.1f} s"
        )
        assert ratio < 8, (median_ms(before), median_ms(during))

        # A's batches get the documented 409 after the failover too; B goes on.
        status, refused = await agent.put_batch("a1", 5, batch("a1", 5, [(0, bytes(512))]))
        assert status == 409 and refused["error"]["code"] == "FAILED_OVER", refused
        assert refused["error"]["group"] == "A"
        await b.run(count=1)
        assert agent.metric("mtagent_disks", state="failed_over") == 2
        assert agent.metric("mtagent_failover_phase", group="A", phase="released") == 1
        assert agent.metric("mtagent_failover_in_progress", group="A") == 0
        # Not behind: the RPO alert never fires for a failed-over disk.
        assert math.isnan(agent.metric("mtagent_disk_rpo_seconds", disk="a0"))
        assert agent.metric("mtagent_failover_point_age_seconds", group="A") >= 60
    finally:
        agent.stop()


async def test_a_released_target_can_be_opened_exclusively_by_another_process(
    tmp_path: Path, make_target: Callable[[str], Path]
) -> None:
    targets = {disk: make_target(disk) for disk in (*A, "b0")}
    agent = two_groups(tmp_path / "agent", dict(targets))
    agent.start()
    try:
        await group_a_with_history(agent, random.Random(3))
        status, answer = await agent.post_json("/v1/groups/A/failover", {"point": "latest-app"})
        assert status == 200, answer
        assert agent.process is not None
        held = {
            os.path.realpath(f"/proc/{agent.process.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{agent.process.pid}/fd")
        }
        for disk in A:
            assert str(targets[disk].resolve()) not in held
            assert not any(
                path.startswith(str(tmp_path / "agent" / "retention" / disk)) for path in held
            )
            # O_EXCL claims a block device for this process alone (a file: opened read-write).
            fd = os.open(targets[disk], os.O_RDWR | os.O_EXCL)
            os.close(fd)
        assert str(targets["b0"].resolve()) in held  # the other group keeps its disk
    finally:
        agent.stop()


async def test_a_batch_in_flight_is_let_finish_before_its_disk_is_rolled_back(
    tmp_path: Path,
) -> None:
    agent = two_groups(tmp_path / "agent", {disk: DISK for disk in (*A, "b0")})
    agent.start()
    try:
        sources = await group_a_with_history(agent, random.Random(14))
        a0 = sources["a0"]
        seq = a0.last_seq + 1
        writes = [(0, random.Random(15).randbytes(64 * KiB))]
        body = batch("a0", seq, writes, source_time_ns=BASE_TIME_NS + seq)
        go_on = asyncio.Event()
        received = agent.metric("mtagent_received_bytes_total", disk="a0")

        async def slow_body() -> AsyncIterator[bytes]:
            yield body[:100]
            await go_on.wait()
            yield body[100:]

        sending = asyncio.create_task(agent.put_batch("a0", seq, slow_body()))
        # Its BEGIN is in: the batch holds the disk from now until it is answered.
        await asyncio.to_thread(
            wait_until,
            lambda: agent.metric("mtagent_received_bytes_total", disk="a0") > received,
            timeout=30,
            what="the batch to begin",
        )
        failing_over = asyncio.create_task(
            agent.post_json("/v1/groups/A/failover", {"point": "latest"})
        )
        await agent.wait_for_disk("a0", lambda d: d.get("failover_phase") == "requested")
        go_on.set()
        status, answer = await sending
        assert status == 200, answer  # finished, not cut off
        a0.history.append(writes)
        status, answer = await failing_over
        assert status == 200 and answer["point"]["disks"] == {"a0": 2, "a1": 2}, answer
        assert agent.target_bytes("a0") == a0.at(2)
        assert (await agent.disk("a0"))["last_seq"] == seq
    finally:
        agent.stop()
