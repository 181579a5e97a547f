"""A target disk: a block device or a regular file, read and written at byte offsets.

Plain blocking `os.pread`/`os.pwrite` through the page cache (or, with `direct_io`, around it
through sector-aligned buffers), made durable by `sync()`. The agent drives one `TargetDisk` from
one thread, which keeps the order of writes; nothing here knows about batches or the journal.
A block device opened for writing is held exclusively (O_EXCL), so nothing else on this host can
mount it or build on it while it is replicated.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from blockio.errors import BlockIOError

# <linux/fs.h>: _IOR(0x12, 114, size_t) and _IO(0x12, 104).
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268

# A regular file has no logical sector of its own; 512 is what every disk accepts.
FILE_SECTOR_BYTES = 512

# One shared buffer for write_zeros: zeros are written from it in chunks, never allocated per call.
_ZERO_CHUNK = bytes(1 << 20)

# The device is gone rather than failing: the agent answers 503 TARGET_UNAVAILABLE for these.
_GONE_ERRNOS = frozenset({errno.ENODEV, errno.ENXIO, errno.ENOENT})

# O_DIRECT needs buffers aligned to the logical sector: data goes through one page-aligned
# (mmap) bounce buffer per target, this big, in sector multiples.
_DIRECT_BUFFER_BYTES = 1 << 20
# Zeros for O_DIRECT write_zeros, page-aligned, made on first use and never written again.
_direct_zeros: mmap.mmap | None = None
_direct_zeros_lock = threading.Lock()


def _aligned_zeros() -> mmap.mmap:
    global _direct_zeros
    with _direct_zeros_lock:
        if _direct_zeros is None:
            zeros = mmap.mmap(-1, _DIRECT_BUFFER_BYTES)
            # Touch every page: the kernel then pins real pages for the DMA, not the zero page.
            zeros.write(bytes(_DIRECT_BUFFER_BYTES))
            _direct_zeros = zeros
        return _direct_zeros


class TargetError(BlockIOError):
    """An operation on a target disk failed. `str()` is one line naming the path and the cause."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"target {path}: {reason}")
        self.path = path
        self.reason = reason


class TargetUnusable(TargetError):
    """The target cannot be used at all, as opposed to one I/O that failed: missing, not a file
    or block device, cannot be opened, in use on this host, or the device went away while in
    use. (The daemon answers such a disk with the protocol's TargetUnavailable, 503.)"""


class TargetBusy(TargetUnusable):
    """The kernel refused the exclusive open of a block device (EBUSY): something on this host
    uses it (a mount, swap, LVM, MD or device-mapper)."""


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False  # open() says what is wrong with it


def _io_failure(path: Path, what: str, exc: OSError) -> TargetError:
    reason = f"{what} failed: {exc.strerror or exc}"
    if exc.errno in _GONE_ERRNOS:
        return TargetUnusable(path, reason)
    return TargetError(path, reason)


