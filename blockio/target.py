"""A target disk: a block device or a regular file, read and written at byte offsets.

Plain blocking `os.pread`/`os.pwrite` through the page cache, made durable by
`sync()`. The agent drives one `TargetDisk` from one thread, which keeps the
order of writes; nothing here knows about batches or the journal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# <linux/fs.h>: _IOR(0x12, 114, size_t) and _IO(0x12, 104).
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268

# A regular file has no logical sector of its own; 512 is what every disk accepts.
FILE_SECTOR_BYTES = 512

# One shared buffer for write_zeros: zeros are written from it in chunks, never allocated per call.
_ZERO_CHUNK = bytes(1 << 20)

# The device is gone rather than failing: the agent answers 503 TARGET_UNAVAILABLE for these.
_GONE_ERRNOS = frozenset({errno.ENODEV, errno.ENXIO, errno.ENOENT})


class TargetError(Exception):
    """An operation on a target disk failed. `str()` is one line naming the path and the cause."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"target {path}: {reason}")
        self.path = path
        self.reason = reason


class TargetUnavailable(TargetError):
    """The target is not there to use: missing, not a file or block device, cannot be opened,
    or the device went away while in use."""


def _io_failure(path: Path, what: str, exc: OSError) -> TargetError:
    reason = f"{what} failed: {exc.strerror or exc}"
    if exc.errno in _GONE_ERRNOS:
        return TargetUnavailable(path, reason)
    return TargetError(path, reason)


@dataclass(eq=False)
class TargetDisk:
    """An open target. Build it with `TargetDisk.open`; close it (or use `with`)."""

    path: Path
    size_bytes: int
    sector_bytes: int
    is_block_device: bool
    _fd: int = field(repr=False)

    @classmethod
    def open(cls, path: Path | str, *, writable: bool = True) -> TargetDisk:
        """Open `path` read-write (or read-only with writable=False, for reports): a regular
        file (size = file size, 512-byte sectors) or a block device (size from BLKGETSIZE64,
        logical sector from BLKSSZGET).

        Raises TargetUnavailable when the path is missing, is anything else than a regular file
        or a block device, or cannot be opened or queried.
        """
        path = Path(path)
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TargetUnavailable(path, "does not exist") from None
        except IsADirectoryError:
            raise TargetUnavailable(
                path, "is a directory, not a regular file or block device"
            ) from None
        except OSError as exc:
            mode = "read-write" if writable else "read-only"
            raise TargetUnavailable(path, f"cannot open {mode}: {exc.strerror or exc}") from exc
        try:
            # fstat, not stat before open: what we judge is what we hold.
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                size = os.fstat(fd).st_size
                return cls(path, size, FILE_SECTOR_BYTES, False, fd)
            if stat.S_ISBLK(mode):
                size = struct.unpack("<Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
                sector = struct.unpack("<i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))[0]
                return cls(path, size, sector, True, fd)
            kind = "a directory" if stat.S_ISDIR(mode) else "a special file"
            raise TargetUnavailable(path, f"is {kind}, not a regular file or block device")
        except OSError as exc:
            os.close(fd)
            raise TargetUnavailable(path, f"cannot read its size: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(fd)
            raise

    def _check_extent(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise TargetError(
                self.path,
                f"extent [{offset}, {offset + length}) lies outside the disk "
                f"of {self.size_bytes} bytes",
            )

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly `length` bytes from `offset`.

        Raises TargetError for an extent outside the disk or a failed read (TargetUnavailable
        when the device is gone).
        """
        self._check_extent(offset, length)
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

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of `data` at `offset` (durable only after `sync()`).

        Raises TargetError for an extent outside the disk or a failed write (TargetUnavailable
        when the device is gone).
        """
        view = memoryview(data).cast("B")
        length = len(view)
        self._check_extent(offset, length)
        done = 0
        try:
            while done < length:
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
        self._check_extent(offset, length)
        zeros = memoryview(_ZERO_CHUNK)
        end = offset + length
        while offset < end:
            chunk = min(end - offset, len(zeros))
            self.write(offset, zeros[:chunk])
            offset += chunk

    def sync(self) -> None:
        """fdatasync: every byte written so far is on stable storage when this returns.

        Raises TargetError (TargetUnavailable when the device is gone).
        """
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_failure(self.path, "fdatasync", exc) from exc

    def close(self) -> None:
        """Close the descriptor. Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> TargetDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
