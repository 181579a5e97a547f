"""The undo journal of one disk: append-only segment files of undo records.

Layout: `<retention>/<disk-id>/seg-<8 digit number>.undo`; records are those of
`blockio.undo_record`, appended in the order the batch writer reads old data. A batch's records
never span two segments, so whole segments can later be pruned without splitting a batch.

Durability rule the batch writer relies on: the records of a group are synced (`sync()`) before
any byte of that group touches the target. So after a crash, every record whose extent may have
been written is durable, and only the last sync group of the open batch may be incomplete; such a
group never touched the target. Its first record carries FLAG_GROUP_START, and recovery skips the
group when any of its records is damaged instead of failing (see `_apply_newest_first`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from blockio.target import TargetDisk
from blockio.undo_record import (
    FLAG_GROUP_START,
    JournalCorrupt,
    RecordHeader,
    RecordKind,
    UndoRecord,
    encode_record_parts,
    read_record,
    scan_headers,
)

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 256 << 20
SEGMENT_NAME = "seg-{:08d}.undo"
_SEGMENT_NAME_RE = re.compile(r"seg-(\d{8})\.undo")

# Small records are gathered and written with one writev; large ones go out almost at once.
_FLUSH_BYTES = 1 << 20
# Linux IOV_MAX is 1024; each record is two buffers.
_FLUSH_BUFFERS = 512


class JournalIOError(Exception):
    """Writing, syncing or truncating a segment failed. `.errno` tells ENOSPC (retention drive
    full) from EIO and the rest; `str()` is one line naming the segment."""

    def __init__(self, path: Path, what: str, exc: OSError) -> None:
        reason = f"{what} failed: {exc.strerror or exc}"
        super().__init__(f"undo journal segment {path}: {reason}")
        self.path = path
        self.errno = exc.errno
        self.reason = reason


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_numbers(directory: Path) -> list[int]:
    numbers = []
    for entry in os.listdir(directory):
        match = _SEGMENT_NAME_RE.fullmatch(entry)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


class UndoJournal:
    """The undo records of one disk. Not thread-safe: one thread per disk drives it, like the
    target. Build it with `UndoJournal.open`."""

    def __init__(
        self, directory: Path, disk_id: str, segment_bytes: int, number: int, fd: int
    ) -> None:
        self.directory = directory
        self.disk_id = disk_id
        self.segment_bytes = segment_bytes
        self._number = number
        self._fd = fd
        self._size = os.fstat(fd).st_size
        # What a crash may have left: nothing may be appended before recover() has looked.
        self._needs_recovery = any(
            self._segment_path(n).stat().st_size > 0 for n in _segment_numbers(directory)
        )
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._unsynced = False
        self._batch_seq: int | None = None
        self._batch_start = 0
        self._next_starts_group = False

    @classmethod
    def open(
        cls, directory: Path, disk_id: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> UndoJournal:
        """Open the journal in `directory` (created, and its parent fsynced, if missing) for
        appending to its newest segment (created if there is none).

        A journal that holds records must be `recover()`ed before its first `begin()`.
        Raises OSError when the directory or segment cannot be created or opened.
        """
        directory = Path(directory)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_directory(directory.parent)
        numbers = _segment_numbers(directory)
        number = numbers[-1] if numbers else 1
        fd = cls._open_segment(directory, number, create=not numbers)
        return cls(directory, disk_id, segment_bytes, number, fd)

    @staticmethod
    def _open_segment(directory: Path, number: int, *, create: bool) -> int:
        path = directory / SEGMENT_NAME.format(number)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        # 0600: undo data is disk contents.
        fd = os.open(path, flags, 0o600)
        if create:
            # The name must be durable before records in the file are called durable.
            _fsync_directory(directory)
        return fd

    def _segment_path(self, number: int) -> Path:
        return self.directory / SEGMENT_NAME.format(number)

    @property
    def current_segment(self) -> Path:
        """The segment that appends go to."""
        return self._segment_path(self._number)

    def segments(self) -> list[Path]:
        """Every segment file, oldest first."""
        return [self._segment_path(n) for n in _segment_numbers(self.directory)]

    def _require_batch(self) -> int:
        if self._batch_seq is None:
            raise RuntimeError(f"undo journal {self.directory}: no batch is open")
        return self._batch_seq

    def begin(self, seq: int) -> None:
        """Start the records of batch `seq`. Rolls to a new segment first when the current one
        has reached `segment_bytes`.

        Raises RuntimeError when a batch is already open or when the journal holds records that
        `recover()` has not looked at yet; JournalIOError/OSError when a new segment cannot be
        created.
        """
        if self._batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: batch {self._batch_seq} is still open"
            )
        if self._needs_recovery:
            raise RuntimeError(
                f"undo journal {self.directory}: recover() must run before the first batch"
            )
        if self._size >= self.segment_bytes:
            fd = self._open_segment(self.directory, self._number + 1, create=True)
            os.close(self._fd)
            self._fd = fd
            self._number += 1
            self._size = 0
        self._batch_seq = seq
        self._batch_start = self._size
        self._next_starts_group = True

    def append(self, offset: int, old: bytes | memoryview, time_ns: int) -> None:
        """Append the old data of `[offset, offset + len(old))` to the open batch. Buffered:
        durable only after `sync()`.

        Raises RuntimeError without an open batch; JournalIOError when writing fails.
        """
        seq = self._require_batch()
        data = old if isinstance(old, bytes) else bytes(old)
        record = UndoRecord(
            disk=self.disk_id,
            seq=seq,
            offset=offset,
            length=len(data),
            time_ns=time_ns,
            data=data,
            group_start=self._next_starts_group,
        )
        self._next_starts_group = False
        head, payload = encode_record_parts(record)
        self._pending.append(head)
        self._pending_bytes += len(head)
        if payload:
            self._pending.append(payload)
            self._pending_bytes += len(payload)
        self._size += len(head) + len(payload)
        if self._pending_bytes >= _FLUSH_BYTES or len(self._pending) >= _FLUSH_BUFFERS:
            self._flush()

    def _flush(self) -> None:
        buffers = [memoryview(b).cast("B") for b in self._pending]
        self._pending = []
        self._pending_bytes = 0
        self._unsynced = True
        first = 0
        try:
            while first < len(buffers):
                written = os.writev(self._fd, buffers[first:])
                while first < len(buffers) and written >= len(buffers[first]):
                    written -= len(buffers[first])
                    first += 1
                if written:
                    buffers[first] = buffers[first][written:]
        except OSError as exc:
            raise JournalIOError(self.current_segment, "append", exc) from exc

    def _datasync(self, fd: int, path: Path) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise JournalIOError(path, "fdatasync", exc) from exc

    def sync(self) -> None:
        """Write out buffered records and fdatasync: every record appended so far is on stable
        storage when this returns. The next append starts a new sync group.

        Raises JournalIOError.
        """
        self._flush()
        self._datasync(self._fd, self.current_segment)
        self._unsynced = False
        if self._batch_seq is not None:
            self._next_starts_group = True

    def _truncate(self, fd: int, path: Path, size: int) -> None:
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            raise JournalIOError(path, f"truncate to {size} bytes", exc) from exc
        self._datasync(fd, path)

    def _truncate_batch(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        self._truncate(self._fd, self.current_segment, self._batch_start)
        self._size = self._batch_start
        self._unsynced = False
        self._batch_seq = None

    def end(self, *, keep: bool) -> None:
        """Close the open batch after the caller committed it. keep=True: its records stay, as
        retention (made durable if they were not yet). keep=False (a resync batch): they are
        discarded; the segment is truncated back to the batch start and synced.

        Raises RuntimeError without an open batch; JournalIOError.
        """
        self._require_batch()
        if not keep:
            self._truncate_batch()
            return
        if self._pending or self._unsynced:
            self.sync()
        self._batch_seq = None

    def rollback(self, target: TargetDisk) -> int:
        """Undo the open batch on `target`: its records are read back from the segment one at a
        time and written newest first, the target is synced, then the segment is truncated back
        to the batch start and synced. Returns the number of records applied.

        A crash in the middle leaves the records in place, so `recover()` finishes the job (the
        records are the old data of one consistent state; applying them twice gives the same
        bytes). Raises RuntimeError without an open batch; JournalCorrupt when a synced record is
        damaged; TargetError; JournalIOError.
        """
        self._require_batch()
        # Buffered records never reached the target: it is written only after a sync.
        self._pending = []
        self._pending_bytes = 0
        path = self.current_segment
        with open(path, "rb") as f:
            # A failed append may have left part of a record: that part was never synced.
            headers, _torn_at = scan_headers(f, path, self._batch_start)
            undone = self._apply_newest_first(target, f, path, headers, at_tail=True)
        self._truncate_batch()
        return undone

    def recover(self, target: TargetDisk, committed_seq: int) -> int:
        """At start-up: cut a torn tail off, then roll back the records at the journal's tail
        whose seq is above `committed_seq` (a batch cut off by a crash), exactly as `rollback()`
        does. Returns the number of records applied.

        Committed records are left untouched and unread beyond their headers. Raises
        RuntimeError when a batch is open; JournalCorrupt when a segment is damaged elsewhere than
        in an unsynced tail; TargetError; JournalIOError.
        """
        if self._batch_seq is not None:
            raise RuntimeError(
                f"undo journal {self.directory}: recover() with batch {self._batch_seq} open"
            )
        undone = 0
        # Only the journal's very last records can be an unsynced group.
        at_tail = True
        for number in reversed(_segment_numbers(self.directory)):
            path = self._segment_path(number)
            fd = self._fd if number == self._number else os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                with open(path, "rb") as f:
                    headers, torn_at = scan_headers(f, path)
                    if torn_at is not None:
                        log.warning("undo journal %s: cut a torn tail at byte %d", path, torn_at)
                        self._truncate(fd, path, torn_at)
                    first_open = len(headers)
                    while first_open > 0 and headers[first_open - 1].seq > committed_seq:
                        first_open -= 1
                    cut_off = headers[first_open:]
                    if cut_off:
                        undone += self._apply_newest_first(target, f, path, cut_off, at_tail)
                        self._truncate(fd, path, cut_off[0].position)
                    at_tail = at_tail and not headers
            finally:
                if fd != self._fd:
                    os.close(fd)
            # The batch cut off by the crash ends here once a committed record is found.
            if first_open > 0:
                break
        self._size = os.fstat(self._fd).st_size
        self._needs_recovery = False
        return undone

    def _apply_newest_first(
        self,
        target: TargetDisk,
        f: BinaryIO,
        path: Path,
        headers: list[RecordHeader],
        at_tail: bool,
    ) -> int:
        """Write the old data of `headers` (records of the open batch, file order) to the
        target, newest first, then sync the target. Returns the number of records applied.

        at_tail: these are the journal's last records, so their last sync group may never have
        been synced; a damaged record there means the group never touched the target.
        """
        for header in headers:
            if header.disk != self.disk_id:
                raise JournalCorrupt(
                    path,
                    header.position,
                    f"record of disk {header.disk!r} in the journal of {self.disk_id!r}",
                )
        last_group = max(
            (i for i, h in enumerate(headers) if h.flags & FLAG_GROUP_START), default=0
        )
        applied = 0
        i = len(headers) - 1
        while i >= 0:
            header = headers[i]
            if header.kind != RecordKind.UNDO:
                i -= 1
                continue
            try:
                record = read_record(f, header, path)
            except JournalCorrupt as exc:
                if not at_tail or i < last_group:
                    raise
                # A damaged record in the last sync group: that group was never synced, so it
                # never touched the target. The newer records of it already applied rewrote the
                # bytes they were read from.
                log.warning(
                    "undo journal %s: skipping the unsynced last group at byte %d (%s)",
                    path,
                    headers[last_group].position,
                    exc.reason,
                )
                i = last_group - 1
                continue
            target.write(record.offset, record.data)
            applied += 1
            i -= 1
        target.sync()
        return applied

    def close(self) -> None:
        """Close the segment. Records appended but not synced are dropped, as a crash would drop
        them; an open batch stays in the journal for `recover()`. Safe to call twice."""
        self._pending = []
        self._pending_bytes = 0
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> UndoJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
