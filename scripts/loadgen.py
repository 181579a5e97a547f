#!/usr/bin/env python3
"""A load generator for a running agent: every group a protected machine, every disk written
as a real one is, at a configured rate, with a model of every disk checked at the end.

    loadgen.py run --server URL --cert C --key K --ca A --workdir W [--rate 25MB] [--peak 54MB]
                   [--duration 60] [--crash-every 5] [--app-every 60] [--heartbeat 5]
                   [--max-backlog 64MiB] [--groups g1,g2]
    loadgen.py check --server URL --cert C --key K --ca A --workdir W

`run` takes every disk the agent lists (or those of `--groups`) and, per group (a machine):
- wipes each disk first with one resync batch of ZERO frames, so that the model starts as zeros
  (loadgen is for test and benchmark agents: it destroys what the disks held);
- writes realistic content (the demo's mix of zeros, text and noise, 4 KiB to 256 KiB at 4 KiB
  aligned offsets) at `--rate` per machine on average: each second the machine either bursts at
  `--peak` or stays idle, with the odds that make the average `--rate` (ASR's field figures are
  25 MB/s average and 54 MB/s peak per machine);
- cuts a batch per disk when `--batch-bytes` have gathered or every `--flush` seconds, stamped with
  the moment of the cut (`source_time_ns`: the batch holds every write made before it);
- every `--crash-every` seconds a crash-consistent group point and every `--app-every` seconds an
  app-consistent one: the same TAG in the next batch of every disk of the group, cut at the same
  moment on all of them;
- sends an empty batch for a disk that had nothing to send for `--heartbeat` seconds, so that the
  agent knows the disk is in sync (docs/protocol.md section 6, "RPO");
- holds at most `--max-backlog` of cut, unsent writes per machine: past it the machine writes
  nothing until the agent catches up (the generator's memory stays bounded whatever the agent
  takes), which shows as a `rate_ratio` under 1, and the RPO grows as it would;
- samples each disk's RPO (now minus the `source_time_ns` of its newest acknowledged batch) every
  `--sample` seconds.

At the end it waits for every batch, then compares every target with its model through the
hashes endpoint (XXH3-128 per chunk) and prints one JSON summary on stdout. The model stays in
`--workdir` (a sparse file per disk and `manifest.json`), so that `check` can compare again later.
Exit 0: every batch acknowledged and every target equal to its model; 1: not; 2: usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import xxhash  # noqa: E402
from sample_image import text_pool  # noqa: E402

from agent.units import parse_size  # noqa: E402
from protocol.batching import MAX_ZERO_FRAME_BYTES  # noqa: E402
from protocol.client import AgentClient, TransportError, client_ssl_context  # noqa: E402
from protocol.documents import Disk  # noqa: E402
from protocol.encoder import BatchEncoder  # noqa: E402
from protocol.errors import ProtocolError  # noqa: E402
from protocol.events import Begin, Data, Tag, Zero  # noqa: E402
from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE  # noqa: E402

ALIGN = 4096
MAX_WRITE = 256 * 1024
CHECK_CHUNK = 1 << 20
SEND_TRIES = 5
# Each disk's own order of writes is what the model replays: a DATA frame is cut to this.
FRAME_BYTES = 1 << 20

Write = tuple[int, bytes | int]  # (offset, data) or (offset, length of zeros)


@dataclass(frozen=True)
class Load:
    """What `run` generates, per machine (group)."""

    rate: int  # bytes per second, on average
    peak: int  # bytes per second while bursting
    duration: float
    crash_every: float
    app_every: float
    heartbeat: float
    flush: float
    batch_bytes: int
    max_backlog: int
    sample: float
    seed: int


@dataclass(frozen=True)
class Pools:
    """The text and noise that writes are cut from, made once for every machine: making them
    takes about a second, which per machine would delay the load by 20 s for 20 machines."""

    text: bytes
    noise: bytes

    @classmethod
    def made(cls, rng: random.Random) -> Pools:
        return cls(text_pool(rng), rng.randbytes(4 << 20))


class Content:
    """Write contents with the demo's mix: zeros 30%, text 45%, noise 25%, sliced from `pools`
    at offsets drawn by `rng`, so that generating a write costs a slice, not a random draw per
    byte."""

    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.text = pools.text
        self.noise = pools.noise

    def write(self, disk_size: int) -> Write:
        """One write at a random 4 KiB-aligned offset inside a disk of `disk_size` bytes."""
        length = min(self.rng.randrange(ALIGN, MAX_WRITE + 1, ALIGN), disk_size)
        offset = self.rng.randrange(0, disk_size - length + 1, ALIGN)
        kind = self.rng.random()
        if kind < 0.30:
            return offset, length
        pool = self.text if kind < 0.75 else self.noise
        start = self.rng.randrange(0, len(pool) - length)
        return offset, pool[start : start + length]


@dataclass
class Cut:
    """One batch to send: writes made before `source_time_ns`, and a TAG perhaps."""

    writes: list[Write]
    source_time_ns: int
    tag: Tag | None = None

    @property
    def data_bytes(self) -> int:
        return sum(w if isinstance(w, int) else len(w) for _, w in self.writes)


@dataclass
class DiskLoad:
    """One disk: its model file, the writes not cut yet, the batches not sent yet."""

    disk: Disk
    model: Path
    next_seq: int
    pending: list[Write] = field(default_factory=list)
    pending_bytes: int = 0
    last_cut: float = 0.0
    queue: asyncio.Queue[Cut | None] = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0  # the data of cuts not acknowledged yet
    acked_source_time_ns: int = 0
    batches: int = 0
    empty_batches: int = 0
    acked_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, write: Write, model: Any) -> None:
        """Record `write` in the model now (the source changed) and keep it for the next cut."""
        offset, content = write
        model.seek(offset)
        model.write(bytes(content) if isinstance(content, int) else content)
        self.pending.append(write)
        self.pending_bytes += content if isinstance(content, int) else len(content)

    def cut(self, now: float, tag: Tag | None = None, *, empty_ok: bool = False) -> None:
        """Queue the pending writes as one batch stamped `now` (a TAG's batch even if empty)."""
        if not self.pending and tag is None and not empty_ok:
            return
        self.queue.put_nowait(Cut(self.pending, int(now * 1e9), tag))
        self.queued_bytes += self.pending_bytes
        self.pending, self.pending_bytes, self.last_cut = [], 0, now


def batch_body(disk: str, seq: int, cut: Cut, flags: Iterable[str] = ()) -> bytes:
    """The wire body of `cut` as batch `seq` of `disk` (docs/protocol.md section 3)."""
    encoder = BatchEncoder(seq)
    parts = [encoder.encode(Begin(disk, seq, cut.source_time_ns, frozenset(flags)))]
    for offset, content in cut.writes:
        if isinstance(content, int):
            parts.append(encoder.encode(Zero(offset, content)))
            continue
        for start in range(0, len(content), FRAME_BYTES):
            parts.append(encoder.encode(Data(offset + start, content[start : start + FRAME_BYTES])))
    if cut.tag is not None:
        parts.append(encoder.encode(cut.tag))
    parts.append(encoder.end())
    return b"".join(parts)


async def send(client: AgentClient, state: DiskLoad, cut: Cut, flags: Iterable[str] = ()) -> bool:
    """Send `cut` as the disk's next batch, again on a broken connection (the agent answers a
    batch it already has as replayed). False, with the reason kept, if the agent refuses it.
    A resync batch (`flags`) is the wipe, not load: it is not counted."""
    seq = state.next_seq
    body = batch_body(state.disk.id, seq, cut, flags)
    for attempt in range(SEND_TRIES):
        try:
            await client.put_batch(state.disk.id, seq, body)
        except TransportError as exc:
            if attempt + 1 == SEND_TRIES:
                state.errors.append(f"batch {seq}: {exc}")
                return False
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        except ProtocolError as exc:
            state.errors.append(f"batch {seq}: {exc.code} {exc.message}")
            return False
        state.next_seq += 1
        state.acked_source_time_ns = cut.source_time_ns
        if flags:
            return True
        state.batches += 1
        state.empty_batches += not cut.writes and cut.tag is None
        state.acked_bytes += cut.data_bytes
        return True
    return False


async def wipe(client: AgentClient, state: DiskLoad) -> bool:
    """One resync batch of ZERO frames over the whole disk: target and model start as zeros."""
    size = state.disk.size_bytes
    zeros: list[Write] = [
        (start, min(MAX_ZERO_FRAME_BYTES, size - start))
        for start in range(0, size, MAX_ZERO_FRAME_BYTES)
    ]
    with open(state.model, "wb") as model:
        model.truncate(size)
    cut = Cut(zeros, time.time_ns())
    return await send(client, state, cut, (BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE))


async def sender(client: AgentClient, state: DiskLoad) -> None:
    """Send the disk's batches in order, one at a time, until the queue says stop."""
    while (cut := await state.queue.get()) is not None:
        if not state.errors:  # a refused batch stops the disk: later seqs would be refused too
            await send(client, state, cut)
        state.queued_bytes -= cut.data_bytes


class Machine:
    """One group: its disks written at the machine's rate, cut together for group points."""

    def __init__(
        self, group: str, disks: list[DiskLoad], load: Load, rng: random.Random, pools: Pools
    ) -> None:
        self.group, self.disks, self.load = group, disks, load
        self.rng = rng
        self.content = Content(rng, pools)
        self.points: dict[str, int] = {"app": 0, "crash": 0}
        self.held_back_seconds = 0.0  # time the backlog was full and the machine wrote nothing

    async def run(self, started: float) -> None:
        """Write, cut and tag until the duration is over, then cut what is left."""
        load = self.load
        tick = 0.05
        last = started
        burst = load.peak > 0 and self.rng.random() < load.rate / load.peak
        next_second = started + 1
        next_crash = started + load.crash_every
        next_app = started + load.app_every
        debt = 0.0
        models = [open(d.model, "r+b") for d in self.disks]  # noqa: SIM115 - closed below
        try:
            while (now := time.monotonic()) < started + load.duration:
                if now >= next_second:
                    burst = load.peak > 0 and self.rng.random() < load.rate / load.peak
                    next_second += 1
                # What the machine wrote since the last pass, however long the pass took.
                debt += load.peak * (now - last) if burst else 0.0
                if sum(d.queued_bytes + d.pending_bytes for d in self.disks) >= load.max_backlog:
                    self.held_back_seconds += now - last
                    debt = 0.0
                last = now
                while debt > 0:
                    index = self.rng.randrange(len(self.disks))
                    write = self.content.write(self.disks[index].disk.size_bytes)
                    self.disks[index].add(write, models[index])
                    debt -= write[1] if isinstance(write[1], int) else len(write[1])
                wall = time.time()
                if now >= next_app or now >= next_crash:
                    kind = "app" if now >= next_app else "crash"
                    self.tag_all(kind, wall)
                    next_app += load.app_every if kind == "app" else 0
                    next_crash = now + load.crash_every
                for state in self.disks:
                    due = wall - state.last_cut
                    if state.pending_bytes >= load.batch_bytes or (
                        state.pending and due >= load.flush
                    ):
                        state.cut(wall)
                    elif due >= load.heartbeat:
                        state.cut(wall, empty_ok=True)
                await asyncio.sleep(tick)
            # The last cut says the disk is in sync at the end, writes or not.
            for state in self.disks:
                state.cut(time.time(), empty_ok=True)
        finally:
            for model in models:
                model.close()

    def tag_all(self, kind: str, wall: float) -> None:
        """A group point: the same TAG in a batch of every disk, all cut at this moment."""
        self.points[kind] += 1
        tag_id = uuid.uuid4().hex
        tag = Tag(tag_id, f"loadgen {kind} {self.points[kind]}", kind, self.group, int(wall * 1e9))
        for state in self.disks:
            state.cut(wall, tag)


async def sample_rpo(disks: list[DiskLoad], every: float, into: list[float]) -> None:
    """Each disk's RPO every `every` seconds, as the agent computes it (section 6)."""
    while True:
        await asyncio.sleep(every)
        now = time.time_ns()
        into.extend((now - d.acked_source_time_ns) / 1e9 for d in disks)


async def target_differences(client: AgentClient, state: DiskLoad) -> list[int]:
    """The offsets of the chunks where the target differs from the model."""
    size = state.disk.size_bytes
    differing, offset = [], 0
    with open(state.model, "rb") as model:
        async for digest in client.hashes(state.disk.id, 0, size, CHECK_CHUNK):
            if digest != xxhash.xxh3_128_digest(model.read(CHECK_CHUNK)):
                differing.append(offset)
            offset += CHECK_CHUNK
    return differing


async def check_all(client: AgentClient, disks: list[DiskLoad]) -> dict[str, list[int]]:
    """Per disk, the differing chunk offsets (only disks that differ)."""
    found = {}
    for state in disks:
        differing = await target_differences(client, state)
        if differing:
            found[state.disk.id] = differing
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


async def choose_disks(client: AgentClient, groups: list[str] | None) -> list[Disk]:
    disks = [d for d in await client.disks() if groups is None or d.group in groups]
    if not disks:
        raise SystemExit("loadgen: the agent lists no disk to drive")
    return disks


async def run(args: argparse.Namespace, load: Load) -> dict[str, Any]:
    context = client_ssl_context(args.cert, args.key, args.ca)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(load.seed)
    async with AgentClient(args.server, context) as client:
        disks = await choose_disks(client, args.groups)
        states = [
            DiskLoad(d, args.workdir / f"{d.id}.model", d.last_seq + 1, last_cut=time.time())
            for d in disks
        ]
        manifest = {"disks": [s.disk.id for s in states]}
        (args.workdir / "manifest.json").write_text(json.dumps(manifest))
        pools = Pools.made(rng)
        machines = [
            Machine(group, [s for s in states if s.disk.group == group], load, rng, pools)
            for group in sorted({s.disk.group for s in states})
        ]
        # Last before the load: the wipe's time is each disk's first source state, and the RPO
        # sampled from here on must not count the generator's own setup.
        wiped = await asyncio.gather(*(wipe(client, s) for s in states))
        samples: list[float] = []
        started = time.monotonic()
        sampler = asyncio.create_task(sample_rpo(states, load.sample, samples))
        senders = [asyncio.create_task(sender(client, s)) for s in states]
        if all(wiped):
            await asyncio.gather(*(m.run(started) for m in machines))
        for state in states:
            state.queue.put_nowait(None)
        await asyncio.gather(*senders)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        seconds = time.monotonic() - started
        differing = await check_all(client, states)
        points = {g: len(await client.recovery_points(g)) for g in {s.disk.group for s in states}}
    errors = {s.disk.id: s.errors for s in states if s.errors}
    acked = sum(s.acked_bytes for s in states)
    return {
        "disks": len(states),
        "machines": len(machines),
        "seconds": round(seconds, 3),
        "acked_bytes": acked,
        "acked_mb_per_s": round(acked / seconds / 1e6, 3),
        "batches": sum(s.batches for s in states),
        "held_back_seconds": round(sum(m.held_back_seconds for m in machines), 3),
        "empty_batches": sum(s.empty_batches for s in states),
        "group_points": {
            "app": sum(m.points["app"] for m in machines),
            "crash": sum(m.points["crash"] for m in machines),
        },
        "points_listed": points,
        "rpo_seconds": {
            "p50": round(statistics.median(samples), 3) if samples else None,
            "p99": round(percentile(samples, 0.99), 3) if samples else None,
            "max": round(max(samples), 3) if samples else None,
            "samples": len(samples),
        },
        "errors": errors,
        "differing": differing,
        "ok": not errors and not differing,
    }


async def check(args: argparse.Namespace) -> dict[str, Any]:
    context = client_ssl_context(args.cert, args.key, args.ca)
    manifest = json.loads((args.workdir / "manifest.json").read_text())
    async with AgentClient(args.server, context) as client:
        states = [
            DiskLoad(await client.disk(d), args.workdir / f"{d}.model", 0)
            for d in manifest["disks"]
        ]
        differing = await check_all(client, states)
    return {"disks": len(states), "differing": differing, "ok": not differing}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "check"):
        command = sub.add_parser(name)
        command.add_argument("--server", required=True)
        command.add_argument("--cert", type=Path, required=True)
        command.add_argument("--key", type=Path, required=True)
        command.add_argument("--ca", type=Path, required=True)
        command.add_argument("--workdir", type=Path, required=True)
        if name == "check":
            continue
        command.add_argument("--groups", type=lambda s: s.split(","), default=None)
        command.add_argument("--rate", type=parse_size, default=parse_size("25MB"))
        command.add_argument("--peak", type=parse_size, default=parse_size("54MB"))
        command.add_argument("--duration", type=float, default=60.0)
        command.add_argument("--crash-every", type=float, default=5.0)
        command.add_argument("--app-every", type=float, default=60.0)
        command.add_argument("--heartbeat", type=float, default=5.0)
        command.add_argument("--flush", type=float, default=0.5)
        command.add_argument("--batch-bytes", type=parse_size, default=parse_size("4MiB"))
        command.add_argument("--max-backlog", type=parse_size, default=parse_size("64MiB"))
        command.add_argument("--sample", type=float, default=0.5)
        command.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "run" and args.peak < args.rate:
        parser.error("--peak must be at least --rate")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "check":
        summary = asyncio.run(check(args))
    else:
        load = Load(
            rate=args.rate,
            peak=args.peak,
            duration=args.duration,
            crash_every=args.crash_every,
            app_every=args.app_every,
            heartbeat=args.heartbeat,
            flush=args.flush,
            batch_bytes=args.batch_bytes,
            max_backlog=args.max_backlog,
            sample=args.sample,
            seed=args.seed,
        )
        summary = asyncio.run(run(args, load))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
