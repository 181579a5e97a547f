#!/usr/bin/env python3
"""mtagent benchmarks: one JSON object on the last line of stdout, progress on stderr.

Every figure is a ratio against a baseline measured in the same run, on the same
file system, because these machines are shared and noisy; absolute times stand
beside the ratios.

    scripts/bench.py [--only full_push|ack_latency|resync|hashes|recover|soak|scale]
                     [--size 1GiB] [--soak-disks 60] [--soak-rate 120MB] [--soak-seconds 60]
                     [--scale-disks 1,16,60] [--scale-bytes 1GiB] [--scale-budget SIZE]

full_push    a full `mtagent push` of realistic data through the whole path (mutual TLS,
             verify, undo journal, fdatasync) against `dd bs=1M conv=fdatasync` of the
             same bytes; also the agent's peak RSS (VmHWM).
ack_latency  64 KiB batches sent one after another: p50 and p99 of the time to the 200.
resync       a 2 GiB image with 1% of its 64 KiB blocks changed at random, resynced to the old
             copy by `mtagent push --mode resync`, against `rsync --inplace --no-whole-file` of
             the same two files, each from a cold page cache; the floor is reading both images
             at the same time, cold, with large direct reads (what a resync must do at least).
hashes       the hashes endpoint over a 2 GiB target against `dd bs=1M` reading it, both cold.
recover      `mtagent recover --output` of a --size disk (1 GiB) to the point before 100
             batches of 1 MiB, beside the running agent, against `dd bs=1M conv=fdatasync`
             copying that disk.
soak         scripts/loadgen.py against one agent serving --soak-disks disks (60) of 64 MiB, three
             per machine, at an aggregate --soak-rate (120 MB/s, bursting to 2.16 times as ASR's
             field figures do) for --soak-seconds (60): the RPO every disk saw (p50/p99/max),
             acknowledged bytes, errors, the final model check, the seconds machines held back
             with a full backlog (64 MiB each), and the agent's peak RSS and CPU seconds; the
             baseline is the rate asked for (`rate_ratio`).
scale        N disks at once (--scale-disks, each N a fresh agent), --scale-bytes of realistic
             LZ4-compressed data in all, split evenly, one pre-encoded batch per disk sent by
             `curl -T` with the client certificate, so that the senders cost the agent little;
             on a host of 2 cores or more the agent runs on the first half of the cores and the
             senders on the others (taskset). Per N: disk data GB/s, agent CPU seconds per GiB,
             cores busy and peak RSS, each target checked against its source; the baseline is
             the first N (`throughput_ratio`, `rss_ratio`). One agent process (`workers`: the
             worker processes of issue 13 are not built yet).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
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
from sample_image import make_image, mutate_image  # noqa: E402

from agent.units import parse_size  # noqa: E402
from protocol.client import AgentClient, client_ssl_context  # noqa: E402
from protocol.encoder import BatchEncoder  # noqa: E402
from protocol.events import Begin, Data  # noqa: E402
from tests.support.agent_harness import AgentProcess  # noqa: E402
from tests.support.batches import batch  # noqa: E402
from tests.support.process_memory import peak_rss_bytes  # noqa: E402

MiB = 1 << 20


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


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
        first = (await client.disk("bench0")).last_seq + 1
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


# After the page cache is dropped, the memory it held goes back to the host a second or two
# later (virtio-balloon free page reporting), and the guest then pays for every page it takes
# again: 2 GiB read cold take 1.7 s right after the drop and 3.5 s a second later. A tool that
# starts reading within a second (dd, rsync) would get the cheap pages, and one that starts a
# Python interpreter first the dear ones; waiting this long makes every measure start alike.
SETTLE_SECONDS = 5.0


def drop_caches(settle: float = SETTLE_SECONDS) -> None:
    """Write back dirty pages, drop the page cache and let the freed memory settle, so that
    the next reader starts cold, like every other."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    time.sleep(settle)


