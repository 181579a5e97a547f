"""`resync_image`: make a target that holds an older copy of the source equal to it,
sending only the chunks whose digests differ (docs/protocol.md section 5).

The comparison (`agent.sender.compare`) finds the differing chunks window by window; a
`protocol.batching.ResyncPlanner` cuts them into batches meanwhile, and a second task sends
them over another connection while the comparison goes on, through the same pipe as a push
(`agent.sender.batch_sender`): the differing chunks are read from the source again
(`blockio.scan.source_image.full_extents`, all-zero chunks as ZERO frames).

A batch is planned only once its content is decided: it can be sent again as it was after a
failure, and it never waits for digests (the agent pauses the digest stream at a window a
batch in flight writes into, agent/server/hashes_api.py). A batch closes when its next chunk
would take it over `batch_bytes`, or as a checkpoint when `checkpoint_seconds` have passed
since the last batch; the last one is flagged `resync_done` and is sent even when nothing
differs (without frames), so that the disk becomes `ok`. What differs is so sent while the
comparison goes on, and what is left for the end is what the last seconds found: reading the
chunks again and applying them (undo, writes, fdatasync) took 0.4 to 0.55 s after the
comparison of the benchmark when all of it waited for the end. The chunks are asked of the
page cache (POSIX_FADV_WILLNEED) as soon as they are known to differ.

While the reads went through the page cache, a batch every half second slowed the comparison
down (4.5 s instead of 2.5 s for 2 GiB); with direct reads, a checkpoint every 2 s made no
difference that the benchmark machine's noise let show (4 runs each, interleaved).

Resuming: the agent keeps, for a resync in progress, the end of the furthest extent its
acknowledged batches wrote (`resync_offset` in the Disk JSON); below it the target holds
the source. A resync of a disk that is `resyncing` compares from there, provided the
source is the one that resync sends (its mtime is the agent's `last_source_time_ns`). A
checkpoint batch whose last differing chunk ends before the point the comparison reached
also carries the source's last sector before that point (equal on both sides, as just
compared), so that the agent's `resync_offset` records the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mmap
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.sender.batch_sender import BatchSender
from agent.sender.compare import DEFAULT_CHUNK_BYTES, CompareProgress, Comparison
from blockio.scan.chunk_digests import SCAN_WINDOW_BYTES, ChunkReader
from blockio.scan.source_image import Extent, full_extents
from protocol.batching import one_batch_events
from protocol.client import AgentClient
from protocol.events import Event
from protocol.resync_plan import BatchPlan, ComparedWindow, ResyncPlanner

CHECKPOINT_SECONDS = 2.0
"""What differs is sent at least this often (see the module doc); a resync cut off loses at
most about this much comparison; the agent's progress ratio moves at least this often."""


