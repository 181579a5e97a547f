"""Extents in, the events of numbered batches out (docs/protocol.md section 3), sans-I/O.

`batch_events` turns the extents a push has to send into one flat stream of events:
each batch is `Begin`, its `Data`/`Zero` frames, an optional `Tag`, and `End`. The
stream depends only on its inputs, and cutting it is reproducible: the batches from
any batch `s` on are the same whether the stream starts at the beginning or is
started again at `s` from the extents that begin where batch `s` began. That is what
lets a sender resume after a failure without re-reading what is acknowledged, and
without ever sending different content under a sequence number.

Two rules follow from it: frames are cut on grids fixed at offset 0 (DATA at
multiples of `frame_bytes`, ZERO at multiples of MAX_ZERO_FRAME_BYTES), and a resync
cuts batches at multiples of `batch_bytes`, so its batch `k` covers the same disk
range every time.

`one_batch_events` is the same cutting for one batch whose content is already decided
(a resync by hash comparison decides its batches with `protocol.resync_plan`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from protocol.events import Begin, Data, End, Event, Tag, Zero
from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE

MAX_ZERO_FRAME_BYTES = 1 << 30
"""ZERO frames are cut at multiples of this: their `length` field has 32 bits."""


class ExtentLike(Protocol):
    """A range of the source: its bytes, or None where they are all zeros."""

    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...

    @property
    def data(self) -> bytes | bytearray | memoryview | None: ...


def batch_events(
    extents: Iterable[ExtentLike],
    *,
    disk: str,
    first_seq: int,
    source_time_ns: int,
    frame_bytes: int,
    batch_bytes: int,
    resync_end: int | None = None,
    tag: Tag | None = None,
) -> Iterator[Event]:
    """The batches that send `extents`, numbered from `first_seq`, as one stream of events.

    `extents` must be in ascending offset order and must not overlap. Their data is only
    read before the next extent is asked for, so borrowed buffers (a reader that reuses
    its buffer) are fine; a Data event's `data` is a view of the extent's data and has
    the same lifetime.

    - DATA frames are at most `frame_bytes` and never cross a multiple of it; ZERO
      frames never cross a multiple of MAX_ZERO_FRAME_BYTES.
    - `resync_end=None` (a delta): each batch holds up to `batch_bytes` of DATA and ZERO
      lengths; batches carry no flags.
    - `resync_end=N` (a resync whose extents tile the disk up to N): batches are cut at
      multiples of `batch_bytes`; each is flagged `resync`, the one that reaches N also
      `resync_done`.
    - `tag` stands just before END of the last batch.
    - No extents at all: one batch without frames if this is a resync (it completes the
      resync) or there is a tag to record; otherwise nothing.

    Raises ValueError if `frame_bytes`, `batch_bytes` or `first_seq` is not positive.
    """
    if frame_bytes <= 0 or batch_bytes <= 0 or first_seq <= 0:
        raise ValueError(
            f"frame_bytes, batch_bytes and first_seq must be positive, got {frame_bytes}, "
            f"{batch_bytes}, {first_seq}"
        )
    return _batches(
        iter(extents), disk, first_seq, source_time_ns, frame_bytes, batch_bytes, resync_end, tag
    )


def one_batch_events(
    extents: Iterable[ExtentLike],
    *,
    disk: str,
    seq: int,
    source_time_ns: int,
    frame_bytes: int,
    flags: frozenset[str] = frozenset(),
    tag: Tag | None = None,
) -> Iterator[Event]:
    """Batch `seq` holding all of `extents`, with `flags`, as its events: `Begin`, the
    frames, `tag` if any, `End`.

    Extents and frames follow the rules of `batch_events` (ascending, not overlapping,
    borrowed data fine; frames cut on the grids fixed at offset 0); however much the extents
    hold, they go into this one batch.

    Raises ValueError if `frame_bytes` or `seq` is not positive.
    """
    if frame_bytes <= 0 or seq <= 0:
        raise ValueError(f"frame_bytes and seq must be positive, got {frame_bytes}, {seq}")
    return _one_batch(iter(extents), disk, seq, source_time_ns, frame_bytes, flags, tag)


def _one_batch(
    extents: Iterator[ExtentLike],
    disk: str,
    seq: int,
    source_time_ns: int,
    frame_bytes: int,
    flags: frozenset[str],
    tag: Tag | None,
) -> Iterator[Event]:
    yield Begin(disk, seq, source_time_ns, flags)
    frames = 1
    filled = 0
    while (piece := _next_piece(extents)) is not None:
        offset, length, data = piece
        for event in _frames(offset, length, data, frame_bytes):
            yield event
            frames += 1
        filled += length
    if tag is not None:
        yield tag
        frames += 1
    yield End(frames=frames + 1, data_bytes=filled)


def _batches(
    extents: Iterator[ExtentLike],
    disk: str,
    seq: int,
    source_time_ns: int,
    frame_bytes: int,
    batch_bytes: int,
    resync_end: int | None,
    tag: Tag | None,
) -> Iterator[Event]:
    pending = _next_piece(extents)
    if pending is None:
        if resync_end is not None or tag is not None:
            flags = _flags(resync_end, last=True)
            yield Begin(disk, seq, source_time_ns, flags)
            if tag is not None:
                yield tag
            yield End(frames=3 if tag is not None else 2, data_bytes=0)
        return
    while pending is not None:
        # A resync batch ends at the next multiple of batch_bytes; a delta batch when full.
        limit: int | None = None
        flags = frozenset[str]()
        if resync_end is not None:
            limit = (pending[0] // batch_bytes + 1) * batch_bytes
            flags = _flags(resync_end, last=limit >= resync_end)
        yield Begin(disk, seq, source_time_ns, flags)
        frames = 1
        filled = 0
        while pending is not None:
            offset, length, data = pending
            room = limit - offset if limit is not None else batch_bytes - filled
            if room <= 0:
                break
            take = min(length, room)
            for event in _frames(offset, take, data, frame_bytes):
                yield event
                frames += 1
            filled += take
            if take < length:
                rest = None if data is None else data[take:]
                pending = (offset + take, length - take, rest)
                break
            pending = _next_piece(extents)
        if pending is None and tag is not None:
            yield tag
            frames += 1
        yield End(frames=frames + 1, data_bytes=filled)
        seq += 1


_Piece = tuple[int, int, memoryview | None]


def _next_piece(extents: Iterator[ExtentLike]) -> _Piece | None:
    for extent in extents:
        if extent.length <= 0:
            continue
        data = extent.data
        if data is None:
            return (extent.offset, extent.length, None)
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view) != extent.length:
            raise ValueError(
                f"extent at {extent.offset} has length {extent.length} but "
                f"{len(view)} bytes of data"
            )
        return (extent.offset, extent.length, view)
    return None


def _frames(offset: int, length: int, data: memoryview | None, frame_bytes: int) -> Iterator[Event]:
    """The frames of one piece of an extent, cut on their fixed grid."""
    grid = MAX_ZERO_FRAME_BYTES if data is None else frame_bytes
    end = offset + length
    while offset < end:
        cut = min(end, (offset // grid + 1) * grid)
        if data is None:
            yield Zero(offset, cut - offset)
        else:
            yield Data(offset, data[: cut - offset])
            data = data[cut - offset :]
        offset = cut


def _flags(resync_end: int | None, *, last: bool) -> frozenset[str]:
    if resync_end is None:
        return frozenset()
    if last:
        return frozenset({BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE})
    return frozenset({BEGIN_FLAG_RESYNC})
