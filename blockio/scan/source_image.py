"""Source and base images read as extents: which byte ranges a push has to send.

Two readings of an image file (or block device):

- `full_extents`: every byte, chunk by chunk; all-zero chunks become zero extents
  (adjacent ones coalesce), every other chunk a data extent.
- `delta_extents`: only the 64 KiB blocks that differ from a base image (the
  image the target already holds); adjacent differing blocks coalesce, and
  differing blocks that are all zeros in the source become zero extents.

Both read into buffers they reuse, so a data extent's bytes are *borrowed*: they
stay valid only until the iterator is advanced. Copy them to keep them.

Both judge bytes on a grid fixed at offset 0 (chunks, blocks), never relative to
where the reading starts. Reading again from `start` therefore yields exactly the
extents of a reading from 0, cut at `start`: a sender that resumes in the middle
of an image regenerates the same stream it sent the first time.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from blockio.errors import BlockIOError

BLOCK_BYTES = 64 * 1024
"""Granularity of the delta comparison."""


class ImageChanged(BlockIOError):
    """An image ended before the size it had when the reading began."""

    def __init__(self, path: Path, offset: int, expected_bytes: int) -> None:
        super().__init__(
            f"{path} ended at offset {offset}, but it was {expected_bytes} bytes when reading "
            "began; was it truncated while being read?"
        )
        self.path = path
        self.offset = offset
        self.expected_bytes = expected_bytes


@dataclass(frozen=True, slots=True)
class Extent:
    """`[offset, offset + length)` of an image: its bytes, or None where they are all zeros.

    `data`, when present, is borrowed from the reader's buffer (see the module docstring).
    """

    offset: int
    length: int
    data: memoryview | None

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def zero(self) -> bool:
        return self.data is None


def image_bytes(path: Path) -> int:
    """Size of an image: a regular file's length or a block device's capacity.

    Raises OSError if it cannot be opened.
    """
    with open(path, "rb", buffering=0) as image:
        # Seeking to the end works for regular files and block devices alike.
        return image.seek(0, os.SEEK_END)


def full_extents(
    source: Path, *, chunk_bytes: int, start: int = 0, end: int | None = None
) -> Iterator[Extent]:
    """Every byte of `source` in `[start, end)`, as extents in offset order that tile it.

    `end` defaults to the image's size when the reading begins. The image is judged in
    chunks of `chunk_bytes` aligned to offset 0 (the last one ends at `end`): a chunk of
    zeros extends the zero extent before it; any other chunk is a data extent of its own.

    Raises ValueError for a chunk size that is not positive, OSError for I/O errors and
    ImageChanged if the image ends before `end`.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return _from(start, _full_grid(source, chunk_bytes, start, end))


def _full_grid(source: Path, chunk_bytes: int, start: int, end: int | None) -> Iterator[Extent]:
    with open(source, "rb", buffering=0) as image:
        if end is None:
            end = image.seek(0, os.SEEK_END)
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        zeros = memoryview(bytes(chunk_bytes))
        zero_start: int | None = None
        offset = start - start % chunk_bytes
        _advise_sequential(image.fileno(), offset)
        image.seek(offset)
        while offset < end:
            size = min(chunk_bytes, end - offset)
            _read_exactly(image, view[:size], source, offset, end)
            if buffer.startswith(zeros[:size]):
                if zero_start is None:
                    zero_start = offset
            else:
                if zero_start is not None:
                    yield Extent(zero_start, offset - zero_start, None)
                    zero_start = None
                yield Extent(offset, size, view[:size])
            offset += size
        if zero_start is not None:
            yield Extent(zero_start, end - zero_start, None)


