#!/usr/bin/env python3
"""mtagent benchmarks: one JSON object on the last line of stdout, progress on stderr.

Every figure is a ratio against a baseline measured in the same run, on the same
file system, because these machines are shared and noisy; absolute times stand
beside the ratios.

    scripts/bench.py [--only full_push|ack_latency] [--size 1GiB] [--keep]

full_push    a full `mtagent push` of realistic data through the whole path (mutual TLS,
             verify, undo journal, fdatasync) against `dd bs=1M conv=fdatasync` of the
             same bytes; also the agent's peak RSS (VmHWM).
ack_latency  64 KiB batches sent one after another: p50 and p99 of the time to the 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import xxhash  # noqa: E402
from sample_image import make_image, parse_size  # noqa: E402

from protocol.client import AgentClient, client_ssl_context  # noqa: E402
from tests.agent_harness import AgentProcess  # noqa: E402
from tests.batches import batch  # noqa: E402

MiB = 1 << 20


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def file_digest(path: Path) -> bytes:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.digest()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_dd(source: Path, destination: Path) -> float:
    """Seconds for `dd bs=1M conv=fdatasync` of `source` onto a new file `destination`."""
    seconds = timed(
        lambda: subprocess.run(
            ["dd", f"if={source}", f"of={destination}", "bs=1M", "conv=fdatasync"],
            check=True,
            capture_output=True,
        )
    )
    destination.unlink()
    return seconds


def start_agent(workdir: Path, size: int) -> AgentProcess:
    agent = AgentProcess.create(workdir / "agent", {"bench0": size})
    agent.start()
    return agent


def push_command(agent: AgentProcess, source: Path) -> list[str]:
    return [
        sys.executable, "-m", "agent", "push",
        "--server", agent.url, "--cert", str(agent.cert), "--key", str(agent.key),
        "--ca", str(agent.ca), "--disk", "bench0", "--source", str(source),
        "--mode", "full", "--batch-bytes", "64MiB", "--json",
    ]  # fmt: skip


def bench_full_push(workdir: Path, size: int) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    image = workdir / "source.img"
    say(f"full_push: making a {size // MiB} MiB image with realistic content")
    make_image(image, size, seed=11)
    say("full_push: dd baseline")
    dd_seconds = run_dd(image, workdir / "dd.img")
    agent = start_agent(workdir, size)
    try:
        assert agent.process is not None
        say("full_push: mtagent push --mode full")
        started = time.perf_counter()
        done = subprocess.run(
            push_command(agent, image), cwd=REPO, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"push failed: {done.stderr.strip()}")
        result = json.loads(done.stdout)
        rss = peak_rss_bytes(agent.process.pid)
        if file_digest(agent.disks["bench0"]) != file_digest(image):
            raise RuntimeError("the target differs from the source after the push")
    finally:
        agent.stop()
    return {
        "bytes": size,
        "seconds": round(seconds, 3),
        "dd_seconds": round(dd_seconds, 3),
        "ratio_to_dd": round(dd_seconds / seconds, 3),
        "agent_peak_rss_bytes": rss,
        "wire_bytes": result["wire_bytes"],
        "batches": result["batches"],
    }


async def measure_acks(agent: AgentProcess, count: int) -> list[float]:
    context = client_ssl_context(agent.cert, agent.key, agent.ca)
    async with AgentClient(agent.url, context) as client:
        first = (await client.disk("bench0"))["last_seq"] + 1
        payload = os.urandom(64 * 1024)
        flags = ("resync", "resync_done") if first == 1 else ()
        latencies = []
        for seq in range(first, first + count):
            offset = (seq * 64 * 1024) % (64 * MiB)
            body = batch("bench0", seq, [(offset, payload)], flags=flags if seq == first else ())
            started = time.perf_counter()
            await client.put_batch("bench0", seq, body)
            latencies.append(time.perf_counter() - started)
    return latencies


def bench_ack_latency(workdir: Path, count: int = 300) -> dict[str, Any]:
    agent = start_agent(workdir, 64 * MiB)
    try:
        say(f"ack_latency: {count} batches of 64 KiB, one after another")
        latencies = asyncio.run(measure_acks(agent, count))
    finally:
        agent.stop()
    latencies.sort()
    return {
        "batch_bytes": 65536,
        "batches": count,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    }


SECTIONS = {"full_push", "ack_latency"}


def main() -> int:
    parser = argparse.ArgumentParser(description="mtagent benchmarks (JSON on the last line)")
    parser.add_argument("--only", choices=sorted(SECTIONS))
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="full_push image size")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mtagent-bench-", dir=args.dir))
    results: dict[str, Any] = {}
    try:
        if args.only in (None, "full_push"):
            results["full_push"] = bench_full_push(workdir / "full_push", args.size)
        if args.only in (None, "ack_latency"):
            results["ack_latency"] = bench_ack_latency(workdir / "ack_latency")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
