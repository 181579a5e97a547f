"""`push_image`: the sender's job of sending a source image to an agent as numbered batches.

It sends all of the image, or what differs from a base image, retrying and resuming after
failures. Images are read through `blockio.scan.source_image`, batches cut by
`protocol.batching` and sent by `agent.sender.batch_sender.BatchSender`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.sender.batch_sender import BatchSender
from agent.sender.errors import PushFailed
from agent.sender.retry import RetryBudget
from agent.sender.source_fit import check_fits, measure_source
from blockio.scan.source_image import BLOCK_BYTES, Extent, delta_extents, full_extents
from protocol.batching import batch_events
from protocol.client import AgentClient
from protocol.events import Event, Tag

MODES = ("full", "delta")

# A delta sends nothing for unchanged stretches; the producer tells how far it has compared
# every this many bytes, so that progress moves over them too.
_SCAN_REPORT_BYTES = 8 * 1024 * 1024


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

    The source must be the disk's size (a shorter one is refused, not padded) and a whole
    number of its sectors, the frame and batch sizes multiples of the sector size within the
    agent's limits, and a `tag` must name the disk's own group: checked before anything is
    sent. On a disconnect, a timeout, a 5xx answer or
    TARGET_UNAVAILABLE, the push waits (0.5 s, doubling up to 10 s), asks the agent for
    its last_seq and goes on after it: acknowledged batches are never sent again, and a
    batch sent again has the content it had. `retries` bounds the failures in a row
    (any acknowledged batch starts the count again).

    `progress(done, total)` is called on the event loop as the body is sent: how far
    into the source the push is, in bytes, of the source's size.

    Raises BatchRefused for an error answer retrying cannot fix, PushFailed for a source
    that does not fit, a tag for another group, a source that cannot be read, or when
    retries run out; ValueError for a bad mode or missing base.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "delta" and base is None:
        raise ValueError("a delta push needs a base image")
    started = time.monotonic()
    budget = RetryBudget(retries, disk_id, client.base_url)
    info = await budget.call(client.info)
    disk = await budget.call(lambda: client.disk(disk_id))
    if tag is not None and tag.group != disk.group:
        raise PushFailed(
            f"disk {disk_id} is in group {disk.group!r}: a tag for group {tag.group!r} cannot "
            "mark a point of it; tag it with its own group",
            disk=disk_id,
        )
    size, source_time_ns = await asyncio.to_thread(measure_source, disk_id, source, base)
    check_fits(
        disk_id,
        source,
        size,
        info=info,
        disk=disk,
        sizes={"frame size": frame_bytes, "batch size": batch_bytes},
    )

    def events_from(seq: int, offset: int, scanned: Callable[[int], None]) -> Iterable[Event]:
        return batch_events(
            _extents(source, base if mode == "delta" else None, frame_bytes, offset, scanned),
            disk=disk_id,
            first_seq=seq,
            source_time_ns=source_time_ns,
            frame_bytes=frame_bytes,
            batch_bytes=batch_bytes,
            resync_end=size if mode == "full" else None,
            tag=tag,
        )

    sender = BatchSender(
        client,
        disk_id,
        source,
        budget,
        compress=compress,
        frame_bytes=frame_bytes,
        progress=None if progress is None else lambda position: progress(position, size),
    )
    sender.acked = disk.last_seq
    first_seq = sender.acked + 1
    await sender.send(first_seq, events_from)
    if progress is not None:
        progress(size, size)
    return PushResult(
        disk=disk_id,
        mode=mode,
        batches=sender.acked - first_seq + 1,
        first_seq=first_seq,
        last_seq=sender.acked,
        disk_bytes=sender.disk_bytes,
        data_bytes=sender.data_bytes,
        zero_bytes=sender.zero_bytes,
        wire_bytes=sender.wire_bytes,
        seconds=time.monotonic() - started,
        retries=budget.total,
    )


def _extents(
    source: Path, base: Path | None, frame_bytes: int, offset: int, scanned: Callable[[int], None]
) -> Iterator[Extent]:
    """The extents a push sends from `offset`: every one (no base), or the delta from `base`."""
    if base is None:
        return full_extents(source, chunk_bytes=frame_bytes, start=offset)
    reported = offset

    def report(position: int) -> None:
        nonlocal reported
        if position - reported >= _SCAN_REPORT_BYTES:
            reported = position
            scanned(position)

    # Read whole 64 KiB blocks, at least a frame's worth at a time.
    chunk = math.ceil(frame_bytes / BLOCK_BYTES) * BLOCK_BYTES
    return delta_extents(source, base, chunk_bytes=chunk, start=offset, scanned=report)
