"""The daemon under systemd's notify protocol, with the test as the service manager: a Unix
datagram socket in $NOTIFY_SOCKET receives READY=1, WATCHDOG=1, STATUS= and STOPPING=1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from agent.metrics import DiskSnapshot
from agent.replication.state import StateStore
from agent.server.app import create_metrics_app
from agent.server.health import HealthProbe, Readiness, status_line
from agent.server.sdnotify import SystemdNotifier, notify_while_running, watchdog_interval
from blockio.batch_writer import BatchWriter, Write
from blockio.disks.target import TargetDisk
from blockio.journal.undo_journal import UndoJournal
from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data
from tests.support.agent_harness import AgentProcess, free_port, until_on_target
from tests.support.batches import resync_batch

MiB = 1 << 20
FRAME = 4 * MiB


class ServiceManager:
    """The systemd side of $NOTIFY_SOCKET: receives and keeps every datagram, in order."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    async def receive(self, timeout: float) -> list[str]:
        """The next datagram's assignments; TimeoutError if none comes in time."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        message = data.decode().split("\n")
        self.messages.append(message)
        return message

    async def wait_for(self, assignment: str, timeout: float = 30.0) -> list[str]:
        """Receive until a datagram holds `assignment` (exactly, or as a `KEY=` prefix)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await self.receive(max(remaining, 0.001))
            if any(
                a == assignment or (assignment.endswith("=") and a.startswith(assignment))
                for a in message
            ):
                return message

    def received(self, assignment: str) -> int:
        return sum(message.count(assignment) for message in self.messages)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceManager]:
    # A short directory: Unix socket paths are limited to 108 bytes, pytest's tmp_path is long.
    directory = tempfile.mkdtemp(prefix="sdnotify-")
    manager = ServiceManager(os.path.join(directory, "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield manager
    manager.close()
    shutil.rmtree(directory)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def cut_off_batch(agent: AgentProcess, content: bytes) -> None:
    """Leave d0 as a crash would: `content` written at offset 0 by batch 1, never committed."""
    target = TargetDisk.open(agent.disks["d0"])
    journal = UndoJournal.open(agent.workdir / "retention" / "d0", "d0")
    try:
        BatchWriter(target, journal, 1).write_group([Write(0, len(content), content)])
    finally:
        journal.close()
        target.close()


async def test_ready_comes_after_journal_recovery_and_when_the_listeners_answer(
    tmp_path: Path, manager: ServiceManager
) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 4 * MiB})
    # Known ports: the listeners are probed the moment READY=1 arrives, before the
    # harness could read the ports from the agent's log.
    agent.port, agent.metrics_port = free_port(), free_port()
    agent.write_config()
    cut_off_batch(agent, b"x" * 65536)
    assert agent.target_bytes("d0")[:65536] == b"x" * 65536
    starting = asyncio.create_task(asyncio.to_thread(agent.start))
    try:
        ready = await manager.wait_for("READY=1")
        # Checked the moment READY=1 arrives, before anything else can catch up.
        assert http_status(f"{agent.metrics_url}/healthz") == 200
        async with agent.client() as session, session.get("/v1/info") as response:
            assert response.status == 200
        assert agent.target_bytes("d0") == bytes(4 * MiB)  # the cut-off batch is rolled back
        assert "STATUS=0/1 disks ok (1 resync_required), nothing replicated yet" in ready
        before_ready = manager.messages[:-1]
        assert before_ready, "a STATUS= line is expected while the journals are recovered"
        assert all("READY=1" not in message for message in before_ready)
        await starting
    finally:
        agent.stop()
        await asyncio.gather(starting, return_exceptions=True)