@dataclass(frozen=True, slots=True)
class ResyncResult:
    """What a resync did.

    The comparison covered `[start_offset, start_offset + compared_bytes)` (a resumed
    resync starts where the agent's `resync_offset` was); `differing_chunks` of it,
    `differing_bytes` in all, differed. `data_bytes` and `zero_bytes` are the DATA and ZERO
    lengths of acknowledged batches (checkpoint sectors included), `wire_bytes` every byte
    of batch bodies sent, failed attempts included.
    """

    disk: str
    mode: str
    chunk_bytes: int
    start_offset: int
    compared_bytes: int
    differing_chunks: int
    differing_bytes: int
    batches: int
    first_seq: int
    last_seq: int
    data_bytes: int
    zero_bytes: int
    wire_bytes: int
    seconds: float
    retries: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def resync_image(
    client: AgentClient,
    disk_id: str,
    source: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    frame_bytes: int,
    batch_bytes: int,
    compress: bool,
    retries: int,
    progress: Callable[[CompareProgress], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    window_bytes: int = SCAN_WINDOW_BYTES,
) -> ResyncResult:
    """Make disk `disk_id` of the agent equal to `source` over `[0, size of source)`,
    sending only the chunks of `chunk_bytes` whose digests differ, in batches flagged
    `resync` numbered from the disk's last_seq + 1, the last one also `resync_done` (so the
    disk is `ok` on return). A disk that is `resyncing` from this same source resumes at
    its `resync_offset`; acknowledged batches are never sent again.

    Failures (disconnects, timeouts, 5xx, TARGET_UNAVAILABLE) are retried like a push
    (`agent.sender.push.push_image`): the digest stream is asked again from the first chunk
    not yet compared, a batch again after asking the agent whether it has it; `retries`
    bounds the failures in a row. `progress` is called on the event loop after each window.

    Raises BatchRefused for a batch refused for good, PushFailed for a source that does
    not fit or cannot be read, an error answer of the digest stream that retrying cannot
    fix, or when retries run out; ValueError for a bad chunk size or a batch size smaller
    than a chunk.
    """
    if batch_bytes < chunk_bytes:
        raise ValueError(f"batch_bytes {batch_bytes} is smaller than chunk_bytes {chunk_bytes}")
    comparison = Comparison(
        client, disk_id, source, chunk_bytes=chunk_bytes, retries=retries, window_bytes=window_bytes
    )
    disk = await comparison.open({"frame size": frame_bytes, "batch size": batch_bytes})
    size = comparison.size
    start = comparison.resume_offset(disk)
    first_seq = disk.last_seq + 1
    sender = BatchSender(
        client, disk_id, source, comparison.retries, compress=compress, frame_bytes=frame_bytes
    )
    sender.acked = first_seq - 1
    planner = ResyncPlanner(
        first_seq=first_seq,
        start=start,
        batch_bytes=batch_bytes,
        sector=comparison.sector,
        checkpoint_seconds=checkpoint_seconds,
        started_at=time.monotonic(),
    )
    plans: asyncio.Queue[BatchPlan | None] = asyncio.Queue(2)

    async def plan() -> None:
        async with contextlib.aclosing(comparison.windows(start)) as compared:
            async for window, differing in compared:
                # The batch reads them later; the comparison read them past the page cache.
                ahead.prefetch((offset, chunk_bytes) for offset in differing)
                found = ComparedWindow(
                    window.stop,
                    time.monotonic(),
                    tuple((offset, comparison.chunk_length(offset)) for offset in differing),
                )
                for closed in planner.window(found):
                    await plans.put(closed)
                if progress is not None:
                    progress(CompareProgress(window.stop, size, sender.disk_bytes))
        await plans.put(planner.finish())
        await plans.put(None)

    reading = _PlanReading(
        source=source,
        disk=disk_id,
        source_time_ns=comparison.source_time_ns,
        chunk_bytes=chunk_bytes,
        sector=comparison.sector,
        frame_bytes=frame_bytes,
    )

    async def send() -> None:
        while (batch := await plans.get()) is not None:
            ahead.prefetch(batch.extents)  # in case the comparison's prefetch was dropped since
            await sender.send(batch.seq, functools.partial(reading.events, batch))

    with ChunkReader.open(source, window_bytes=mmap.PAGESIZE) as ahead:
        await _together(plan(), send())
    if progress is not None:
        progress(CompareProgress(size, size, sender.disk_bytes))
    return ResyncResult(
        disk=disk_id,
        mode="resync",
        chunk_bytes=chunk_bytes,
        start_offset=start,
        compared_bytes=comparison.compared,
        differing_chunks=comparison.differing_chunks,
        differing_bytes=comparison.differing_bytes,
        batches=sender.acked - first_seq + 1,
        first_seq=first_seq,
        last_seq=sender.acked,
        data_bytes=sender.data_bytes,
        zero_bytes=sender.zero_bytes,
        wire_bytes=sender.wire_bytes,
        seconds=time.monotonic() - comparison.started,
        retries=comparison.retries.total,
    )


@dataclass(frozen=True, slots=True)
class _PlanReading:
    """How the batches of plans are read from the source (in the producer thread)."""

    source: Path
    disk: str
    source_time_ns: int
    chunk_bytes: int
    sector: int
    frame_bytes: int

    def events(
        self, plan: BatchPlan, seq: int, offset: int, scanned: Callable[[int], None]
    ) -> Iterable[Event]:
        """The events of `plan`'s batch (`agent.sender.batch_sender.EventsFrom` once `plan`
        is given: a plan is one batch, `seq`, read from its own extents)."""
        assert seq == plan.seq, (seq, plan.seq)
        return one_batch_events(
            self._extents(plan),
            disk=self.disk,
            seq=plan.seq,
            source_time_ns=self.source_time_ns,
            frame_bytes=self.frame_bytes,
            flags=plan.flags,
        )

    def _extents(self, plan: BatchPlan) -> Iterator[Extent]:
        """What `plan` writes, read from the source: zeros judged chunk by chunk, as the
        comparison judged the chunks, and the checkpoint sector by itself."""
        for start, length in plan.runs:
            yield from full_extents(
                self.source, chunk_bytes=self.chunk_bytes, start=start, end=start + length
            )
        if plan.checkpoint is not None:
            start, length = plan.checkpoint
            yield from full_extents(
                self.source, chunk_bytes=self.sector, start=start, end=start + length
            )


async def _together(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run `jobs` at once until all are done; the first failure stops the others and is
    raised as itself (not in an ExceptionGroup: callers catch PushFailed)."""
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except BaseExceptionGroup as failures:
        first = failures.exceptions[0]
        raise first from first.__cause__
