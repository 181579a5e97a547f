"""Chunk digests of an image or a target: XXH3-128 of each fixed-size chunk, read in order.

A resync by hash comparison (docs/protocol.md section 5) compares a source with its target
chunk by chunk: the agent digests the target for `POST /v1/disks/{disk}/hashes`, the
sender digests its source, both with this module, so both sides agree byte for byte on
what a chunk is and what its digest is. Chunks lie on a grid fixed at offset 0 (a chunk
starts at a multiple of `chunk_bytes`); the last chunk of a range may be short.

Reading is sequential, one `preadv` per window of whole chunks into one page-aligned
buffer. Memory is that buffer, whatever the length of the range. The buffer is an anonymous
mapping rather than a bytearray: the kernel copies into a page-aligned buffer about four
times faster than into a bytearray (16 bytes past a page boundary) on the benchmark machine.

A pass over a whole disk (`direct=True`, windows of SCAN_WINDOW_BYTES) reads with O_DIRECT
in large requests: the device gets many requests in flight at once (the kernel splits one
large read into requests of the queue's max_sectors_kb), nothing is copied, and a scan of
terabytes does not push everything else out of the page cache. On the benchmark machine
(virtio disk) both images of a resync were read in parallel in about 3 s this way against
about 6.5 s through the page cache in 4 MiB reads. Where the file system refuses O_DIRECT
(tmpfs), the reader falls back to the page cache with POSIX_FADV_SEQUENTIAL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from xxhash import xxh3_128_digest

from blockio.scan.source_image import ImageChanged

DIGEST_BYTES = 16
"""Bytes of one digest: XXH3-128, as `xxhash.xxh3_128().digest()` gives it."""

MIN_CHUNK_BYTES = 64 << 10
MAX_CHUNK_BYTES = 16 << 20

DEFAULT_WINDOW_BYTES = 4 << 20
"""Bytes read per `preadv` through the page cache: large enough for the kernel's read-ahead to
stream, small enough that the agent holds a disk's lock (see agent/server/hashes_api.py) for only a
few milliseconds."""

SCAN_WINDOW_BYTES = 64 << 20
"""Bytes read per `preadv` with O_DIRECT in a pass over a whole disk, by each of SCAN_READERS
readers (`WindowReaders`). Less in flight reads markedly slower on the benchmark machine
(one reader of 64 MiB: 1.1 to 1.8 times the time of two, over the same two cold 2 GiB
images)."""

SCAN_READERS = 2
"""Readers taking a pass's windows in turn: while one digests its window, the other's read
is in flight."""


def chunk_bytes_problem(chunk_bytes: int) -> str | None:
    """Why `chunk_bytes` is not a chunk size of the protocol (a power of two from 64 KiB to
    16 MiB), or None if it is one."""
    if type(chunk_bytes) is not int:
        return f"chunk_bytes must be an integer, got {type(chunk_bytes).__name__}"
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES or chunk_bytes & (chunk_bytes - 1):
        return (
            f"chunk_bytes must be a power of two from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES}, "
            f"got {chunk_bytes}"
        )
    return None


def chunk_count(length: int, chunk_bytes: int) -> int:
    """How many chunks (so digests) a range of `length` bytes has: the last may be short."""
    return -(-length // chunk_bytes)


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte XXH3-128 digest of one chunk."""
    return xxh3_128_digest(data)


def windows(offset: int, length: int, chunk_bytes: int, window_bytes: int) -> Iterator[range]:
    """`[offset, offset + length)` cut into windows of whole chunks, in order.

    Each window is a `range` of byte offsets holding at most `window_bytes` rounded down to
    whole chunks (at least one chunk); only the last window may end inside a chunk, at the
    end of the range. `offset` must be a multiple of `chunk_bytes`.
    """
    step = max(chunk_bytes, window_bytes - window_bytes % chunk_bytes)
    end = offset + length
    for start in range(offset, end, step):
        yield range(start, min(start + step, end))


