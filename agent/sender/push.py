"""`push_image`: the sender's job of sending a source image to an agent as numbered batches.

It sends all of the image, or what differs from a base image, retrying and resuming
after failures. Images are read through `blockio.scan.source_image`, frames made by
`protocol.batching` and the encoder, and sent with `protocol.client.AgentClient`.

Pipelining: frames are produced in a worker thread (read, zero check, LZ4, XXH3; the
C parts release the GIL) and handed to the event loop through a bounded queue, so the
loop mostly does TLS. Each batch is streamed as a chunked request body: memory stays
bounded whatever the batch size.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from blockio.scan.source_image import BLOCK_BYTES, delta_extents, full_extents, image_bytes
from protocol.batching import batch_events
from protocol.client import AgentClient, TlsRefused, TransportError
from protocol.documents import Disk, Info
from protocol.encoder import BatchEncoder
from protocol.errors import ProtocolError, SequenceGap, Stalled, TargetUnavailable
from protocol.events import Begin, Data, End, Tag, Zero

T = TypeVar("T")

MODES = ("full", "delta")

RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 10.0

# Frames smaller than this are joined into one chunk of the request body: each chunk
# costs a TLS record and a chunked-encoding header, a 40-byte ZERO frame alone would
# be mostly overhead.
_CHUNK_BYTES = 64 * 1024
# Bytes of frames that may wait between the producer thread and the event loop.
_PIPE_BYTES = 16 * 1024 * 1024
# A delta sends nothing for unchanged stretches; the producer tells how far it has compared
# every this many bytes, so that progress moves over them too.
_SCAN_REPORT_BYTES = 8 * 1024 * 1024
# Large frames go to the client in slices of this size. Each slice is copied (chunked
# framing), encrypted and copied again (TLS) before the socket takes it; slices that
# stay in the CPU cache through those steps made the event loop ~30% faster than
# whole 1 MiB frames on the benchmark machine.
_SLICE_BYTES = 64 * 1024


class PushFailed(Exception):
    """A push stopped before its end. The message is one line naming the disk."""

    def __init__(self, message: str, *, disk: str) -> None:
        super().__init__(message)
        self.disk = disk


class BatchRefused(PushFailed):
    """The agent refused batch `seq` with `error`, an error that retrying cannot fix."""

    def __init__(self, disk: str, seq: int, error: ProtocolError) -> None:
        super().__init__(f"batch {seq} of disk {disk} refused: {error}", disk=disk)
        self.seq = seq
        self.error = error


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did. Byte counts are of acknowledged batches, except `wire_bytes`:
    every byte of request bodies sent, failed attempts included.

    `first_seq` is the first sequence number this push used; `last_seq` the last one
    acknowledged (`first_seq - 1` when nothing was sent).
    """

    disk: str
    mode: str
    batches: int
    first_seq: int
    last_seq: int
    disk_bytes: int
    data_bytes: int
    zero_bytes: int
    wire_bytes: int
    seconds: float
    retries: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def push_image(
    client: AgentClient,
    disk_id: str,
    source: Path,
    *,
    mode: str,
    base: Path | None,
    frame_bytes: int,
    batch_bytes: int,
    compress: bool,
    tag: Tag | None,
    retries: int,
    progress: Callable[[int, int], None] | None,
) -> PushResult:
    """Send `source` to disk `disk_id` of the agent, as batches numbered from its last_seq + 1.

    `mode="full"`: every byte, in batches flagged `resync` (the last one `resync_done`);
    `mode="delta"`: only the 64 KiB blocks that differ from `base`, in unflagged batches.
    A delta with nothing to send sends nothing, unless there is a `tag`: then one batch
    carrying only the tag. `tag` goes at the end of the last batch.

    The source must fit the disk and be a whole number of its sectors, and the frame and
    batch sizes must be multiples of the sector size within the agent's limits: checked
    before anything is sent. On a disconnect, a timeout, a 5xx answer or
    TARGET_UNAVAILABLE, the push waits (0.5 s, doubling up to 10 s), asks the agent for
    its last_seq and goes on after it: acknowledged batches are never sent again, and a
    batch sent again has the content it had. `retries` bounds the failures in a row
    (any acknowledged batch starts the count again).

    `progress(done, total)` is called on the event loop as the body is sent: how far
    into the source the push is, in bytes, of the source's size.

    Raises BatchRefused for an error answer retrying cannot fix, PushFailed for a source
    that does not fit, a source that cannot be read, or when retries run out; ValueError
    for a bad mode or missing base.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "delta" and base is None:
        raise ValueError("a delta push needs a base image")
    push = _Push(
        client=client,
        disk=disk_id,
        source=source,
        mode=mode,
        base=base,
        frame_bytes=frame_bytes,
        batch_bytes=batch_bytes,
        compress=compress,
        tag=tag,
        retries=retries,
        progress=progress,
    )
    return await push.run()


# Items from the producer thread to the event loop. Chunks of body bytes are plain
# tuples `(bytes, position, closed)`: `position` is the end of the last frame in them,
# `closed` a _Closed on the batch's last chunk (the one with END), else None.
@dataclass(frozen=True, slots=True)
class _Opened:
    """A batch begins; its extents begin at `offset` (resuming it starts reading there)."""

    seq: int
    offset: int


@dataclass(frozen=True, slots=True)
class _Closed:
    """What the batch holds, known once its END has been produced."""

    seq: int
    data_bytes: int
    zero_bytes: int


@dataclass(frozen=True, slots=True)
class _Scanned:
    """A delta's comparison has got to `position` (progress over unchanged stretches)."""

    position: int


