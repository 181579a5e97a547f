"""Batch bodies, made in the producer thread: the events of `protocol.batching` encoded and
joined into the chunks of chunked request bodies, with what the event loop needs to know
about each batch. The one place a body is cut into pieces for the client (`slices`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data, End, Event, Zero

CHUNK_BYTES = 64 * 1024
"""Frames smaller than this are joined into one chunk of the request body: each chunk costs
a TLS record and a chunked-encoding header, a 40-byte ZERO frame alone would be mostly
overhead."""

SLICE_BYTES = 64 * 1024
"""Large chunks go to the client in slices of this size. Each slice is copied (chunked
framing), encrypted and copied again (TLS) before the socket takes it; slices that stay in
the CPU cache through those steps made the event loop ~30% faster than whole 1 MiB frames
on the benchmark machine."""


@dataclass(frozen=True, slots=True)
class Opened:
    """A batch begins; its extents begin at `offset` (resuming it starts reading there)."""

    seq: int
    offset: int


@dataclass(frozen=True, slots=True)
class Closed:
    """What a batch holds, known once its END has been produced."""

    seq: int
    data_bytes: int
    zero_bytes: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Body bytes of the open batch. `position`: the end of the last frame in them;
    `closed`: set on the batch's last chunk (the one with END)."""

    data: bytes
    position: int
    closed: Closed | None = None


@dataclass(frozen=True, slots=True)
class Scanned:
    """The producer has compared the source up to `position` without finding anything to
    send (a delta's unchanged stretches: progress moves over them too)."""

    position: int


Item = Opened | Chunk | Scanned


def encode_batches(
    events: Iterable[Event],
    put: Callable[[Item], None],
    *,
    compress: bool,
    offset: int,
    skip_through: int,
) -> None:
    """Encode the batches of `events` and `put` each as an Opened, its Chunks, the last one
    carrying its Closed. Batches up to `skip_through` are read through (their extents are
    consumed) without being encoded or put. `offset` is where the extents begin.

    Raises what reading the events raises.
    """
    encoder = BatchEncoder(1, compress=compress)  # replaced at every Begin: events start with one
    seq = 0
    skip = opened = False
    parts: list[bytes] = []
    parts_bytes = 0
    position = offset
    data_bytes = zero_bytes = 0
    for event in events:
        if isinstance(event, Begin):
            seq = event.seq
            skip = seq <= skip_through  # acknowledged already
            opened = False
            data_bytes = zero_bytes = 0
            encoder = BatchEncoder(seq, compress=compress)
            parts, parts_bytes = [encoder.encode(event)], 0
            continue
        if skip:
            continue
        if isinstance(event, Data | Zero):
            if not opened:
                put(Opened(seq, event.offset))
                opened = True
            frame = encoder.encode(event)
            if isinstance(event, Data):
                length = len(event.data)
                data_bytes += length
            else:
                length = event.length
                zero_bytes += length
            position = event.offset + length
            if len(frame) >= CHUNK_BYTES:
                if parts:
                    put(Chunk(b"".join(parts), event.offset))
                    parts, parts_bytes = [], 0
                put(Chunk(frame, position))
            else:
                parts.append(frame)
                parts_bytes += len(frame)
                if parts_bytes >= CHUNK_BYTES:
                    put(Chunk(b"".join(parts), position))
                    parts, parts_bytes = [], 0
        elif isinstance(event, End):
            if not opened:
                put(Opened(seq, position))
            parts.append(encoder.encode(event))
            put(Chunk(b"".join(parts), position, Closed(seq, data_bytes, zero_bytes)))
            parts, parts_bytes = [], 0
        else:
            parts.append(encoder.encode(event))


def slices(chunk: bytes) -> Iterator[bytes | memoryview]:
    """`chunk` in the pieces the client takes best: slices of SLICE_BYTES."""
    if len(chunk) <= SLICE_BYTES:
        yield chunk
        return
    view = memoryview(chunk)
    for at in range(0, len(chunk), SLICE_BYTES):
        yield view[at : at + SLICE_BYTES]