async def test_watchdog_keepalives_keep_arriving_with_a_fresh_status(
    tmp_path: Path, manager: ServiceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a keep-alive every 0.2 s
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 4 * MiB})
    agent.start()
    try:
        await manager.wait_for("READY=1")
        before = manager.received("WATCHDOG=1")
        # One every 0.2 s: five arrive well within 3 s, even on a loaded machine.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while manager.received("WATCHDOG=1") - before < 5:
                    await manager.receive(3)
        assert manager.received("WATCHDOG=1") - before >= 5
        assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 4096)])))[0] == 200
        status = await manager.wait_for("STATUS=", timeout=2)
        while not any(a.startswith("STATUS=1/1 disks ok, worst RPO") for a in status):
            status = await manager.wait_for("STATUS=", timeout=2)
        assert any(a.endswith(" on d0") for a in status)
    finally:
        agent.stop()


async def test_sigterm_sends_stopping_and_the_agent_exits_cleanly(
    tmp_path: Path, manager: ServiceManager
) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 4 * MiB})
    agent.start()
    await manager.wait_for("READY=1")
    process = agent.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    stopping = await manager.wait_for("STOPPING=1", timeout=10)
    assert any(a.startswith("STATUS=stop requested") for a in stopping)
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert agent.stop() == 0


def big_batch(seq: int) -> tuple[list[tuple[int, bytes]], list[bytes]]:
    """16 MiB of new data in 4 MiB frames: two groups of the batch writer."""
    rng = random.Random(seq)
    writes = [(i * FRAME, rng.randbytes(FRAME)) for i in range(4)]
    encoder = BatchEncoder(seq, compress=False)
    frames = [encoder.encode(Begin("d0", seq, 2, frozenset()))]
    frames += [encoder.encode(Data(offset, data)) for offset, data in writes]
    frames.append(encoder.end())
    return writes, frames


async def start_with_one_batch(agent: AgentProcess) -> bytes:
    """Start the agent and make d0 `ok` with batch 1; returns the acknowledged target."""
    agent.start()
    first = [(0, os.urandom(MiB)), (20 * MiB, os.urandom(MiB))]
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, first)))[0] == 200
    return agent.target_bytes("d0")


async def test_batch_in_flight_at_sigterm_finishes_and_is_durable(
    tmp_path: Path, manager: ServiceManager
) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 32 * MiB})
    other_sender = None
    try:
        acknowledged = await start_with_one_batch(agent)
        other_sender = agent.client()
        async with other_sender.get("/v1/info") as response:  # an open keep-alive connection
            assert response.status == 200
        writes, frames = big_batch(2)
        signalled = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            for i, frame in enumerate(frames):
                yield frame
                if i == 2:  # the first group is on its way to the target
                    await signalled.wait()

        sending = asyncio.create_task(agent.put_batch("d0", 2, body()))
        await until_on_target(agent.disks["d0"], 0, writes[0][1][:MiB])
        process = agent.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        await manager.wait_for("STOPPING=1", timeout=10)
        # While it drains, the agent takes no new batch; the sender will retry later.
        async with other_sender.put("/v1/disks/d0/batches/3", data=b"") as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "TARGET_UNAVAILABLE"
        signalled.set()  # the first sender goes on while the agent drains
        assert (await sending)[0] == 200
        assert await asyncio.to_thread(process.wait, 30) == 0
        agent.stop()

        expected = bytearray(acknowledged)
        for offset, data in writes:
            expected[offset : offset + len(data)] = data
        agent.start()
        assert agent.target_bytes("d0") == expected
        assert (await agent.disk())["last_seq"] == 2
    finally:
        if other_sender is not None:
            await other_sender.close()
        agent.stop()