@dataclass(frozen=True, slots=True)
class _Failed:
    """The producer failed: reading the source, most likely."""

    error: BaseException


_FINISHED = object()

# Failures of the connection rather than answers of the agent.
TRANSPORT_ERRORS = (TransportError, TimeoutError, ConnectionError)


class _Stopped(Exception):
    """The consumer closed the pipe: the producer stops."""


class _FramePipe:
    """A bounded queue from one producer thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        self._loop = loop
        self._items: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def put(self, item: object) -> None:
        """Producer side: blocks while the queue is full. Raises _Stopped once closed."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._items.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> object:
        """Event-loop side: the next item. A _Failed is returned like any other item, and
        kept in `failure` for whoever finds the body broken."""
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                # A put that lands after the check schedules _wake after this await.
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            if isinstance(item, _Failed):
                self.failure = item.error
            return item

    def close(self) -> None:
        self._stop.set()


class _Push:
    """One run of `push_image`: its settings, where the agent is, and what was sent."""

    def __init__(
        self,
        *,
        client: AgentClient,
        disk: str,
        source: Path,
        mode: str,
        base: Path | None,
        frame_bytes: int,
        batch_bytes: int,
        compress: bool,
        tag: Tag | None,
        retries: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.client = client
        self.disk = disk
        self.source = source
        self.mode = mode
        self.base = base
        self.frame_bytes = frame_bytes
        self.batch_bytes = batch_bytes
        self.compress = compress
        self.tag = tag
        self.budget = RetryBudget(retries, disk, client.base_url)
        self.progress = progress
        self.size = 0
        self.source_time_ns = 0
        self.acked = 0
        self.data_bytes = 0
        self.zero_bytes = 0
        self.wire_bytes = 0
        self._failed_seq = 0  # the batch being sent, named if it fails
        # Batches sent whole whose answer never came: durable or not, last_seq will tell.
        self._unanswered: dict[int, _Closed] = {}

    async def run(self) -> PushResult:
        started = time.monotonic()
        info = await self.budget.call(self.client.info)
        disk = await self.budget.call(lambda: self.client.disk(self.disk))
        await asyncio.to_thread(self._measure_source)
        self._check_fits(info, disk)
        self.acked = disk.last_seq
        first_seq = self.acked + 1
        # Where the extents of each batch begin: resuming batch s reads from starts[s].
        starts = {first_seq: 0}
        while True:
            if self.acked < first_seq - 1:
                raise PushFailed(
                    f"disk {self.disk}: the agent's last_seq went back to {self.acked} during "
                    f"this push (it started at {first_seq - 1}); its state was lost",
                    disk=self.disk,
                )
            resume = max(seq for seq in starts if seq <= self.acked + 1)
            try:
                await self._send_from(resume, starts[resume], starts)
                break
            except SequenceGap as exc:
                expected = exc.details.get("expected_seq")
                seq = self._failed_seq
                if not isinstance(expected, int) or expected <= seq:
                    raise BatchRefused(self.disk, seq, exc) from exc
                # Our batch is already there (its answer was lost): go on after it.
                self.budget.count(exc)
                self._learn_acked(expected - 1)
            except ProtocolError as exc:
                if not is_transient(exc):
                    raise BatchRefused(self.disk, self._failed_seq, exc) from exc
                await self.budget.back_off(exc)
                self._learn_acked(await self._last_seq())
            except TRANSPORT_ERRORS as exc:
                await self.budget.back_off(exc)
                self._learn_acked(await self._last_seq())
        if self.progress is not None:
            self.progress(self.size, self.size)
        return PushResult(
            disk=self.disk,
            mode=self.mode,
            batches=self.acked - first_seq + 1,
            first_seq=first_seq,
            last_seq=self.acked,
            disk_bytes=self.data_bytes + self.zero_bytes,
            data_bytes=self.data_bytes,
            zero_bytes=self.zero_bytes,
            wire_bytes=self.wire_bytes,
            seconds=time.monotonic() - started,
            retries=self.budget.total,
        )

    def _measure_source(self) -> None:
        try:
            self.size = image_bytes(self.source)
            self.source_time_ns = os.stat(self.source).st_mtime_ns
            if self.base is not None:
                image_bytes(self.base)
        except OSError as exc:
            raise PushFailed(
                f"disk {self.disk}: cannot read {exc.filename or self.source}: {exc.strerror}",
                disk=self.disk,
            ) from exc

    def _check_fits(self, info: Info, disk: Disk) -> None:
        problem = source_problem(
            self.source,
            self.size,
            disk_bytes=disk.size_bytes,
            sector=disk.sector_bytes,
            sizes={
                "frame size": (self.frame_bytes, "max_frame_bytes", info.max_frame_bytes),
                "batch size": (self.batch_bytes, "max_batch_bytes", info.max_batch_bytes),
            },
        )
        if problem:
            raise PushFailed(f"disk {self.disk}: {problem}", disk=self.disk)

    async def _send_from(self, first_seq: int, offset: int, starts: dict[int, int]) -> None:
        """Send the batches from `first_seq` (whose extents begin at `offset`) to the end,
        skipping those the agent already acknowledged."""
        loop = asyncio.get_running_loop()
        depth = max(4, min(64, _PIPE_BYTES // max(self.frame_bytes, _CHUNK_BYTES)))
        pipe = _FramePipe(loop, depth)
        producer = threading.Thread(
            target=self._produce,
            args=(pipe, first_seq, offset, self.acked),
            name=f"push-{self.disk}",
            daemon=True,
        )
        self._failed_seq = first_seq
        producer.start()
        try:
            while True:
                item = await pipe.get()
                if item is _FINISHED:
                    return
                if isinstance(item, _Failed):
                    raise self._source_failed(item.error)
                if isinstance(item, _Scanned):
                    self._report(item.position)
                    continue
                assert isinstance(item, _Opened), item
                starts[item.seq] = item.offset
                self._failed_seq = item.seq
                closed: list[_Closed] = []
                try:
                    await self.client.put_batch(self.disk, item.seq, self._body(pipe, closed))
                except Exception:
                    if pipe.failure is not None:
                        raise self._source_failed(pipe.failure) from None
                    if closed:
                        self._unanswered[item.seq] = closed[0]
                    raise
                self.acked = item.seq
                self.budget.succeeded()
                self._count(closed[0])
        finally:
            pipe.close()
            await asyncio.to_thread(producer.join)

    async def _body(
        self, pipe: _FramePipe, closed: list[_Closed]
    ) -> AsyncIterator[bytes | memoryview]:
        """The request body of the batch just opened: its chunks up to its END."""
        while True:
            item = await pipe.get()
            if type(item) is tuple:
                chunk, position, end = item
                self.wire_bytes += len(chunk)
                self._report(position)
                if end is not None:
                    # Noted before the yield: once the agent has END it may answer, and
                    # the client then stops asking this generator for more.
                    closed.append(end)
                if len(chunk) > _SLICE_BYTES:
                    view = memoryview(chunk)
                    for at in range(0, len(chunk), _SLICE_BYTES):
                        yield view[at : at + _SLICE_BYTES]
                else:
                    yield chunk
                if end is not None:
                    return
            elif isinstance(item, _Scanned):
                self._report(item.position)
            elif isinstance(item, _Failed):
                # put_batch sees a broken body; _send_from reports the real cause.
                raise RuntimeError("the source could not be read")
            else:
                raise AssertionError(f"unexpected {item!r} inside a batch")

    def _report(self, position: int) -> None:
        if self.progress is not None:
            self.progress(position, self.size)

    def _learn_acked(self, last_seq: int) -> None:
        """The agent's last_seq, learnt after a failure: batches sent whole up to it are
        durable although their answer was lost."""
        self.acked = last_seq
        for seq in sorted(self._unanswered):
            closed = self._unanswered.pop(seq)
            if seq <= last_seq:
                self._count(closed)

    def _count(self, closed: _Closed) -> None:
        self.data_bytes += closed.data_bytes
        self.zero_bytes += closed.zero_bytes

    def _source_failed(self, error: BaseException) -> PushFailed:
        if isinstance(error, OSError):
            what = f"{error.filename or self.source}: {error.strerror or error}"
        else:
            what = str(error)
        failed = PushFailed(f"disk {self.disk}: reading the source failed: {what}", disk=self.disk)
        failed.__cause__ = error
        return failed

    def _extents(self, offset: int, pipe: _FramePipe) -> Iterator[Any]:
        if self.mode == "full":
            return full_extents(self.source, chunk_bytes=self.frame_bytes, start=offset)
        assert self.base is not None
        reported = offset

        def scanned(position: int) -> None:
            nonlocal reported
            if position - reported >= _SCAN_REPORT_BYTES:
                reported = position
                pipe.put(_Scanned(position))

        # Read whole 64 KiB blocks, at least a frame's worth at a time.
        chunk = math.ceil(self.frame_bytes / BLOCK_BYTES) * BLOCK_BYTES
        return delta_extents(
            self.source, self.base, chunk_bytes=chunk, start=offset, scanned=scanned
        )

    def _produce(self, pipe: _FramePipe, first_seq: int, offset: int, skip_through: int) -> None:
        """Worker thread: encode the batches from `first_seq` on and feed them to `pipe`."""
        try:
            self._produce_into(pipe, first_seq, offset, skip_through)
            pipe.put(_FINISHED)
        except _Stopped:
            return
        except BaseException as exc:
            try:
                pipe.put(_Failed(exc))
            except _Stopped:
                return

    def _produce_into(
        self, pipe: _FramePipe, first_seq: int, offset: int, skip_through: int
    ) -> None:
        events = batch_events(
            self._extents(offset, pipe),
            disk=self.disk,
            first_seq=first_seq,
            source_time_ns=self.source_time_ns,
            frame_bytes=self.frame_bytes,
            batch_bytes=self.batch_bytes,
            resync_end=self.size if self.mode == "full" else None,
            tag=self.tag,
        )
        encoder = BatchEncoder(first_seq, compress=self.compress)
        seq = first_seq
        skip = opened = False
        parts: list[bytes] = []
        parts_bytes = 0
        position = offset
        data_bytes = zero_bytes = 0
        for event in events:
            if isinstance(event, Begin):
                seq = event.seq
                # Acknowledged already: read through it without encoding or sending.
                skip = seq <= skip_through
                opened = False
                data_bytes = zero_bytes = 0
                encoder = BatchEncoder(seq, compress=self.compress)
                parts, parts_bytes = [encoder.encode(event)], 0
                continue
            if skip:
                continue
            if isinstance(event, Data | Zero):
                if not opened:
                    pipe.put(_Opened(seq, event.offset))
                    opened = True
                frame = encoder.encode(event)
                if isinstance(event, Data):
                    length = len(event.data)
                    data_bytes += length
                else:
                    length = event.length
                    zero_bytes += length
                position = event.offset + length
                if len(frame) >= _CHUNK_BYTES:
                    if parts:
                        pipe.put((b"".join(parts), event.offset, None))
                        parts, parts_bytes = [], 0
                    pipe.put((frame, position, None))
                else:
                    parts.append(frame)
                    parts_bytes += len(frame)
                    if parts_bytes >= _CHUNK_BYTES:
                        pipe.put((b"".join(parts), position, None))
                        parts, parts_bytes = [], 0
            elif isinstance(event, End):
                if not opened:
                    pipe.put(_Opened(seq, position))
                parts.append(encoder.encode(event))
                closed = _Closed(seq, data_bytes, zero_bytes)
                pipe.put((b"".join(parts), position, closed))
                parts, parts_bytes = [], 0
            else:
                parts.append(encoder.encode(event))

    async def _last_seq(self) -> int:
        disk = await self.budget.call(lambda: self.client.disk(self.disk))
        return disk.last_seq


class RetryBudget:
    """The failures in a row of one run, across all its requests; `limit` bounds them."""

    def __init__(self, limit: int, disk: str, base_url: str) -> None:
        self.limit = limit
        self.disk = disk
        self.base_url = base_url
        self.in_a_row = 0
        self.total = 0

    def succeeded(self) -> None:
        self.in_a_row = 0

    def count(self, exc: BaseException) -> None:
        """Count `exc` as a failure; PushFailed once the budget is spent."""
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row > self.limit:
            retries = f"{self.limit} retr{'y' if self.limit == 1 else 'ies'}"
            raise PushFailed(
                f"disk {self.disk}: gave up after {retries}: {describe_failure(exc)}",
                disk=self.disk,
            ) from exc

    async def back_off(self, exc: BaseException) -> None:
        """Count `exc` and wait before trying again; PushFailed if retrying is pointless
        (a TLS failure) or the budget is spent."""
        if isinstance(exc, TlsRefused):
            # A certificate the other side refuses stays refused.
            raise PushFailed(
                f"disk {self.disk}: TLS with {self.base_url} failed: {exc}", disk=self.disk
            ) from exc
        self.count(exc)
        await asyncio.sleep(min(RETRY_FIRST_DELAY * 2 ** (self.in_a_row - 1), RETRY_MAX_DELAY))

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """`request()`, again after transient failures. PushFailed for any other error."""
        while True:
            try:
                result = await request()
            except ProtocolError as exc:
                if not is_transient(exc):
                    raise PushFailed(f"disk {self.disk}: {exc}", disk=self.disk) from exc
                await self.back_off(exc)
            except TRANSPORT_ERRORS as exc:
                await self.back_off(exc)
            else:
                return result


def source_problem(
    source: Path,
    size: int,
    *,
    disk_bytes: int,
    sector: int,
    sizes: dict[str, tuple[int, str, int | None]],
) -> str | None:
    """Why a source of `size` bytes, sent in the given frame and batch sizes, cannot go to
    a disk of `disk_bytes` with `sector`-byte sectors; None if it can."""
    if size > disk_bytes:
        return f"source {source} is {size} bytes, larger than the disk ({disk_bytes} bytes)"
    if size % sector:
        return (
            f"source {source} is {size} bytes, not a multiple of the disk's {sector}-byte sectors"
        )
    for name, (value, key, limit) in sizes.items():
        if value <= 0 or value % sector:
            return f"{name} {value} is not a multiple of the disk's {sector}-byte sectors"
        if limit is not None and value > limit:
            return f"{name} {value} exceeds the agent's {key} of {limit}"
    return None


def is_transient(exc: ProtocolError) -> bool:
    """Whether an error answer may go away when the request is made again later."""
    # STALLED: the agent cut a batch off because this sender paused too long; sending it
    # again is the cure. 5xx covers TARGET_UNAVAILABLE (503) and RETENTION_FULL (507).
    return exc.status >= 500 or isinstance(exc, TargetUnavailable | Stalled)


def describe_failure(exc: BaseException) -> str:
    """One line for a person: the error's own text, with its type unless it has a code."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ProtocolError):
        return text
    return f"{type(exc).__name__}: {text}"
