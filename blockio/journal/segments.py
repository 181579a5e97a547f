"""The segment files of one disk's journal and the lock that guards them.

Layout: `<retention>/<disk-id>/seg-<8 digit number>.undo`, numbered from 1 up; appends go to the
newest. The I/O on a segment that can fail under the agent (append, sync, truncate, delete)
raises `JournalIOError`, one line naming the segment.

Readers beside the agent (a recovery export, `mtagent check`) hold `<journal>/journal.lock`
shared while they read (`shared_lock`). The journal takes it exclusively (`JournalLock`) to
truncate and to prune, so records a reader has seen never disappear under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from blockio.durable import fsync_directory
from blockio.errors import BlockIOError

DEFAULT_SEGMENT_BYTES = 256 << 20
SEGMENT_NAME = "seg-{:08d}.undo"
SEGMENT_NAME_RE = re.compile(r"seg-(\d{8})\.undo")
LOCK_NAME = "journal.lock"


class JournalIOError(BlockIOError):
    """Writing, syncing, truncating or deleting a segment failed. `.errno` tells ENOSPC
    (retention drive full) from EIO and the rest; `str()` is one line naming the segment."""

    def __init__(self, path: Path, what: str, exc: OSError) -> None:
        reason = f"{what} failed: {exc.strerror or exc}"
        super().__init__(f"undo journal segment {path}: {reason}")
        self.path = path
        self.errno = exc.errno
        self.reason = reason


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segment files in `directory`, oldest first ([] if it does not exist)."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    numbers = []
    for entry in entries:
        match = SEGMENT_NAME_RE.fullmatch(entry)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def segment_path(directory: Path, number: int) -> Path:
    """The path of segment `number` in `directory`."""
    return directory / SEGMENT_NAME.format(number)


def open_segment(directory: Path, number: int, *, create: bool) -> int:
    """A descriptor of segment `number` open for appending; `create`: a new file, whose name is
    durable when this returns. Raises OSError (FileExistsError when `create` finds one)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    # 0600: undo data is disk contents.
    fd = os.open(segment_path(directory, number), flags, 0o600)
    if create:
        # The name must be durable before records in the file are called durable.
        fsync_directory(directory)
    return fd


def datasync(fd: int, path: Path) -> None:
    """fdatasync the segment `path` open as `fd`. Raises JournalIOError."""
    try:
        os.fdatasync(fd)
    except OSError as exc:
        raise JournalIOError(path, "fdatasync", exc) from exc


def truncate(fd: int, path: Path, size: int) -> None:
    """Cut the segment `path` open as `fd` to `size` bytes, durably. Raises JournalIOError."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise JournalIOError(path, f"truncate to {size} bytes", exc) from exc
    datasync(fd, path)


def delete_segment(path: Path) -> int:
    """Delete the segment `path`; returns the bytes it held (0 if it was gone already). Durable
    only once its directory is synced. Raises JournalIOError."""
    try:
        size = path.stat().st_size
        os.unlink(path)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise JournalIOError(path, "delete", exc) from exc
    return size


@contextlib.contextmanager
def shared_lock(directory: Path) -> Iterator[None]:
    """Hold the journal in `directory` shared: while held, the agent neither truncates nor prunes
    it (a truncation waits, pruning is put off). Waits while the agent holds it exclusively (one
    truncation or one pruning at a time, short). Does nothing when there is no journal yet.

    Raises OSError when the lock file cannot be opened.
    """
    if not directory.is_dir():
        yield
        return
    fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class JournalLock:
    """The journal's side of `journal.lock`: taken exclusively to truncate or prune. Re-entrant
    within the one thread that drives the journal."""

    def __init__(self, directory: Path) -> None:
        """Open (creating it if needed) the lock file in `directory`. Raises OSError."""
        self._fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._depth = 0

    @contextlib.contextmanager
    def exclusive(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the lock exclusively; yields True, or False without the lock when `wait` is False
        and a reader holds it."""
        if self._depth:
            self._depth += 1
            try:
                yield True
            finally:
                self._depth -= 1
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        self._depth = 1
        try:
            yield True
        finally:
            self._depth = 0
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (releasing the lock). Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> JournalLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