@dataclass(eq=False)
class ChunkReader:
    """An image or block device opened read-only, read in windows of whole chunks.

    Build it with `ChunkReader.open`; close it (or use `with`). Not thread-safe: one
    thread reads it at a time, since every read lands in the same buffer.
    """

    path: Path
    size_bytes: int
    window_bytes: int
    direct: bool
    _fd: int = field(repr=False)
    _buffer: mmap.mmap = field(repr=False)

    @classmethod
    def open(
        cls, path: Path | str, *, window_bytes: int = DEFAULT_WINDOW_BYTES, direct: bool = False
    ) -> ChunkReader:
        """Open `path` read-only with a buffer of `window_bytes` (a multiple of the page
        size, at most MAX_CHUNK_BYTES larger than any window asked for), reading with O_DIRECT
        if `direct` and the file system allows it (`reader.direct` tells).

        Raises OSError when it cannot be opened; ValueError for a window size that is not a
        positive multiple of the page size.
        """
        if window_bytes <= 0 or window_bytes % mmap.PAGESIZE:
            raise ValueError(
                f"window_bytes must be a positive multiple of {mmap.PAGESIZE}, got {window_bytes}"
            )
        path = Path(path)
        fd = _open_read_only(path, direct)
        try:
            direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
            # Seeking to the end measures regular files and block devices alike.
            size = os.lseek(fd, 0, os.SEEK_END)
            if not direct:
                with contextlib.suppress(OSError):  # only a hint; some file systems refuse it
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            buffer = mmap.mmap(-1, window_bytes)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, size, window_bytes, direct, fd, buffer)

    def read(self, offset: int, length: int) -> memoryview:
        """Exactly `length` bytes from `offset`, in the reader's buffer: valid only until
        the next call. `length` is at most `window_bytes`.

        Raises ImageChanged if the image ends before `offset + length`, OSError for a failed
        read, ValueError for a length over the buffer.
        """
        if not 0 <= length <= self.window_bytes:
            raise ValueError(f"cannot read {length} bytes into a {self.window_bytes}-byte buffer")
        buffer = memoryview(self._buffer)
        # Direct reads move whole pages: the last one may ask past the end of the image.
        asked = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE if self.direct else length
        done = 0
        while done < length:
            count = self._pread(buffer[done:asked], offset + done)
            if count == 0 or (self.direct and count % mmap.PAGESIZE and done + count < length):
                raise ImageChanged(self.path, offset + done + count, self.size_bytes)
            done += count
        return buffer[:length]

    def prefetch(self, extents: Iterable[tuple[int, int]]) -> None:
        """Start reading the extents `(offset, length)` into the page cache, all at once, so
        that reading them one after another then finds them there. Only a hint."""
        for offset, length in extents:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def _pread(self, into: memoryview, offset: int) -> int:
        """One read at `offset`, leaving O_DIRECT for good where it cannot serve."""
        if self.direct and offset % mmap.PAGESIZE:
            self._stop_direct()
        try:
            return os.preadv(self._fd, [into], offset)
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
        # Some file systems take O_DIRECT at open and refuse the reads.
        self._stop_direct()
        return os.preadv(self._fd, [into], offset)

    def _stop_direct(self) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self.direct = False

    def digests(self, window: range, chunk_bytes: int) -> bytes:
        """The digests of the chunks of `window` (one of `windows(...)`), concatenated.

        Raises like `read`.
        """
        data = self.read(window.start, len(window))
        return b"".join(
            xxh3_128_digest(data[at : at + chunk_bytes]) for at in range(0, len(data), chunk_bytes)
        )

    def close(self) -> None:
        """Close the file and free the buffer. Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            with contextlib.suppress(BufferError):
                # A view of a read still held somewhere keeps the mapping: it is unmapped
                # when that view goes.
                self._buffer.close()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WindowReaders:
    """Readers of one image, each on a thread of its own, taking successive windows in
    turn: while one digests its window, the next one's read is in flight, and the device is
    never idle. Memory is one window per reader.

    Build it with `WindowReaders.open`; `close` it. Windows must be given in order.
    """

    def __init__(self, readers: list[ChunkReader], name: str) -> None:
        self._readers = readers
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=name) for _ in readers]
        self._turn = 0

    @classmethod
    def open(
        cls, path: Path | str, *, window_bytes: int, count: int, direct: bool, name: str
    ) -> WindowReaders:
        """`count` readers of `path` (see `ChunkReader.open`), threads named `name`.

        Raises like `ChunkReader.open`.
        """
        readers: list[ChunkReader] = []
        try:
            for _ in range(count):
                readers.append(ChunkReader.open(path, window_bytes=window_bytes, direct=direct))
        except BaseException:
            for reader in readers:
                reader.close()
            raise
        return cls(readers, name)

    @property
    def size_bytes(self) -> int:
        return self._readers[0].size_bytes

    @property
    def window_bytes(self) -> int:
        return self._readers[0].window_bytes

    @property
    def count(self) -> int:
        return len(self._readers)

    def digests(self, window: range, chunk_bytes: int) -> Future[bytes]:
        """The digests of `window` (see `ChunkReader.digests`), from the next reader in turn.
        Cancel the future to drop a read not yet started."""
        turn = self._turn
        self._turn = (turn + 1) % len(self._readers)
        return self._threads[turn].submit(self._readers[turn].digests, window, chunk_bytes)

    def close(self) -> None:
        """Close each reader once the reads already running on it are done; does not wait."""
        for reader, thread in zip(self._readers, self._threads, strict=True):
            thread.submit(reader.close)
            thread.shutdown(wait=False)


def _open_read_only(path: Path, direct: bool) -> int:
    """A read-only descriptor of `path`, with O_DIRECT when asked and the file system
    takes it (tmpfs does not)."""
    if direct:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def range_digests(
    path: Path | str,
    offset: int,
    length: int,
    chunk_bytes: int,
    *,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
) -> Iterator[tuple[range, bytes]]:
    """The digests of `[offset, offset + length)` of `path`, window by window: (window,
    its chunks' digests concatenated). `offset` must be a multiple of `chunk_bytes`.

    Raises ValueError for a bad chunk size or a misaligned offset (before reading),
    OSError for I/O errors, ImageChanged if the image ends before the range does.
    """
    problem = chunk_bytes_problem(chunk_bytes)
    if problem:
        raise ValueError(problem)
    if offset % chunk_bytes:
        raise ValueError(f"offset {offset} is not a multiple of chunk_bytes {chunk_bytes}")
    window_bytes = max(window_bytes, chunk_bytes)
    with ChunkReader.open(path, window_bytes=window_bytes) as reader:
        for window in windows(offset, length, chunk_bytes, window_bytes):
            yield window, reader.digests(window, chunk_bytes)
