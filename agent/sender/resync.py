"""Resync and verify by hash comparison (PROTOCOL.md section 5): the sender's side.

`resync_image` makes a target that holds an older copy of the source equal to it, sending
only the chunks that differ; `verify_image` compares the same way and reports, writing
nothing.

The comparison is a pipeline in which neither side waits for a whole pass of the other:
a worker thread reads the source in windows and digests its chunks
(blockio.scan.chunk_digests), a couple of windows ahead; the agent streams the target's
digests over one connection (`AgentClient.hashes`) as it reads them; the event loop
compares each window as soon as both sides of it are there. Both sides read with O_DIRECT in
large windows (blockio.scan.chunk_digests.SCAN_WINDOW_BYTES), the fastest way through a whole
disk. A resync plans batches of the differing chunks meanwhile, and a second task sends them
over another connection while the comparison goes on, reading the differing chunks from the
source again, all-zero chunks as ZERO frames.

A batch is opened only once its content is decided: it can be sent again as it was after a
failure, and it never waits for digests (the agent pauses the digest stream at a window a
batch in flight writes into, agent/server/hashes_api.py). A batch closes when its next chunk would
take it over `batch_bytes`, or as a checkpoint when `checkpoint_seconds` have passed since
the last batch; the last one is flagged `resync_done` and is sent even when nothing differs
(without frames), so that the disk becomes `ok`. What differs is so sent while the
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
import mmap
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.sender.push import (
    TRANSPORT_ERRORS,
    BatchRefused,
    PushFailed,
    RetryBudget,
    is_transient,
    source_problem,
)
from blockio.scan.chunk_digests import (
    DIGEST_BYTES,
    SCAN_READERS,
    SCAN_WINDOW_BYTES,
    ChunkReader,
    WindowReaders,
    chunk_bytes_problem,
    windows,
)
from blockio.scan.source_image import ImageChanged, image_bytes
from protocol.batching import MAX_ZERO_FRAME_BYTES
from protocol.client import AgentClient
from protocol.documents import Disk, DiskState
from protocol.encoder import BatchEncoder
from protocol.errors import ProtocolError, SequenceGap
from protocol.events import Begin, Data, Zero
from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE

MODES = ("resync", "verify")

DEFAULT_CHUNK_BYTES = 64 * 1024
"""The comparison's grid. Small chunks send little more than what changed (a changed
64 KiB block costs 64 KiB, not a megabyte); a 2 GiB disk has 32768 of them, 512 KiB of
digests, which is nothing beside the disk's own reading."""

CHECKPOINT_SECONDS = 2.0
"""What differs is sent at least this often (see the module doc); a resync cut off loses at
most about this much comparison; the agent's progress ratio moves at least this often."""

MAX_REPORTED_RANGES = 10_000
"""A verify keeps at most this many differing ranges (it counts them all)."""