async def test_batch_in_flight_at_sigterm_whose_sender_stalls_is_rolled_back(
    tmp_path: Path, manager: ServiceManager
) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 32 * MiB}, stall_timeout="1s")
    try:
        acknowledged = await start_with_one_batch(agent)
        writes, frames = big_batch(2)
        never = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            for frame in frames[:3]:
                yield frame
            await never.wait()  # the sender falls silent mid-batch

        sending = asyncio.create_task(agent.put_batch("d0", 2, body()))
        await until_on_target(agent.disks["d0"], 0, writes[0][1][:MiB])
        process = agent.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        await manager.wait_for("STOPPING=1", timeout=10)
        assert await asyncio.to_thread(process.wait, 30) == 0
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        agent.stop()

        assert agent.target_bytes("d0") == acknowledged
        assert "batch 2 rolled back" in agent.log()
        agent.start()
        assert (await agent.disk())["last_seq"] == 1
    finally:
        agent.stop()


# -- the pieces, in process --------------------------------------------------------------


def test_watchdog_interval_is_half_the_timeout_and_only_for_the_named_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=42) is None


async def test_notifier_reaches_an_abstract_socket_and_is_a_no_op_without_one() -> None:
    manager = ServiceManager(f"@mtagent-test-{os.getpid()}-{random.randrange(1 << 30)}")
    try:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": manager.address})
        assert notifier.notify("READY=1", "STATUS=ok")
        assert await manager.receive(1) == ["READY=1", "STATUS=ok"]
        notifier.close()
    finally:
        manager.close()
    silent = SystemdNotifier.from_environment({})
    assert not silent.enabled
    assert not silent.notify("READY=1")


async def test_no_watchdog_keepalive_while_the_state_store_is_unusable(tmp_path: Path) -> None:
    manager = ServiceManager(str(tmp_path / "n"))
    store = StateStore.open(tmp_path / "state")
    probe = HealthProbe(store, deadline_seconds=1.0)
    notifier = SystemdNotifier(manager.address)
    task = asyncio.create_task(
        notify_while_running(
            notifier, interval=0.05, watchdog=True, healthy=probe, status=lambda: "fine"
        )
    )
    try:
        assert await manager.receive(2) == ["STATUS=fine", "WATCHDOG=1"]
        store.close()  # every later read fails with sqlite3.ProgrammingError
        with pytest.raises(sqlite3.Error):
            store.progress("d0")
        await manager.receive(2)  # one may have been on its way
        assert await manager.receive(2) == ["STATUS=fine"]
        assert "state store failed a read" in probe.reason
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        probe.close()
        notifier.close()
        manager.close()


def test_status_line_names_disks_by_state_and_the_worst_rpo() -> None:
    now = 1_700_000_000 * 10**9

    def snap(disk: str, state: str, seconds_ago: float | None) -> DiskSnapshot:
        source_time = 0 if seconds_ago is None else now - int(seconds_ago * 1e9)
        return DiskSnapshot(disk, "g1", state, 3, source_time, 1 << 20)

    line = status_line(
        [snap("a", "ok", 12), snap("b", "ok", 252), snap("c", "missing", None)], now_ns=now
    )
    assert line == "2/3 disks ok (1 missing), worst RPO 4m12s on b"
    assert status_line([snap("a", "resync_required", None)], now_ns=now) == (
        "0/1 disks ok (1 resync_required), nothing replicated yet"
    )
    assert status_line([], now_ns=now) == "no disks configured"


async def test_healthz_says_why_the_agent_is_not_ready() -> None:
    readiness = Readiness()
    app = create_metrics_app(CollectorRegistry(), readiness)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/healthz")
        assert response.status == 503
        assert await response.json() == {
            "status": "starting",
            "reason": "opening the state store and the disks, recovering undo journals",
        }
        now = time.time_ns()
        readiness.set_ready(
            lambda: [
                DiskSnapshot("d0", "g1", "ok", 4, now, 1 << 20),
                DiskSnapshot("d1", "g1", "missing", 0, 0, 0),
            ]
        )
        response = await client.get("/healthz")
        assert response.status == 200
        assert await response.json() == {
            "status": "ready",
            "disks": {"total": 2, "missing": 1, "ok": 1},
        }
        readiness.set_stopping()
        response = await client.get("/healthz")
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "stopping"
        assert body["reason"].startswith("stop requested")