def delta_extents(
    source: Path,
    base: Path,
    *,
    chunk_bytes: int,
    start: int = 0,
    end: int | None = None,
    scanned: Callable[[int], None] | None = None,
) -> Iterator[Extent]:
    """The parts of `source` in `[start, end)` that differ from `base`, in offset order.

    Both images are compared in blocks of BLOCK_BYTES aligned to offset 0 (the last block
    ends at `end`, the source's size by default); a block differs if any byte of it does,
    or if `base` ends before it does. Differing blocks that are all zeros in the source
    become zero extents, coalescing with adjacent ones; other differing blocks become data
    extents, coalescing with adjacent ones inside a chunk of `chunk_bytes` (a multiple of
    BLOCK_BYTES aligned to offset 0), so a data extent is never longer than a chunk.

    `scanned(offset)` is called after each chunk is compared, with the end of that chunk:
    where the comparison has got to, though most chunks of a delta yield nothing.

    Raises ValueError for a chunk size that is not a positive multiple of BLOCK_BYTES,
    OSError for I/O errors and ImageChanged if the source ends before `end`.
    """
    if chunk_bytes <= 0 or chunk_bytes % BLOCK_BYTES:
        raise ValueError(
            f"chunk_bytes must be a positive multiple of {BLOCK_BYTES}, got {chunk_bytes}"
        )
    return _from(start, _delta_grid(source, base, chunk_bytes, start, end, scanned))


def _delta_grid(
    source: Path,
    base: Path,
    chunk_bytes: int,
    start: int,
    end: int | None,
    scanned: Callable[[int], None] | None,
) -> Iterator[Extent]:
    with open(source, "rb", buffering=0) as src, open(base, "rb", buffering=0) as old:
        if end is None:
            end = src.seek(0, os.SEEK_END)
        new_buffer = bytearray(chunk_bytes)
        new_view = memoryview(new_buffer)
        old_buffer = bytearray(chunk_bytes)
        old_view = memoryview(old_buffer)
        zeros = memoryview(bytes(BLOCK_BYTES))
        zero_start: int | None = None
        offset = start - start % chunk_bytes
        _advise_sequential(src.fileno(), offset)
        _advise_sequential(old.fileno(), offset)
        src.seek(offset)
        old.seek(offset)
        while offset < end:
            size = min(chunk_bytes, end - offset)
            _read_exactly(src, new_view[:size], source, offset, end)
            old_size = _read_upto(old, old_view[:size])
            if old_size == size and new_buffer.startswith(old_view[:size]):
                # The common case of a delta: nothing in this chunk changed.
                if zero_start is not None:
                    yield Extent(zero_start, offset - zero_start, None)
                    zero_start = None
                offset += size
                if scanned is not None:
                    scanned(offset)
                continue
            data_start: int | None = None  # chunk-relative start of the data run
            for block in range(0, size, BLOCK_BYTES):
                block_size = min(BLOCK_BYTES, size - block)
                differs = block + block_size > old_size or not new_buffer.startswith(
                    old_view[block : block + block_size], block
                )
                zero = differs and new_buffer.startswith(zeros[:block_size], block)
                data = differs and not zero
                if data_start is not None and not data:
                    length = block - data_start
                    yield Extent(offset + data_start, length, new_view[data_start:block])
                    data_start = None
                if zero_start is not None and not zero:
                    yield Extent(zero_start, offset + block - zero_start, None)
                    zero_start = None
                if zero and zero_start is None:
                    zero_start = offset + block
                elif data and data_start is None:
                    data_start = block
            if data_start is not None:
                # Data extents end with their chunk: the buffer is refilled next.
                yield Extent(offset + data_start, size - data_start, new_view[data_start:size])
            offset += size
            if scanned is not None:
                scanned(offset)
        if zero_start is not None:
            yield Extent(zero_start, end - zero_start, None)


def _from(start: int, extents: Iterator[Extent]) -> Iterator[Extent]:
    """The extents cut at `start`: the grid readings begin at the grid line before it."""
    for extent in extents:
        cut = start - extent.offset
        if cut <= 0:
            yield extent
        elif extent.end > start:
            data = None if extent.data is None else extent.data[cut:]
            yield Extent(start, extent.length - cut, data)


def _read_exactly(image: io.FileIO, into: memoryview, path: Path, offset: int, end: int) -> None:
    got = _read_upto(image, into)
    if got < len(into):
        raise ImageChanged(path, offset + got, end)


def _read_upto(image: io.FileIO, into: memoryview) -> int:
    """Fill `into` from the image's position; fewer bytes only at the end of the image."""
    got = 0
    while got < len(into):
        count = image.readinto(into[got:])
        if not count:
            break
        got += count
    return got


def _advise_sequential(fd: int, offset: int) -> None:
    # A hint for read-ahead; images on file systems that do not support it read anyway.
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_SEQUENTIAL)
