"""Building batch bodies for tests, through the real encoder."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data, Tag, Zero

Write = tuple[int, bytes] | tuple[int, int]  # (offset, data) or (offset, zero length)


def batch(
    disk: str,
    seq: int,
    writes: Iterable[Write],
    *,
    flags: Iterable[str] = (),
    tag: Tag | None = None,
    source_time_ns: int = 1_700_000_000_000_000_000,
    compress: bool = True,
) -> bytes:
    """A whole valid batch body: BEGIN, the writes (bytes -> DATA, int -> ZERO), TAG, END."""
    encoder = BatchEncoder(seq, compress=compress)
    parts = [encoder.encode(Begin(disk, seq, source_time_ns, frozenset(flags)))]
    for offset, content in writes:
        if isinstance(content, int):
            parts.append(encoder.encode(Zero(offset, content)))
        else:
            parts.append(encoder.encode(Data(offset, content)))
    if tag is not None:
        parts.append(encoder.encode(tag))
    parts.append(encoder.end())
    return b"".join(parts)


def resync_batch(disk: str, seq: int, writes: Iterable[Write], **kwargs: object) -> bytes:
    """A batch flagged resync and resync_done: what a one-batch full copy sends."""
    return batch(disk, seq, writes, flags=("resync", "resync_done"), **kwargs)  # type: ignore[arg-type]


def apply_in_memory(image: bytearray, writes: Iterable[Write]) -> None:
    """What the target should hold after `writes`: the later extent wins."""
    for offset, content in writes:
        if isinstance(content, int):
            image[offset : offset + content] = bytes(content)
        else:
            image[offset : offset + len(content)] = content


class ChunkedBody:
    """A batch body handed to `apply_batch` in chunks of the size asked, as the server reads
    a request's body."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk
