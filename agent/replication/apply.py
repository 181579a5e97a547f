"""Applying one batch: protocol events joined to the undo-first batch writer.

Data flows one way: body chunks -> decoder (verifies) -> groups of writes ->
the disk's I/O thread (undo durable, then target) -> fdatasync -> commit.
The caller answers 200 only after `apply_batch` returns; any exception it
raises has already been rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Protocol, TypeVar

import xxhash

from agent.config import MAX_FRAME_BYTES_LIMIT, WRITE_GROUP_BYTES
from agent.log_fields import log_fields
from agent.metrics import ROLLBACK_FAILED, AgentMetrics
from agent.replication.memory_budget import MemoryBudget
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate, commit_record
from agent.replication.state import BatchCommit, StateStore
from blockio.batch_writer import BatchWriter, Write
from blockio.disks.target import TargetError
from blockio.journal.rollback import UndoLost
from blockio.journal.segments import JournalIOError
from protocol.decoder import BatchDecoder
from protocol.documents import BatchResult, DiskState
from protocol.errors import (
    BatchTimeout,
    ChecksumMismatch,
    ProtocolError,
    ResyncRequired,
    RetentionFull,
    SequenceConflict,
    SequenceGap,
    Stalled,
    TargetUnavailable,
    Truncated,
    WrongGroup,
)
from protocol.events import Begin, Data, End, Tag, Zero
from protocol.wire import BEGIN_FLAG_RESYNC

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_CHUNK = 256 << 10


class BodyReader(Protocol):
    """Where batch bytes come from (aiohttp's `request.content` in the server)."""

    async def read(self, n: int = -1) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ApplyLimits:
    """Bounds of one batch (docs/protocol.md section 4.5). `batch_timeout_seconds`: the most
    time from when a batch takes its disk until its body has been read whole (None: no limit)."""

    max_frame_bytes: int
    max_batch_bytes: int
    stall_timeout_seconds: float
    batch_timeout_seconds: float | None = None
    group_bytes: int = WRITE_GROUP_BYTES


async def apply_batch(
    replica: Replica,
    store: StateStore,
    seq: int,
    body: BodyReader,
    limits: ApplyLimits,
    metrics: AgentMetrics,
    gate: RetentionGate | None = None,
    budget: MemoryBudget | None = None,
) -> BatchResult:
    """Apply batch `seq` of `replica` from `body`, durably, or not at all.

    On return the batch is on stable storage (target, undo, state) and
    committed. Raises a ProtocolError subclass after rolling the batch back.
    `gate`: the retention policy's admission (507 RETENTION_FULL while paused).
    `budget`: the memory all batches share; this one waits for its slots.
    """
    started = time.monotonic()
    try:
        replica.refuse_if_failed_over()  # at once, not after the failover lets go of the lock
        async with replica.lock:
            replica.refuse_if_failed_over()
            # The batch's own time starts when it holds its disk: from here, a sender that
            # trickles its body keeps only this disk waiting, and only until the deadline.
            body = _Deadline(body, limits)
            await replica.ensure_open()
            last = replica.progress.last_seq
            if seq <= last:
                return await _replay(replica, store, seq, body, limits, metrics)
            if seq != last + 1:
                raise SequenceGap(
                    f"disk {replica.id} expects batch {last + 1}, got {seq}", expected_seq=last + 1
                )
            if gate is not None:
                gate.admit(replica.id)  # before anything is read or written
            application = _BatchApplication(replica, store, seq, limits, metrics, budget)
            result = await application.run(body)
    except ProtocolError as exc:
        metrics.rejected.labels(replica.id, exc.code).inc()
        if isinstance(exc, ChecksumMismatch):
            metrics.checksum_failures.labels(replica.id).inc()
        raise
    metrics.batches.labels(replica.id).inc()
    metrics.applied_bytes.labels(replica.id).inc(result.data_bytes)
    metrics.apply_seconds.labels(replica.id).observe(time.monotonic() - started)
    if gate is not None:
        gate.committed()
    return result


class _Deadline:
    """A batch body whose reads end with BatchTimeout at the batch's deadline, with Stalled
    when the sender is silent for the stall timeout, and with Truncated when the connection
    is lost."""

    def __init__(self, body: BodyReader, limits: ApplyLimits) -> None:
        self._body = body
        self._limits = limits
        loop = asyncio.get_running_loop()
        self._deadline = (
            None
            if limits.batch_timeout_seconds is None
            else loop.time() + limits.batch_timeout_seconds
        )

    async def read(self, n: int = -1) -> bytes:
        limits = self._limits
        stall_at = asyncio.get_running_loop().time() + limits.stall_timeout_seconds
        deadline = stall_at if self._deadline is None else min(stall_at, self._deadline)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._body.read(n)
        except TimeoutError:
            if deadline != stall_at:
                raise BatchTimeout(
                    f"the batch's body was not in after {limits.batch_timeout_seconds:g} s "
                    "(server.batch_timeout); batch rolled back"
                ) from None
            raise Stalled(
                f"no data from the sender for {limits.stall_timeout_seconds:g} s; batch rolled back"
            ) from None
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            raise Truncated(f"connection lost mid-batch: {exc}") from exc
        except Exception as exc:  # aiohttp reports a cut chunked body with its own payload errors
            if type(exc).__module__.startswith("aiohttp"):
                raise Truncated(f"connection lost mid-batch: {exc}") from exc
            raise


async def _read(body: BodyReader) -> bytes:
    """The next chunk of the body; b"" at its end."""
    return await body.read(READ_CHUNK)


def _decoder(replica: Replica, seq: int, limits: ApplyLimits) -> BatchDecoder:
    """The decoder of batch `seq` of `replica`'s open target, under `limits`."""
    target = replica.target
    assert target is not None
    return BatchDecoder(
        disk=replica.id,
        seq=seq,
        disk_bytes=target.size_bytes,
        sector_bytes=target.sector_bytes,
        max_frame_bytes=limits.max_frame_bytes,
        max_batch_bytes=limits.max_batch_bytes,
    )


def replay_limits(limits: ApplyLimits, data_bytes: int) -> ApplyLimits:
    """The limits a replay of an acknowledged batch of `data_bytes` (DATA and ZERO lengths) is
    decoded under (docs/protocol.md section 4.5): the current ones, widened to what that batch
    needed. None of its DATA frames can be longer than the batch, nor than any configuration
    allows, so a replay still holds at most one frame of a size the agent could have accepted."""
    return replace(
        limits,
        max_batch_bytes=max(limits.max_batch_bytes, data_bytes),
        max_frame_bytes=max(limits.max_frame_bytes, min(data_bytes, MAX_FRAME_BYTES_LIMIT)),
    )


async def _replay(
    replica: Replica,
    store: StateStore,
    seq: int,
    body: BodyReader,
    limits: ApplyLimits,
    metrics: AgentMetrics,
) -> BatchResult:
    """An acknowledged batch sent again: 200 if identical, SEQUENCE_CONFLICT if not."""
    expected = replica.progress.last_seq + 1
    known = await replica.run(store.batch_receipt, replica.id, seq)
    if known is None:
        raise SequenceGap(
            f"disk {replica.id} has no record of batch {seq}; expects {expected}",
            expected_seq=expected,
        )
    # Held to the rules and limits of a new batch (413 over them), so that a replay cannot
    # stream without bound; its frames are checked, and then dropped. The limits are widened to
    # the acknowledged batch's own size: an operator who lowered them since must not turn the
    # safe retry of a batch the agent already has into a 413 the sender takes for its own fault.
    decoder = _decoder(replica, seq, replay_limits(limits, known.data_bytes))
    digest = xxhash.xxh3_128()
    while chunk := await _read(body):
        metrics.received_bytes.labels(replica.id).inc(len(chunk))
        digest.update(chunk)
        for _ in decoder.events(chunk):  # checked one at a time, then dropped
            pass
    decoder.eof()
    if digest.digest() != known.digest:
        raise SequenceConflict(
            f"batch {seq} of disk {replica.id} was acknowledged with different content",
            expected_seq=expected,
        )
    return BatchResult(
        disk=replica.id,
        seq=seq,
        last_seq=replica.progress.last_seq,
        state=replica.state,
        frames=0,
        data_bytes=0,
        replayed=True,
    )


class _BatchApplication:
    """The state of one batch being applied (lives for one `apply_batch` call)."""

    def __init__(
        self,
        replica: Replica,
        store: StateStore,
        seq: int,
        limits: ApplyLimits,
        metrics: AgentMetrics,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.replica = replica
        self.store = store
        self.seq = seq
        self.limits = limits
        self.metrics = metrics
        self.decoder = _decoder(replica, seq, limits)
        self.digest = xxhash.xxh3_128()
        self.writer: BatchWriter | None = None
        self.begin: Begin | None = None
        self.tag: Tag | None = None
        self.end: End | None = None
        self.group: list[Write] = []
        self.group_bytes = 0
        self.extent_end = 0
        self.in_flight: asyncio.Future[None] | None = None
        self.budget = budget
        self.gathering = False  # holds a slot of the budget for the group being gathered
        self.frame = 0  # the index of the frame being handled (BEGIN is 0)

    async def run(self, body: BodyReader) -> BatchResult:
        try:
            while True:
                await self._gathering_slot()
                if not (chunk := await _read(body)):
                    break
                self.metrics.received_bytes.labels(self.replica.id).inc(len(chunk))
                self.digest.update(chunk)
                # One event at a time, each decoded only once the batch holds a slot: a
                # batch that waits for one holds no decompressed data, only its chunk.
                events = self.decoder.events(chunk)
                while True:
                    await self._gathering_slot()
                    if (event := next(events, None)) is None:
                        break
                    await self._handle(event)
                    self.frame += 1
                    del event  # its data is the group's now, freed once the group is written
            self.decoder.eof()
            await self._flush()
            await self._settle()
            return await self._commit()
        except BaseException as exc:
            await self._rollback(exc)
            raise _as_protocol_error(exc, self.replica.id) from exc
        finally:
            # Committed or rolled back: what it wrote is settled content now.
            self.replica.inflight.ended()
            if self.gathering and self.budget is not None:
                self.gathering = False
                self.budget.give()

    async def _handle(self, event: Begin | Data | Zero | Tag | End) -> None:
        match event:
            case Begin():
                if (
                    BEGIN_FLAG_RESYNC not in event.flags
                    and self.replica.progress.state != DiskState.OK
                ):
                    raise ResyncRequired(
                        f"disk {self.replica.id} is {self.replica.progress.state}: "
                        "only batches flagged resync are accepted until a resync completes",
                        frame=0,
                    )
                self.begin = event
                replica = self.replica
                try:
                    self.writer = await replica.run(
                        BatchWriter, replica.target, replica.journal, self.seq
                    )
                except JournalIOError as exc:
                    _reopen_if_torn(replica, exc)
                    raise
            case Data(offset=offset, data=data):
                await self._add(Write(offset, len(data), data))
            case Zero(offset=offset, length=length):
                # Cut to the group size: the undo of a write is its old data, read whole into
                # memory, and one ZERO frame may cover a gigabyte.
                step = self.limits.group_bytes
                for start in range(offset, offset + length, step):
                    await self._add(Write(start, min(step, offset + length - start), None))
            case Tag(group=group) if group != self.replica.config.group:
                # TAG stands just before END, after the batch's writes: the rollback of the
                # refused batch leaves the target, last_seq and the points as they were.
                raise WrongGroup(
                    f"disk {self.replica.id} is in group {self.replica.config.group!r}; "
                    f"a TAG for group {group!r} cannot mark a point of it",
                    frame=self.frame,
                    group=group,
                    expected=self.replica.config.group,
                )
            case Tag():
                self.tag = event
            case End():
                self.end = event

    async def _gathering_slot(self) -> None:
        """Hold a slot of the memory budget for the group being gathered, waiting for one if
        need be: before the body is read further, so that while this waits the connection is
        not read and TCP pushes back on the sender."""
        if self.budget is not None and not self.gathering:
            await self.budget.take()
            self.gathering = True

    async def _add(self, write: Write) -> None:
        # The slot went with a group flushed earlier in the same chunk's events.
        await self._gathering_slot()
        self.group.append(write)
        self.group_bytes += write.length
        self.extent_end = max(self.extent_end, write.offset + write.length)
        if self.group_bytes >= self.limits.group_bytes:
            await self._flush()

    async def _flush(self) -> None:
        """Hand the current group to the I/O thread; at most one group in flight."""
        if not self.group:
            return
        await self._settle()
        assert self.writer is not None
        group, self.group, self.group_bytes = self.group, [], 0
        # Told before the I/O thread can write: a reader without the lock must know.
        self.replica.inflight.writing((write.offset, write.length) for write in group)
        loop = asyncio.get_running_loop()
        self.in_flight = loop.run_in_executor(self.replica.executor, self.writer.write_group, group)
        if self.gathering and self.budget is not None:
            # The group's slot goes with it, back to the budget the moment it is written.
            self.gathering = False
            budget = self.budget
            self.in_flight.add_done_callback(lambda _: budget.give())

    async def _settle(self) -> None:
        if self.in_flight is not None:
            in_flight, self.in_flight = self.in_flight, None
            await in_flight

    async def _commit(self) -> BatchResult:
        assert self.writer is not None and self.begin is not None and self.end is not None
        replica, begin = self.replica, self.begin
        await replica.run(self.writer.finish)
        batch = BatchCommit(
            disk=replica.id,
            seq=self.seq,
            digest=self.digest.digest(),
            source_time_ns=begin.source_time_ns,
            committed_ns=time.time_ns(),
            flags=begin.flags,
            data_bytes=self.end.data_bytes,
            tag=None if self.tag is None else asdict(self.tag),
            extent_end=self.extent_end,
        )
        replica.progress = await replica.run(self.store.commit, batch, replica.progress)
        replica.log_state_change()
        # From here on the batch is acknowledged, whatever happens to its undo.
        writer, self.writer = self.writer, None
        try:
            await replica.run(
                partial(
                    writer.committed,
                    keep_undo=BEGIN_FLAG_RESYNC not in begin.flags,
                    commit=commit_record(batch),
                )
            )
        except (OSError, JournalIOError) as exc:
            log.error(
                "disk %s: batch %d committed, but its undo could not be settled: %s",
                replica.id,
                self.seq,
                exc,
                extra=log_fields(disk=replica.id),
            )
            _reopen_if_torn(replica, exc)
        return BatchResult(
            disk=replica.id,
            seq=self.seq,
            last_seq=replica.progress.last_seq,
            state=replica.state,
            frames=self.end.frames,
            data_bytes=self.end.data_bytes,
            replayed=False,
        )

    async def _rollback(self, failure: BaseException) -> None:
        """Undo whatever reached the target after `failure`; survives cancellation of the
        request. When the undo records cannot be read back, the disk needs a resync."""
        if self.in_flight is not None:
            await _uncancelled(_swallow(self.in_flight))
            self.in_flight = None
        writer, self.writer = self.writer, None
        if writer is None:
            return
        self.metrics.rollbacks.labels(self.replica.id).inc()
        try:
            undone = await _uncancelled(self.replica.run(writer.rollback))
            log.info(
                "disk %s: batch %d rolled back (%d undo records)",
                self.replica.id,
                self.seq,
                undone,
                extra=log_fields(disk=self.replica.id, seq=self.seq),
            )
        except UndoLost as lost:
            await _uncancelled(self._give_up(writer, lost, failure))
        except (OSError, TargetError, JournalIOError) as exc:
            # The undo records stay in the journal; reopening replays them.
            self.replica.mark_unavailable(f"rollback of batch {self.seq} failed: {exc}")

    async def _give_up(self, writer: BatchWriter, lost: UndoLost, failure: BaseException) -> None:
        """The batch cannot be rolled back: part of it may stay on the target, and no record
        tells which part. The disk is made `resync_required` first (durably), then the unusable
        records are dropped. Should either fail, the records stay for reopening to find."""
        replica = self.replica
        try:
            await replica.run(
                partial(
                    replica.require_resync,
                    ROLLBACK_FAILED,
                    f"{lost}; the batch had failed ({_one_line(failure)}), and the target may "
                    "hold part of it",
                )
            )
            await replica.run(writer.discard, lost)
        except (OSError, JournalIOError, sqlite3.Error) as exc:
            replica.mark_unavailable(f"batch {self.seq} could not be rolled back ({lost}): {exc}")


def _reopen_if_torn(replica: Replica, exc: BaseException) -> None:
    """A failed append that could not be cut off leaves the journal's end unknown to it: the
    disk is dropped, and its next batch reopens the journal, whose recovery cuts the torn tail."""
    if replica.journal is not None and replica.journal.needs_reopening:
        replica.mark_unavailable(f"undo journal left torn by a failed append: {exc}")


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _as_protocol_error(exc: BaseException, disk: str) -> BaseException:
    if isinstance(exc, ProtocolError | asyncio.CancelledError):
        return exc
    if isinstance(exc, JournalIOError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RetentionFull(f"disk {disk}: no space left for undo data ({exc}); batch rolled back")
    if isinstance(exc, OSError | TargetError | JournalIOError):
        return TargetUnavailable(f"disk {disk}: I/O error ({exc}); batch rolled back")
    return exc


async def _swallow(future: Awaitable[object]) -> None:
    # The failure that matters is the one being answered.
    with contextlib.suppress(Exception):
        await future


async def _uncancelled(awaitable: Awaitable[T]) -> T:
    """Await to completion even if the calling task is cancelled meanwhile."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