# Windows of the source digested ahead of the comparison.
_READ_AHEAD_WINDOWS = 32
# Frames encoded per hop to the worker thread while a batch body is produced.
_BODY_PIECE_BYTES = 256 * 1024
# Large frames go to the client in slices of this size (see agent/sender/push.py: _SLICE_BYTES).
_SLICE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class CompareProgress:
    """How far a resync or verify is: the comparison has reached offset `compared_bytes` of
    the source's `total_bytes`; `sent_bytes` of disk bytes are in acknowledged batches."""

    compared_bytes: int
    total_bytes: int
    sent_bytes: int


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


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What a verify found: the chunks of the source that differ on the target, counted,
    and as coalesced byte ranges `(offset, length)` (the first MAX_REPORTED_RANGES)."""

    disk: str
    chunk_bytes: int
    compared_bytes: int
    differing_chunks: int
    differing_bytes: int
    ranges: tuple[tuple[int, int], ...]
    ranges_truncated: bool
    seconds: float
    retries: int

    @property
    def identical(self) -> bool:
        return self.differing_chunks == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "mode": "verify",
            "identical": self.identical,
            "chunk_bytes": self.chunk_bytes,
            "compared_bytes": self.compared_bytes,
            "differing_chunks": self.differing_chunks,
            "differing_bytes": self.differing_bytes,
            "ranges": [{"offset": offset, "length": length} for offset, length in self.ranges],
            "ranges_truncated": self.ranges_truncated,
            "seconds": self.seconds,
            "retries": self.retries,
        }


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
    comparison = _Comparison(client, disk_id, source, chunk_bytes, retries, window_bytes)
    return await comparison.resync(
        frame_bytes=frame_bytes,
        batch_bytes=batch_bytes,
        compress=compress,
        progress=progress,
        checkpoint_seconds=checkpoint_seconds,
    )


async def verify_image(
    client: AgentClient,
    disk_id: str,
    source: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    retries: int,
    progress: Callable[[CompareProgress], None] | None = None,
    window_bytes: int = SCAN_WINDOW_BYTES,
) -> VerifyResult:
    """Compare `source` with disk `disk_id` of the agent over `[0, size of source)` by chunk
    digests, and report the chunks that differ. Sends no batch: the target is not written.

    Retries like `resync_image`. Raises PushFailed for a source that does not fit or
    cannot be read, an error answer that retrying cannot fix, or when retries run out;
    ValueError for a bad chunk size.
    """
    comparison = _Comparison(client, disk_id, source, chunk_bytes, retries, window_bytes)
    return await comparison.verify(progress=progress)


class _TargetDigests:
    """The target's digest stream, asked again from the first missing chunk after a failure."""

    def __init__(
        self, client: AgentClient, disk: str, end: int, chunk_bytes: int, retries: RetryBudget
    ) -> None:
        self._client = client
        self._disk = disk
        self._end = end
        self._chunk_bytes = chunk_bytes
        self._retries = retries
        self._stream: AsyncIterator[bytes] | None = None
        self._first: asyncio.Future[bytes] | None = None

    def begin(self, offset: int) -> None:
        """Ask for the digests from `offset` now, before the first `take`: the comparison
        waits on the slower side, and the agent need not wait for the source's first window
        to start reading. Its failures surface in `take`, which asks again."""
        self._stream = self._open(offset)
        self._first = asyncio.ensure_future(anext(self._stream))

    async def take(self, offset: int, count: int) -> bytes:
        """The digests of the `count` chunks from `offset`, concatenated. Successive calls
        must ask for successive chunks."""
        got: list[bytes] = []
        while len(got) < count:
            try:
                if self._stream is None:
                    self._stream = self._open(offset + len(got) * self._chunk_bytes)
                first, self._first = self._first, None
                got.append(await (first if first is not None else anext(self._stream)))
            except ProtocolError as exc:
                await self.close()
                if not is_transient(exc):
                    raise PushFailed(
                        f"disk {self._disk}: the agent refused its digests: {exc}", disk=self._disk
                    ) from exc
                await self._retries.back_off(exc)
            except (*TRANSPORT_ERRORS, StopAsyncIteration) as exc:
                await self.close()
                await self._retries.back_off(exc)
        return b"".join(got)

    async def close(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            # The stream cannot be closed while a task is inside it.
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    def _open(self, at: int) -> AsyncIterator[bytes]:
        return aiter(self._client.hashes(self._disk, at, self._end - at, self._chunk_bytes))


class _Comparison:
    """One resync or verify run: where the agent is, the source, and the tallies."""

    def __init__(
        self,
        client: AgentClient,
        disk: str,
        source: Path,
        chunk_bytes: int,
        retries: int,
        window_bytes: int,
    ) -> None:
        problem = chunk_bytes_problem(chunk_bytes)
        if problem:
            raise ValueError(problem)
        self.client = client
        self.disk = disk
        self.source = source
        self.chunk_bytes = chunk_bytes
        self.window_bytes = max(window_bytes, chunk_bytes)
        self.retries = RetryBudget(retries, disk, client.base_url)
        self.started = time.monotonic()
        self.size = 0
        self.source_time_ns = 0
        self.sector = 512
        self.compared = 0
        self.differing_chunks = 0
        self.differing_bytes = 0

    async def _open(self, sizes: dict[str, int]) -> Disk:
        """The agent's Disk, once the source is measured and known to fit it."""
        info = await self.retries.call(self.client.info)
        disk = await self.retries.call(lambda: self.client.disk(self.disk))
        try:
            self.size = await asyncio.to_thread(image_bytes, self.source)
            self.source_time_ns = (await asyncio.to_thread(os.stat, self.source)).st_mtime_ns
        except OSError as exc:
            raise PushFailed(
                f"disk {self.disk}: cannot read {exc.filename or self.source}: {exc.strerror}",
                disk=self.disk,
            ) from exc
        self.sector = disk.sector_bytes
        limits = {
            "frame size": ("max_frame_bytes", info.max_frame_bytes),
            "batch size": ("max_batch_bytes", info.max_batch_bytes),
        }
        problem = source_problem(
            self.source,
            self.size,
            disk_bytes=disk.size_bytes,
            sector=self.sector,
            sizes={name: (value, *limits[name]) for name, value in sizes.items()},
        )
        if problem:
            raise PushFailed(f"disk {self.disk}: {problem}", disk=self.disk)
        return disk

    def _resume_offset(self, disk: Disk) -> int:
        """Where a resync of `disk` starts comparing: its resync_offset when it is resyncing
        from this source, else 0."""
        if disk.state != DiskState.RESYNCING:
            return 0
        if disk.last_source_time_ns != self.source_time_ns:
            return 0  # the source changed since: what the target holds proves nothing
        offset = min(disk.resync_offset, self.size)
        return offset - offset % self.chunk_bytes

    async def _compared_windows(self, start: int) -> AsyncIterator[tuple[range, list[int]]]:
        """Each window of the source from `start` with the offsets of its chunks that differ
        on the target, in order, as both sides' digests come in."""
        target = _TargetDigests(self.client, self.disk, self.size, self.chunk_bytes, self.retries)
        source = _SourceDigests(
            self.source, start, self.size, self.chunk_bytes, self.window_bytes, self.disk
        )
        chunk = self.chunk_bytes
        try:
            if start < self.size:
                target.begin(start)
            async with contextlib.aclosing(source.windows()) as source_windows:
                async for window, mine in source_windows:
                    theirs = await target.take(window.start, len(mine) // DIGEST_BYTES)
                    self.retries.succeeded()
                    differing: list[int] = []
                    if theirs != mine:
                        differing = [
                            window.start + at // DIGEST_BYTES * chunk
                            for at in range(0, len(mine), DIGEST_BYTES)
                            if mine[at : at + DIGEST_BYTES] != theirs[at : at + DIGEST_BYTES]
                        ]
                    for offset in differing:
                        self.differing_chunks += 1
                        self.differing_bytes += min(chunk, self.size - offset)
                    self.compared = window.stop - start
                    yield window, differing
        finally:
            await target.close()

    async def verify(self, *, progress: Callable[[CompareProgress], None] | None) -> VerifyResult:
        await self._open({})
        ranges: list[tuple[int, int]] = []
        truncated = False
        async with contextlib.aclosing(self._compared_windows(0)) as compared:
            async for window, differing in compared:
                for offset in differing:
                    length = min(self.chunk_bytes, self.size - offset)
                    if ranges and sum(ranges[-1]) == offset:
                        ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
                    elif len(ranges) < MAX_REPORTED_RANGES:
                        ranges.append((offset, length))
                    else:
                        truncated = True
                if progress is not None:
                    progress(CompareProgress(window.stop, self.size, 0))
        if progress is not None:
            progress(CompareProgress(self.size, self.size, 0))
        return VerifyResult(
            disk=self.disk,
            chunk_bytes=self.chunk_bytes,
            compared_bytes=self.compared,
            differing_chunks=self.differing_chunks,
            differing_bytes=self.differing_bytes,
            ranges=tuple(ranges),
            ranges_truncated=truncated,
            seconds=time.monotonic() - self.started,
            retries=self.retries.total,
        )

    async def resync(
        self,
        *,
        frame_bytes: int,
        batch_bytes: int,
        compress: bool,
        progress: Callable[[CompareProgress], None] | None,
        checkpoint_seconds: float,
    ) -> ResyncResult:
        disk = await self._open({"frame size": frame_bytes, "batch size": batch_bytes})
        start = self._resume_offset(disk)
        first_seq = disk.last_seq + 1
        sender = _BatchSender(self, frame_bytes=frame_bytes, compress=compress)
        planner = _Planner(
            first_seq=first_seq,
            start=start,
            batch_bytes=batch_bytes,
            sector=self.sector,
            checkpoint_seconds=checkpoint_seconds,
        )
        plans: asyncio.Queue[_Plan | None] = asyncio.Queue(2)

        async def plan() -> None:
            async with contextlib.aclosing(self._compared_windows(start)) as compared:
                async for window, differing in compared:
                    # The batch reads them later; the comparison read them past the page cache.
                    ahead.prefetch((offset, self.chunk_bytes) for offset in differing)
                    for offset in differing:
                        closed = planner.add(offset, min(self.chunk_bytes, self.size - offset))
                        if closed is not None:
                            await plans.put(closed)
                    checkpoint = planner.compared(window.stop)
                    if checkpoint is not None:
                        await plans.put(checkpoint)
                    if progress is not None:
                        progress(CompareProgress(window.stop, self.size, sender.disk_bytes))
            await plans.put(planner.finish())
            await plans.put(None)

        async def send() -> None:
            while (next_plan := await plans.get()) is not None:
                await sender.send(next_plan)

        with ChunkReader.open(self.source, window_bytes=mmap.PAGESIZE) as ahead:
            await _together(plan(), send())
        if progress is not None:
            progress(CompareProgress(self.size, self.size, sender.disk_bytes))
        return ResyncResult(
            disk=self.disk,
            mode="resync",
            chunk_bytes=self.chunk_bytes,
            start_offset=start,
            compared_bytes=self.compared,
            differing_chunks=self.differing_chunks,
            differing_bytes=self.differing_bytes,
            batches=sender.acked - first_seq + 1,
            first_seq=first_seq,
            last_seq=sender.acked,
            data_bytes=sender.data_bytes,
            zero_bytes=sender.zero_bytes,
            wire_bytes=sender.wire_bytes,
            seconds=time.monotonic() - self.started,
            retries=self.retries.total,
        )


class _SourceDigests:
    """The source's digests, window by window, read ahead of use by SCAN_READERS readers."""

    def __init__(
        self, source: Path, start: int, end: int, chunk_bytes: int, window_bytes: int, disk: str
    ) -> None:
        self._source = source
        self._start = start
        self._end = end
        self._chunk_bytes = chunk_bytes
        self._window_bytes = window_bytes
        self._disk = disk

    async def windows(self) -> AsyncIterator[tuple[range, bytes]]:
        readers: WindowReaders | None = None
        ahead: deque[tuple[range, asyncio.Future[bytes]]] = deque()
        try:
            readers = await asyncio.to_thread(
                WindowReaders.open,
                self._source,
                window_bytes=self._window_bytes,
                count=SCAN_READERS,
                direct=True,
                name=f"source-{self._disk}",
            )
            todo = windows(
                self._start, self._end - self._start, self._chunk_bytes, self._window_bytes
            )

            def read_ahead() -> None:
                assert readers is not None
                while len(ahead) < _READ_AHEAD_WINDOWS:
                    window = next(todo, None)
                    if window is None:
                        return
                    digests = readers.digests(window, self._chunk_bytes)
                    ahead.append((window, asyncio.wrap_future(digests)))

            read_ahead()
            while ahead:
                window, digests = ahead.popleft()
                mine = await digests
                read_ahead()
                yield window, mine
        except (OSError, ImageChanged) as exc:
            raise _source_failed(self._disk, self._source, exc) from exc
        finally:
            for _, digests in ahead:
                digests.cancel()
            if readers is not None:
                readers.close()


@dataclass(frozen=True, slots=True)
class _Plan:
    """A batch whose content is decided: the differing chunks as coalesced runs
    `(offset, length)`, and a checkpoint sector `(offset, length)` to send after them."""

    seq: int
    runs: tuple[tuple[int, int], ...]
    checkpoint: tuple[int, int] | None
    done: bool


@dataclass
class _Planner:
    """Cuts the differing chunks, in order, into plans of batches (see the module doc)."""

    first_seq: int
    start: int
    batch_bytes: int
    sector: int
    checkpoint_seconds: float
    clock: Callable[[], float] = time.monotonic
    _seq: int = field(init=False)
    _runs: list[tuple[int, int]] = field(init=False, default_factory=list)
    _bytes: int = field(init=False, default=0)
    _recorded: int = field(init=False)
    _cut_at: float = field(init=False)

    def __post_init__(self) -> None:
        self._seq = self.first_seq
        self._recorded = self.start  # where the agent's resync_offset will be
        self._cut_at = self.clock()

    def add(self, offset: int, length: int) -> _Plan | None:
        """A differing chunk; returns the plan it closes, if it does not fit the open one."""
        closed = None
        if self._runs and self._bytes + length > self.batch_bytes:
            closed = self._close(None, done=False)
        if self._runs and sum(self._runs[-1]) == offset:
            self._runs[-1] = (self._runs[-1][0], self._runs[-1][1] + length)
        else:
            self._runs.append((offset, length))
        self._bytes += length
        return closed

    def compared(self, frontier: int) -> _Plan | None:
        """The comparison reached `frontier`; returns a checkpoint plan if one is due."""
        if self.clock() - self._cut_at < self.checkpoint_seconds or frontier <= self._recorded:
            return None
        end = sum(self._runs[-1]) if self._runs else 0
        checkpoint = None
        if end < frontier and self._bytes + self.sector <= self.batch_bytes:
            checkpoint = (frontier - self.sector, self.sector)
        return self._close(checkpoint, done=False)

    def finish(self) -> _Plan:
        """The last plan: what is left, flagged `resync_done` (maybe without frames)."""
        return self._close(None, done=True)

    def _close(self, checkpoint: tuple[int, int] | None, *, done: bool) -> _Plan:
        plan = _Plan(self._seq, tuple(self._runs), checkpoint, done)
        ends = [sum(extent) for extent in (*self._runs, *([checkpoint] if checkpoint else []))]
        self._recorded = max([self._recorded, *ends])
        self._seq += 1
        self._runs, self._bytes = [], 0
        self._cut_at = self.clock()
        return plan


@dataclass
class _BodyTally:
    """What one attempt at a batch body held, complete once its END was produced."""

    data_bytes: int = 0
    zero_bytes: int = 0
    complete: bool = False


class _BatchSender:
    """Sends plans as batches, in order, retrying; counts what the agent acknowledged."""

    def __init__(self, comparison: _Comparison, *, frame_bytes: int, compress: bool) -> None:
        self.comparison = comparison
        self.client = comparison.client
        self.disk = comparison.disk
        self.frame_bytes = frame_bytes
        self.compress = compress
        self.acked = 0
        self.data_bytes = 0
        self.zero_bytes = 0
        self.wire_bytes = 0

    @property
    def disk_bytes(self) -> int:
        return self.data_bytes + self.zero_bytes

    async def send(self, plan: _Plan) -> None:
        """Send `plan` until the agent has it. Raises BatchRefused, PushFailed."""
        retries = self.comparison.retries
        while True:
            tally = _BodyTally()
            failure: list[BaseException] = []
            body = self._body(plan, tally, failure)
            try:
                await self.client.put_batch(self.disk, plan.seq, body)
                self._acknowledged(plan, tally)
                retries.succeeded()
                return
            except SequenceGap as exc:
                expected = exc.details.get("expected_seq")
                if not isinstance(expected, int) or expected <= plan.seq:
                    raise BatchRefused(self.disk, plan.seq, exc) from exc
                # The batch is there already: its answer was lost.
                self._acknowledged(plan, tally)
                return
            except ProtocolError as exc:
                if not is_transient(exc):
                    raise BatchRefused(self.disk, plan.seq, exc) from exc
                await retries.back_off(exc)
            except Exception as exc:
                if failure:
                    raise failure[0] from None
                if not isinstance(exc, TRANSPORT_ERRORS):
                    raise
                await retries.back_off(exc)
            finally:
                await body.aclose()  # type: ignore[attr-defined]
            last_seq = (await retries.call(lambda: self.client.disk(self.disk))).last_seq
            if last_seq >= plan.seq:
                self._acknowledged(plan, tally)
                return

    def _acknowledged(self, plan: _Plan, tally: _BodyTally) -> None:
        if not tally.complete:
            # Only a body sent whole can have been committed; recount it from the source.
            tally = _BodyTally()
            for _ in self._frames(plan, tally):
                pass
        self.acked = plan.seq
        self.data_bytes += tally.data_bytes
        self.zero_bytes += tally.zero_bytes

    async def _body(
        self, plan: _Plan, tally: _BodyTally, failure: list[BaseException]
    ) -> AsyncIterator[bytes | memoryview]:
        """The request body of `plan`, encoded on a thread of its own a piece ahead."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"resync-{self.disk}")
        frames = self._frames(plan, tally)
        pending = loop.run_in_executor(executor, _next_piece, frames)
        try:
            while True:
                try:
                    piece = await pending
                except Exception as exc:
                    # send() raises this rather than what the client makes of it, and
                    # does not retry.
                    if isinstance(exc, OSError | ImageChanged):
                        exc = _source_failed(self.disk, self.comparison.source, exc)
                    failure.append(exc)
                    raise
                if not piece:
                    return
                pending = loop.run_in_executor(executor, _next_piece, frames)
                self.wire_bytes += len(piece)
                view = memoryview(piece)
                for at in range(0, len(piece), _SLICE_BYTES):
                    yield view[at : at + _SLICE_BYTES]
        finally:
            pending.cancel()
            # After the piece being encoded, if any: a generator runs on one thread at a time.
            executor.submit(frames.close)
            executor.shutdown(wait=False)

    def _frames(self, plan: _Plan, tally: _BodyTally) -> Iterator[bytes]:
        """The frames of `plan`'s batch, reading the chunks from the source."""
        comparison = self.comparison
        chunk = comparison.chunk_bytes
        # A read holds whole chunks, a frame's worth when frames are larger than chunks.
        step = max(chunk, self.frame_bytes - self.frame_bytes % chunk)
        flags = {BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE} if plan.done else {BEGIN_FLAG_RESYNC}
        encoder = BatchEncoder(plan.seq, compress=self.compress)
        yield encoder.encode(
            Begin(self.disk, plan.seq, comparison.source_time_ns, frozenset(flags))
        )
        zeros = bytes(step)
        extents = [*plan.runs, *([plan.checkpoint] if plan.checkpoint else [])]
        with ChunkReader.open(comparison.source, window_bytes=_page_multiple(step)) as reader:
            reader.prefetch(extents)  # in case the comparison's prefetch was dropped since
            for run_offset, run_length in extents:
                zero_start: int | None = None
                end = run_offset + run_length
                for piece in range(run_offset, end, step):
                    data = reader.read(piece, min(step, end - piece))
                    data_start: int | None = None
                    for at in range(0, len(data), chunk):
                        size = min(chunk, len(data) - at)
                        is_zero = zeros.startswith(data[at : at + size])
                        if is_zero and zero_start is None:
                            zero_start = piece + at
                        if not is_zero and zero_start is not None:
                            yield from _zero_frames(encoder, zero_start, piece + at, tally)
                            zero_start = None
                        if not is_zero and data_start is None:
                            data_start = at
                        if is_zero and data_start is not None:
                            yield from self._data_frames(
                                encoder, piece, data, data_start, at, tally
                            )
                            data_start = None
                    if data_start is not None:
                        yield from self._data_frames(
                            encoder, piece, data, data_start, len(data), tally
                        )
                if zero_start is not None:
                    yield from _zero_frames(encoder, zero_start, end, tally)
        end = encoder.end()
        # Complete before the yield: once the agent has END it may answer, and the client
        # then stops asking the body for more.
        tally.complete = True
        yield end

    def _data_frames(
        self,
        encoder: BatchEncoder,
        piece: int,
        data: memoryview,
        start: int,
        stop: int,
        tally: _BodyTally,
    ) -> Iterator[bytes]:
        for at in range(start, stop, self.frame_bytes):
            cut = min(stop, at + self.frame_bytes)
            yield encoder.encode(Data(piece + at, data[at:cut]))
            tally.data_bytes += cut - at


def _zero_frames(encoder: BatchEncoder, start: int, end: int, tally: _BodyTally) -> Iterator[bytes]:
    for at in range(start, end, MAX_ZERO_FRAME_BYTES):
        length = min(end, at + MAX_ZERO_FRAME_BYTES) - at
        yield encoder.encode(Zero(at, length))
        tally.zero_bytes += length


def _source_failed(disk: str, source: Path, exc: OSError | ImageChanged) -> PushFailed:
    if isinstance(exc, ImageChanged):
        return PushFailed(f"disk {disk}: reading the source failed: {exc}", disk=disk)
    where = exc.filename or source
    return PushFailed(
        f"disk {disk}: reading the source failed: {where}: {exc.strerror or exc}", disk=disk
    )


def _next_piece(frames: Iterator[bytes]) -> bytes:
    """The next frames, joined up to about _BODY_PIECE_BYTES; b"" once there are no more."""
    parts: list[bytes] = []
    size = 0
    for frame in frames:
        parts.append(frame)
        size += len(frame)
        if size >= _BODY_PIECE_BYTES:
            break
    return b"".join(parts)


def _page_multiple(size: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return -(-size // page) * page


async def _together(*jobs: Awaitable[None]) -> None:
    """Run `jobs` at once until all are done; the first failure stops the others and is
    raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