def read_seconds(*paths: Path) -> float:
    """Seconds for `dd bs=1M` to read `paths` one after the other to /dev/null."""
    return timed(
        lambda: [
            subprocess.run(
                ["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True
            )
            for path in paths
        ]
    )


def parallel_read_seconds(*paths: Path) -> float:
    """Seconds for one `dd bs=16M iflag=direct` per path, all at once, to read `paths`."""

    def read_all() -> None:
        readers = [
            subprocess.Popen(
                ["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for path in paths
        ]
        if any(reader.wait() != 0 for reader in readers):
            raise RuntimeError(f"dd could not read {', '.join(map(str, paths))}")

    return timed(read_all)


def resync_command(agent: AgentProcess, source: Path) -> list[str]:
    return [
        sys.executable, "-m", "agent", "push",
        "--server", agent.url, "--cert", str(agent.cert), "--key", str(agent.key),
        "--ca", str(agent.ca), "--disk", "bench0", "--source", str(source),
        "--mode", "resync", "--json",
    ]  # fmt: skip


def compile_bytecode() -> None:
    """Compile the package as an installation does, so that each `mtagent` run measured does
    not compile it again (PYTHONDONTWRITEBYTECODE is set on some machines)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "agent", "blockio", "protocol"],
        cwd=REPO,
        check=True,
    )


# KEEP_COPIES: the copies each round makes of the old image are deleted with the work
# directory at the end, not after their round. This machine's root file system is mounted
# with `discard`: a deletion sends the host discards of 2 GiB, which the host may still be
# working through while the next tool reads. (Keeping them did not end the swings between
# rounds: they come from the host.)


def resync_once(workdir: Path, old: Path, source: Path) -> tuple[float, dict[str, Any]]:
    """Seconds of `mtagent push --mode resync` from a cold page cache onto a new copy of
    `old` (a new pair), and its JSON result; checks that the target equals the source."""
    workdir.mkdir(parents=True)
    target = workdir / "target.img"
    shutil.copyfile(old, target)
    agent = AgentProcess.create(workdir / "agent", {"bench0": target})
    agent.start()
    try:
        drop_caches()
        started = time.perf_counter()
        done = subprocess.run(
            resync_command(agent, source), cwd=REPO, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - started
    finally:
        agent.stop()
    if done.returncode != 0:
        raise RuntimeError(f"resync failed: {done.stderr.strip()}")
    if file_digest(target) != file_digest(source):
        raise RuntimeError("the target differs from the source after the resync")
    return seconds, json.loads(done.stdout)  # the target stays until the end (KEEP_COPIES)


def rsync_once(workdir: Path, old: Path, source: Path, round_number: int) -> float:
    """Seconds of `rsync --inplace --no-whole-file` from a cold page cache onto a copy of `old`."""
    copy = workdir / f"rsync-{round_number}.img"  # stays until the end (KEEP_COPIES)
    shutil.copyfile(old, copy)
    drop_caches()
    seconds = timed(
        lambda: subprocess.run(
            ["rsync", "--inplace", "--no-whole-file", str(source), str(copy)],
            check=True,
            capture_output=True,
        )
    )
    return seconds


def bench_resync(
    workdir: Path, size: int = 2 << 30, fraction: float = 0.01, rounds: int = 3
) -> dict[str, Any]:
    """Each measure is the best of `rounds`, taken in turns: on these machines the same cold
    read of 2 GiB takes from 1 to 3 s depending on what the host does meanwhile."""
    if shutil.which("rsync") is None:
        raise SystemExit("bench: the resync section compares with rsync: apt-get install rsync")
    workdir.mkdir(parents=True)
    compile_bytecode()
    old, source = workdir / "old.img", workdir / "source.img"
    say(f"resync: making a {size // MiB} MiB image and changing {fraction:.0%} of its blocks")
    make_image(old, size, seed=21)
    shutil.copyfile(old, source)
    mutate_image(source, fraction, seed=22)
    floors, resyncs, rsyncs, results = [], [], [], []
    for round_number in range(1, rounds + 1):
        say(f"resync: round {round_number}: floor (reading both images at once, direct)")
        drop_caches()
        floors.append(parallel_read_seconds(source, old))
        say(f"resync: round {round_number}: mtagent push --mode resync")
        seconds, result = resync_once(workdir / f"round-{round_number}", old, source)
        resyncs.append(seconds)
        results.append(result)
        say(f"resync: round {round_number}: rsync --inplace --no-whole-file")
        rsyncs.append(rsync_once(workdir, old, source, round_number))
    seconds, rsync_seconds, floor_seconds = min(resyncs), min(rsyncs), min(floors)
    result = results[resyncs.index(seconds)]  # the best round's own figures
    return {
        "bytes": size,
        "changed_fraction": fraction,
        "seconds": round(seconds, 3),
        "rsync_seconds": round(rsync_seconds, 3),
        "floor_seconds": round(floor_seconds, 3),
        "speedup_vs_rsync": round(rsync_seconds / seconds, 3),
        "ratio_to_floor": round(floor_seconds / seconds, 3),
        "rounds": {
            "seconds": [round(x, 3) for x in resyncs],
            "rsync_seconds": [round(x, 3) for x in rsyncs],
            "floor_seconds": [round(x, 3) for x in floors],
        },
        "resync_inner_seconds": round(result["seconds"], 3),
        "differing_chunks": result["differing_chunks"],
        "sent_bytes": result["data_bytes"] + result["zero_bytes"],
        "wire_bytes": result["wire_bytes"],
        "batches": result["batches"],
    }


async def stream_digests(agent: AgentProcess, size: int, chunk_bytes: int) -> int:
    context = client_ssl_context(agent.cert, agent.key, agent.ca)
    async with AgentClient(agent.url, context) as client:
        count = 0
        async for _ in client.hashes("bench0", 0, size, chunk_bytes):
            count += 1
    return count


def bench_hashes(
    workdir: Path, size: int = 2 << 30, chunk_bytes: int = 64 << 10, rounds: int = 3
) -> dict[str, Any]:
    """Best of `rounds` each, taken in turns (see bench_resync)."""
    workdir.mkdir(parents=True)
    target = workdir / "target.img"
    say(f"hashes: making a {size // MiB} MiB image")
    make_image(target, size, seed=31)
    agent = AgentProcess.create(workdir / "agent", {"bench0": target})
    agent.start()
    reads, streams = [], []
    try:
        for round_number in range(1, rounds + 1):
            say(f"hashes: round {round_number}: dd bs=1M, then the endpoint")
            drop_caches()
            reads.append(read_seconds(target))
            drop_caches()
            started = time.perf_counter()
            count = asyncio.run(stream_digests(agent, size, chunk_bytes))
            streams.append(time.perf_counter() - started)
            if count != size // chunk_bytes:
                raise RuntimeError(f"{count} digests for {size // chunk_bytes} chunks")
    finally:
        agent.stop()
    seconds, read = min(streams), min(reads)
    return {
        "bytes": size,
        "chunk_bytes": chunk_bytes,
        "seconds": round(seconds, 3),
        "read_seconds": round(read, 3),
        "ratio_to_read": round(read / seconds, 3),
        "rounds": {
            "seconds": [round(x, 3) for x in streams],
            "read_seconds": [round(x, 3) for x in reads],
        },
    }


async def send_random_batches(agent: AgentProcess, count: int, batch_bytes: int) -> None:
    """`count` batches of `batch_bytes` of random data each, at random aligned offsets."""
    context = client_ssl_context(agent.cert, agent.key, agent.ca)
    rng = random.Random(17)
    async with AgentClient(agent.url, context) as client:
        disk = await client.disk("bench0")
        first, size = disk.last_seq + 1, disk.size_bytes
        for seq in range(first, first + count):
            offset = rng.randrange(0, size - batch_bytes + 1, 4096)
            body = batch("bench0", seq, [(offset, os.urandom(batch_bytes))])
            await client.put_batch("bench0", seq, body)


def bench_recover(workdir: Path, size: int, batches: int = 100) -> dict[str, Any]:
    """`mtagent recover --output` of a disk to the point before `batches` batches of 1 MiB
    (their undo applied), beside the running agent, against `dd bs=1M conv=fdatasync` copying
    that disk; the export is checked against the source image (the disk at that point)."""
    workdir.mkdir(parents=True)
    image = workdir / "source.img"
    say(f"recover: making a {size // MiB} MiB image and replicating it")
    make_image(image, size, seed=13)
    agent = start_agent(workdir, size)
    try:
        done = subprocess.run(
            push_command(agent, image), cwd=REPO, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"push failed: {done.stderr.strip()}")
        point = f"bench0@{json.loads(done.stdout)['batches']}"
        say(f"recover: {batches} batches of 1 MiB at random offsets")
        asyncio.run(send_random_batches(agent, batches, MiB))
        say("recover: dd baseline")
        dd_seconds = run_dd(agent.disks["bench0"], workdir / "dd.img")
        say(f"recover: mtagent recover --point {point} --output")
        out = workdir / "out"
        command = [
            sys.executable, "-m", "agent", "recover", "--config", str(agent.config_path),
            "--group", "g1", "--point", point, "--output", str(out), "--json",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"recover failed: {done.stderr.strip()}")
        report = json.loads(done.stdout)["disks"][0]
        if file_digest(out / "bench0.img") != file_digest(image):
            raise RuntimeError("the export differs from the source image it should restore")
    finally:
        agent.stop()
    return {
        "bytes": size,
        "batches": batches,
        "undo_bytes": report["undo_bytes"],
        "seconds": round(seconds, 3),
        "dd_seconds": round(dd_seconds, 3),
        "ratio_to_dd": round(dd_seconds / seconds, 3),
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SOAK_DISKS_PER_MACHINE = 3
SOAK_DISK_BYTES = 64 * MiB
# ASR's field figures: 25 MB/s average and 54 MB/s peak per protected machine.
SOAK_PEAK_TO_AVERAGE = 54 / 25


def bench_soak(workdir: Path, disks: int, rate: int, seconds: float) -> dict[str, Any]:
    """The load generator for `seconds` against `disks` disks; see the module docstring."""
    agent = AgentProcess.create(
        workdir / "agent", {f"s{i:02d}": SOAK_DISK_BYTES for i in range(disks)}
    )
    agent.groups.update({f"s{i:02d}": f"m{i // SOAK_DISKS_PER_MACHINE:02d}" for i in range(disks)})
    agent.write_config()
    agent.start(timeout=120)
    machines = -(-disks // SOAK_DISKS_PER_MACHINE)
    per_machine = rate // machines
    try:
        assert agent.process is not None
        say(f"soak: {disks} disks on {machines} machines at {rate / 1e6:.0f} MB/s for {seconds} s")
        cpu_before = cpu_seconds(agent.process.pid)
        command = [
            sys.executable, str(REPO / "scripts" / "loadgen.py"), "run", "--server", agent.url,
            "--cert", str(agent.cert), "--key", str(agent.key), "--ca", str(agent.ca),
            "--workdir", str(workdir / "load"), "--rate", str(per_machine),
            "--peak", str(int(per_machine * SOAK_PEAK_TO_AVERAGE)), "--duration", str(seconds),
            "--crash-every", "5", "--app-every", "30", "--heartbeat", "2",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if not done.stdout:
            raise RuntimeError(f"loadgen failed: {done.stderr.strip()}")
        summary = json.loads(done.stdout)
        cpu = cpu_seconds(agent.process.pid) - cpu_before
        rss = peak_rss_bytes(agent.process.pid)
    finally:
        agent.stop()
    return {
        "disks": disks,
        "machines": machines,
        "rate_asked_mb_per_s": round(rate / 1e6, 3),
        "acked_mb_per_s": summary["acked_mb_per_s"],
        "rate_ratio": round(summary["acked_mb_per_s"] * 1e6 / rate, 3),
        "rpo_seconds": summary["rpo_seconds"],
        "acked_bytes": summary["acked_bytes"],
        "batches": summary["batches"],
        "held_back_seconds": summary["held_back_seconds"],
        "errors": len(summary["errors"]),
        "model_check": "equal" if not summary["differing"] else summary["differing"],
        "agent_cpu_seconds": round(cpu, 3),
        "agent_peak_rss_bytes": rss,
    }


SCALE_FRAME_BYTES = 1 * MiB
SCALE_BATCH_BYTES = 64 * MiB


def write_scale_batches(
    workdir: Path, disks: list[str], disk_bytes: int
) -> tuple[Path, dict[str, list[Path]]]:
    """One source image of `disk_bytes` and, per disk, the batches (resync, 64 MiB each, one
    DATA frame a MiB, LZ4 where it pays) that copy it to that disk, in order; the files of
    one seq differ between disks only in BEGIN."""
    image = workdir / "source.img"
    make_image(image, disk_bytes, seed=13)
    batches = -(-disk_bytes // SCALE_BATCH_BYTES)
    files: dict[str, list[Path]] = {disk: [] for disk in disks}
    with open(image, "rb") as source:
        for seq in range(1, batches + 1):
            flags = frozenset({"resync", "resync_done"} if seq == batches else {"resync"})
            encoder = BatchEncoder(seq)
            encoder.encode(Begin("counted", seq, 0))  # each file's own BEGIN is counted by END
            body = workdir / "body.frames"
            with open(body, "wb") as out:
                offset = (seq - 1) * SCALE_BATCH_BYTES
                for _ in range(SCALE_BATCH_BYTES // SCALE_FRAME_BYTES):
                    if not (chunk := source.read(SCALE_FRAME_BYTES)):
                        break
                    out.write(encoder.encode(Data(offset, chunk)))
                    offset += len(chunk)
                out.write(encoder.end())
            for disk in disks:
                begin = BatchEncoder(seq).encode(Begin(disk, seq, time.time_ns(), flags))
                path = workdir / f"{disk}.{seq}.batch"
                with open(path, "wb") as out, open(body, "rb") as frames:
                    out.write(begin)
                    shutil.copyfileobj(frames, out, 8 * MiB)
                files[disk].append(path)
            body.unlink()
    return image, files


def sender_script(curl: list[str], url: str, disk: str, batches: list[Path]) -> str:
    """A shell line sending `batches` of `disk` in order, stopping at the first refusal."""
    return "; ".join(
        shlex.join([*curl, "-T", str(path), f"{url}/v1/disks/{disk}/batches/{seq}"])
        for seq, path in enumerate(batches, start=1)
    )


def core_split() -> tuple[list[str], list[str]]:
    """taskset prefixes for the agent and the senders: halves of the host's cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return [], []
    half = len(cores) // 2
    agent_cores = ",".join(str(core) for core in cores[:half])
    sender_cores = ",".join(str(core) for core in cores[half:])
    return ["taskset", "-c", agent_cores], ["taskset", "-c", sender_cores]


def scale_once(
    workdir: Path, disks: int, total_bytes: int, budget: int | None = None
) -> dict[str, Any]:
    """`disks` disks at once, `total_bytes` in all; see the module docstring."""
    workdir.mkdir(parents=True)
    disk_bytes = max(MiB, total_bytes // disks // MiB * MiB)
    names = [f"c{i:02d}" for i in range(disks)]
    image, files = write_scale_batches(workdir, names, disk_bytes)
    agent_prefix, sender_prefix = core_split()
    agent = AgentProcess.create(workdir / "agent", {name: disk_bytes for name in names})
    if budget is not None:
        agent.server_options["memory_budget"] = budget
        agent.write_config()
    agent.wrapper = agent_prefix
    agent.start(timeout=120)
    try:
        assert agent.process is not None
        say(f"scale: {disks} disks of {disk_bytes // MiB} MiB at once")
        cpu_before = cpu_seconds(agent.process.pid)
        started = time.perf_counter()
        curl = [
            "curl", "-sS", "--fail-with-body",
            "-H", "Content-Type: application/x-mtagent-batch",
            "--cert", str(agent.cert), "--key", str(agent.key), "--cacert", str(agent.ca),
        ]  # fmt: skip
        senders = [
            # One sender per disk, its batches one after another, as a process server does.
            subprocess.Popen(
                [*sender_prefix, "sh", "-ec", sender_script(curl, agent.url, name, files[name])],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for name in names
        ]
        failures = []
        for name, sender in zip(names, senders, strict=True):
            out, err = sender.communicate()
            if sender.returncode != 0:
                failures.append(f"{name}: {(out or err).decode(errors='replace').strip()}")
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(agent.process.pid) - cpu_before
        rss = peak_rss_bytes(agent.process.pid)
        if failures:
            raise RuntimeError(f"scale: batches refused: {failures[:3]}")
        source = file_digest(image)
        differing = [name for name in names if file_digest(agent.disks[name]) != source]
        if differing:
            raise RuntimeError(f"scale: targets differ from the source: {differing[:5]}")
    finally:
        agent.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    data = disk_bytes * disks
    return {
        "disks": disks,
        "disk_bytes": disk_bytes,
        "seconds": round(seconds, 3),
        "gb_per_s": round(data / seconds / 1e9, 3),
        "agent_cpu_seconds_per_gib": round(cpu / (data / (1 << 30)), 3),
        "agent_cores_busy": round(cpu / seconds, 2),
        "agent_peak_rss_bytes": rss,
    }


def bench_scale(
    workdir: Path, disk_counts: list[int], total_bytes: int, budget: int | None = None
) -> dict[str, Any]:
    """`scale_once` for each count of disks; ratios against the first."""
    runs = [scale_once(workdir / f"n{count}", count, total_bytes, budget) for count in disk_counts]
    base = runs[0]
    for run in runs:
        run["throughput_ratio"] = round(run["gb_per_s"] / base["gb_per_s"], 3)
        run["rss_ratio"] = round(run["agent_peak_rss_bytes"] / base["agent_peak_rss_bytes"], 3)
    agent_prefix, _ = core_split()
    return {
        "workers": 1,
        "agent_cores": agent_prefix[-1] if agent_prefix else "all",
        "runs": runs,
    }


SECTIONS = {"full_push", "ack_latency", "resync", "hashes", "recover", "soak", "scale"}


def main() -> int:
    parser = argparse.ArgumentParser(description="mtagent benchmarks (JSON on the last line)")
    parser.add_argument("--only", choices=sorted(SECTIONS))
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="full_push image size")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    parser.add_argument("--soak-disks", type=int, default=60)
    parser.add_argument("--soak-rate", type=parse_size, default=parse_size("120MB"))
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument(
        "--scale-disks",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 16, 60],
        help="counts of disks at once, comma-separated",
    )
    parser.add_argument("--scale-bytes", type=parse_size, default=1 << 30)
    parser.add_argument(
        "--scale-budget", type=parse_size, help="[server] memory_budget (default: the agent's)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mtagent-bench-", dir=args.dir))
    results: dict[str, Any] = {}
    try:
        if args.only in (None, "full_push"):
            results["full_push"] = bench_full_push(workdir / "full_push", args.size)
        if args.only in (None, "ack_latency"):
            results["ack_latency"] = bench_ack_latency(workdir / "ack_latency")
        if args.only in (None, "resync"):
            results["resync"] = bench_resync(workdir / "resync")
        if args.only in (None, "hashes"):
            results["hashes"] = bench_hashes(workdir / "hashes")
        if args.only in (None, "recover"):
            results["recover"] = bench_recover(workdir / "recover", args.size)
        if args.only in (None, "soak"):
            results["soak"] = bench_soak(
                workdir / "soak", args.soak_disks, args.soak_rate, args.soak_seconds
            )
        if args.only in (None, "scale"):
            results["scale"] = bench_scale(
                workdir / "scale", args.scale_disks, args.scale_bytes, args.scale_budget
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