@dataclass(eq=False)
class TargetDisk:
    """An open target. Build it with `TargetDisk.open`; close it (or use `with`)."""

    path: Path
    size_bytes: int
    sector_bytes: int
    is_block_device: bool
    _fd: int = field(repr=False)
    # st_rdev of a block device (0 for a file): how udev events name the device we hold.
    devnum: int = 0
    direct_io: bool = False
    _revoked: str | None = field(default=None, repr=False)
    _buffer: mmap.mmap | None = field(default=None, repr=False)
    _buffer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls, path: Path | str, *, writable: bool = True, direct_io: bool = False
    ) -> TargetDisk:
        """Open `path` read-write (or read-only with writable=False, for reports): a regular
        file (size = file size, 512-byte sectors) or a block device (size from BLKGETSIZE64,
        logical sector from BLKSSZGET).

        A block device opened for writing is claimed exclusively (O_EXCL): while it is held,
        the kernel refuses to mount it (or a partition of it), swap on it or build LVM/MD/dm on
        it. direct_io=True adds O_DIRECT: reads and writes bypass the page cache through
        sector-aligned buffers, and writes must cover whole sectors.

        Raises TargetBusy (a TargetUnusable) when the exclusive claim is refused because the
        device is in use; TargetUnusable when the path is missing, is anything else than a
        regular file or a block device, or cannot be opened or queried.
        """
        path = Path(path)
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        if direct_io:
            flags |= os.O_DIRECT
        # O_EXCL without O_CREAT means "claim the device" for block devices only.
        exclusive = writable and _is_block_device(path)
        if exclusive:
            flags |= os.O_EXCL
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise TargetUnusable(path, "does not exist") from None
        except IsADirectoryError:
            raise TargetUnusable(
                path, "is a directory, not a regular file or block device"
            ) from None
        except OSError as exc:
            if exclusive and exc.errno == errno.EBUSY:
                raise TargetBusy(
                    path,
                    "is in use on this host (the exclusive open was refused: it is mounted, "
                    "holds swap, or is a member of LVM, MD or device-mapper)",
                ) from exc
            if direct_io and exc.errno == errno.EINVAL:
                raise TargetUnusable(
                    path, "cannot be opened with O_DIRECT (direct_io): its file system refuses it"
                ) from exc
            mode = "read-write" if writable else "read-only"
            raise TargetUnusable(path, f"cannot open {mode}: {exc.strerror or exc}") from exc
        try:
            # fstat, not stat before open: what we judge is what we hold.
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                disk = cls(path, st.st_size, FILE_SECTOR_BYTES, False, fd, direct_io=direct_io)
            elif stat.S_ISBLK(st.st_mode):
                if writable and not exclusive:
                    # It turned into a block device between the stat and the open.
                    raise TargetUnusable(path, "changed while it was being opened")
                size = struct.unpack("<Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
                sector = struct.unpack("<i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))[0]
                disk = cls(path, size, sector, True, fd, devnum=st.st_rdev, direct_io=direct_io)
            else:
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file"
                raise TargetUnusable(path, f"is {kind}, not a regular file or block device")
            if direct_io:
                disk._buffer = mmap.mmap(-1, max(_DIRECT_BUFFER_BYTES, disk.sector_bytes))
            return disk
        except OSError as exc:
            os.close(fd)
            raise TargetUnusable(path, f"cannot read its size: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(fd)
            raise

    def revoke(self, reason: str) -> None:
        """Stop all further I/O through this handle: every later read, write or sync raises
        TargetUnusable(reason). For a device that went away: a batch in flight fails at its
        next write instead of going on, and its undo records stay in the journal. Safe to call
        from another thread than the one doing the I/O; a write already in the kernel finishes."""
        self._revoked = reason

    def _check_usable(self) -> None:
        if self._revoked is not None:
            raise TargetUnusable(self.path, self._revoked)

    def _check_aligned(self, what: str, offset: int, length: int) -> None:
        sector = self.sector_bytes
        if offset % sector or length % sector:
            raise TargetError(
                self.path,
                f"{what} of {length} bytes at offset {offset} is not aligned to the "
                f"{sector}-byte sectors that O_DIRECT (direct_io) needs",
            )

    def _check_extent(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise TargetError(
                self.path,
                f"extent [{offset}, {offset + length}) lies outside the disk "
                f"of {self.size_bytes} bytes",
            )

    def prefetch(self, extents: Iterable[tuple[int, int]]) -> None:
        """Start reading the extents `(offset, length)` into the page cache, all at once: the
        reads that follow find them there. Scattered extents are so read in parallel rather
        than one after another (a resync's differing chunks, cold after its direct hash
        reads, were read here at about 2 ms each). Only a hint: does nothing with direct_io."""
        if self.direct_io or self._fd < 0:
            return
        for offset, length in extents:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly `length` bytes from `offset`.

        Raises TargetError for an extent outside the disk or a failed read (TargetUnusable
        when the device is gone).
        """
        self._check_usable()
        self._check_extent(offset, length)
        if self._buffer is not None:
            return self._read_direct(offset, length)
        try:
            data = os.pread(self._fd, length, offset)
            if len(data) == length:
                return data
            # Short reads are legal; gather the rest rather than fail.
            parts = [data]
            done = len(data)
            while done < length:
                part = os.pread(self._fd, length - done, offset + done)
                if not part:
                    raise TargetError(
                        self.path, f"read at offset {offset + done} hit the end of the device"
                    )
                parts.append(part)
                done += len(part)
            return b"".join(parts)
        except OSError as exc:
            raise _io_failure(self.path, f"read of {length} bytes at offset {offset}", exc) from exc

    def _read_direct(self, offset: int, length: int) -> bytes:
        """Read through the aligned buffer: the whole sectors around the extent, then cut."""
        assert self._buffer is not None
        sector = self.sector_bytes
        start = offset - offset % sector
        end = -(-(offset + length) // sector) * sector
        out = bytearray(length)
        with self._buffer_lock, memoryview(self._buffer) as buffer:
            position = start
            while position < end:
                self._check_usable()
                want = min(end - position, len(buffer))
                try:
                    got = os.preadv(self._fd, [buffer[:want]], position)
                except OSError as exc:
                    raise _io_failure(
                        self.path, f"read of {length} bytes at offset {offset}", exc
                    ) from exc
                if got <= 0:
                    raise TargetError(
                        self.path, f"read at offset {position} hit the end of the device"
                    )
                low, high = max(position, offset), min(position + got, offset + length)
                if high > low:
                    out[low - offset : high - offset] = buffer[low - position : high - position]
                position += got
        return bytes(out)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of `data` at `offset` (durable only after `sync()`). With direct_io the
        extent must be whole sectors.

        Raises TargetError for an extent outside the disk, a misaligned direct_io extent or a
        failed write (TargetUnusable when the device is gone or the target was revoked).
        """
        view = memoryview(data).cast("B")
        length = len(view)
        self._check_usable()
        self._check_extent(offset, length)
        if self._buffer is None:
            self._pwrite_all(view, offset)
            return
        self._check_aligned("write", offset, length)
        with self._buffer_lock, memoryview(self._buffer) as buffer:
            done = 0
            while done < length:
                chunk = min(length - done, len(buffer))
                buffer[:chunk] = view[done : done + chunk]
                self._pwrite_all(buffer[:chunk], offset + done)
                done += chunk

    def _pwrite_all(self, view: memoryview, offset: int) -> None:
        length = len(view)
        done = 0
        try:
            while done < length:
                self._check_usable()
                written = os.pwrite(self._fd, view[done:], offset + done)
                if written == 0:
                    raise TargetError(self.path, f"write at offset {offset + done} wrote nothing")
                done += written
        except OSError as exc:
            raise _io_failure(
                self.path, f"write of {length} bytes at offset {offset + done}", exc
            ) from exc

    def write_zeros(self, offset: int, length: int) -> None:
        """Make `[offset, offset + length)` zeros (durable only after `sync()`).

        Raises like `write`.
        """
        self._check_usable()
        self._check_extent(offset, length)
        if self._buffer is not None:
            # Straight from an aligned buffer of zeros: no copy through the bounce buffer.
            self._check_aligned("write", offset, length)
            with memoryview(_aligned_zeros()) as zeros:
                end = offset + length
                while offset < end:
                    chunk = min(end - offset, len(zeros))
                    self._pwrite_all(zeros[:chunk], offset)
                    offset += chunk
            return
        zeros = memoryview(_ZERO_CHUNK)
        end = offset + length
        while offset < end:
            chunk = min(end - offset, len(zeros))
            self.write(offset, zeros[:chunk])
            offset += chunk

    def sync(self) -> None:
        """fdatasync: every byte written so far is on stable storage when this returns.

        Raises TargetError (TargetUnusable when the device is gone).
        """
        self._check_usable()
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_failure(self.path, "fdatasync", exc) from exc

    def close(self) -> None:
        """Close the descriptor. Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if self._buffer is not None:
            with self._buffer_lock:
                buffer, self._buffer = self._buffer, None
            # A traceback may still hold a view of it; the mapping then goes with the last one.
            with contextlib.suppress(BufferError):
                buffer.close()

    def __enter__(self) -> TargetDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
