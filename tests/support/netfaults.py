"""Network faults between a real sender and the agent: a TCP proxy that, per connection and
seeded, cuts it after a random number of bytes in either direction, stalls it, or throttles it,
while `mtagent push` (full, delta and resync) runs through it. Every push must finish (the sender
resumes and retries) and the target must equal the source: no acknowledged batch lost.

Used by scripts/torture.py (`net`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.agent_harness import REPO, AgentProcess

MiB = 1 << 20
DISK_BYTES = 8 * MiB
FAULTS = ("cut_up", "cut_down", "stall", "throttle")


@dataclass
class NetReport:
    pushes: int = 0
    connections: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "pushes": self.pushes,
            "connections": self.connections,
            "faults": sum(self.faults.values()),
            "by_kind": dict(sorted(self.faults.items())),
            "failures": self.failures,
        }


class FaultyProxy:
    """Forwards 127.0.0.1:`port` to the agent, injecting a fault into a share of connections."""

    def __init__(self, upstream: int, rng: random.Random, report: NetReport, share: float) -> None:
        self.upstream = upstream
        self.rng = rng
        self.report = report
        self.share = share
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.report.connections += 1
        fault = self.rng.choice(FAULTS) if self.rng.random() < self.share else None
        if fault is not None:
            self.report.faults[fault] += 1
        budget = self.rng.randrange(0, 3 * MiB)
        try:
            agent_r, agent_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            return
        up = self._pump(client_r, agent_w, fault, "up", budget)
        down = self._pump(agent_r, client_w, fault, "down", budget)
        await asyncio.gather(up, down, return_exceptions=True)
        for writer in (client_w, agent_w):
            writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: str | None,
        direction: str,
        budget: int,
    ) -> None:
        sent = 0
        try:
            while data := await reader.read(64 * 1024):
                if fault == f"cut_{direction}" and sent + len(data) > budget:
                    writer.write(data[: budget - sent])
                    await writer.drain()
                    writer.transport.abort()
                    return
                if fault == "stall" and sent <= budget < sent + len(data):
                    await asyncio.sleep(self.rng.uniform(0.5, 3.0))
                if fault == "throttle":
                    await asyncio.sleep(len(data) / (4 * MiB))  # 4 MiB/s
                writer.write(data)
                await writer.drain()
                sent += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort() if fault else writer.write_eof()


async def _push(agent: AgentProcess, port: int, source: Path, mode: str, base: Path | None) -> str:
    """`mtagent push` through the proxy; returns "" or what went wrong."""
    args = [
        "push", "--server", f"https://127.0.0.1:{port}", "--cert", str(agent.cert),
        "--key", str(agent.key), "--ca", str(agent.ca), "--disk", "d0",
        "--source", str(source), "--mode", mode, "--retries", "30",
        "--batch-bytes", "1MiB", "--json",
    ]  # fmt: skip
    if base is not None:
        args += ["--base", str(base)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    return "" if process.returncode == 0 else f"{mode}: exit {process.returncode}: {err.decode()}"


async def network_faults(base: Path, pushes: int, seed: int) -> NetReport:
    """Pushes through a faulty proxy (full first, then delta and resync of random changes):
    each must finish and leave the target equal to the source."""
    rng = random.Random(seed)
    report = NetReport()
    base.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess.create(base / "agent", {"d0": DISK_BYTES})
    agent.start()
    source, old = base / "source.img", base / "old.img"
    image = bytearray(rng.randbytes(DISK_BYTES))
    source.write_bytes(image)
    try:
        async with FaultyProxy(agent.port, rng, report, share=0.5) as proxy:
            mode = "full"
            while report.pushes < pushes and not report.failures:
                problem = await _push(
                    agent, proxy.port, source, mode, old if mode == "delta" else None
                )
                report.pushes += 1
                if problem:
                    report.failures.append(problem)
                elif agent.target_bytes("d0") != bytes(image):
                    report.failures.append(f"{mode} push: the target differs from the source")
                old.write_bytes(image)
                for _ in range(rng.randint(1, 8)):
                    offset = rng.randrange(0, DISK_BYTES - 256 * 1024, 4096)
                    image[offset : offset + 256 * 1024] = rng.randbytes(256 * 1024)
                source.write_bytes(image)
                mode = rng.choice(["delta", "resync"])
    finally:
        agent.stop()
    return report
