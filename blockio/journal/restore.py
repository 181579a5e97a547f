"""Rolling a disk image back to a recovery point with its undo journal.

The image starts as the target is now: an exported copy of it (`export_disk`), or the target
itself (`rollback_in_place`). The plan (`blockio.journal.restore_plan`) gives each UNDO record
above the point the bytes it restores, and every byte is written once, with its value at the
point. Each record is verified against its XXH3-64 before a byte of it is written.

An export runs beside the agent, which keeps replicating. The caller holds the journal shared
(`blockio.journal.segments.shared_lock`) from before the copy to the end, so no record is
truncated or pruned meanwhile; the copy is taken first and the journal read after it. Undo data is
synced before the target is written, so any write the copy may have seen has its record in the
journal by then; records of a batch in flight, or of one being rolled back, count like any other
(they hold values the bytes had at the point or later, and where an older record exists, it wins).

Verification: the copy is read back from the device (page cache dropped after fsync) and
compared chunk by chunk with the digests of what was read from the target; every range written
from the journal is read back the same way and compared with the digest of what was written.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import xxhash

from blockio.disks.target import TargetDisk
from blockio.journal.index import SegmentSummary
from blockio.journal.reader import read_record
from blockio.journal.records import FLAG_ZERO, JournalCorrupt, is_zero
from blockio.journal.restore_plan import PlannedRecord, RecoveryError, RollbackPlan, plan_rollback

COPY_CHUNK = 4 << 20
# Pieces read back for verification are gathered up to this size per read.
_VERIFY_SPAN = 4 << 20

# (phase, bytes done, bytes in all) -> None; phases: "copy", "verify copy", "undo", "verify undo".
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


class Image(Protocol):
    """Where a restore writes: an exported file or the target itself."""

    def write(self, offset: int, data: bytes | memoryview) -> None: ...
    def zero(self, offset: int, length: int) -> None: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def sync(self) -> None: ...
    def drop_cache(self) -> None: ...


class CopyImage(Image, Protocol):
    """An image a target is first copied into (an export). `fresh`: it reads as zeros where
    nothing was written (a new sparse file), so zero chunks of the copy are skipped."""

    path: Path
    size_bytes: int
    fresh: bool


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class SparseFile:
    """A new image file of `size_bytes` (mode 0600: disk contents) where zeros are holes:
    nothing is written for them, and zeroing a written range punches a hole."""

    fresh = True

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(self._fd, size_bytes)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def zero(self, offset: int, length: int) -> None:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if _libc.fallocate(self._fd, mode, offset, length) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(self.path))
        zeros = bytes(min(length, COPY_CHUNK))
        end = offset + length
        while offset < end:
            n = min(end - offset, len(zeros))
            self.write(offset, memoryview(zeros)[:n])
            offset += n

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        done = 0
        while done < length:
            part = os.pread(self._fd, length - done, offset + done)
            if not part:
                raise RecoveryError(f"{self.path}: read at offset {offset + done} hit the end")
            parts.append(part)
            done += len(part)
        return b"".join(parts)

    def sync(self) -> None:
        os.fsync(self._fd)

    def drop_cache(self) -> None:
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class TargetImage:
    """A device written whole: the target itself for a restore in place, or a device an export
    is written to (whose old content must be overwritten, zeros included)."""

    fresh = False

    def __init__(self, target: TargetDisk) -> None:
        self.target = target
        self.path = target.path
        self.size_bytes = target.size_bytes

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.target.write(offset, data)

    def zero(self, offset: int, length: int) -> None:
        self.target.write_zeros(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        return self.target.read(offset, length)

    def sync(self) -> None:
        self.target.sync()

    def drop_cache(self) -> None:
        # The page cache belongs to the file or device, not to the descriptor: any one drops it.
        fd = os.open(self.target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class WrittenPiece:
    """A range written from the journal, with the XXH3-64 of what was written."""

    offset: int
    length: int
    digest: int


def _records_by_segment(plan: RollbackPlan) -> Iterator[tuple[Path, list[PlannedRecord]]]:
    group: list[PlannedRecord] = []
    for planned in plan.planned:
        if group and group[0].segment != planned.segment:
            yield group[0].segment, group
            group = []
        group.append(planned)
    if group:
        yield group[0].segment, group


def apply_plan(
    plan: RollbackPlan, image: Image, progress: Progress = _no_progress
) -> list[WrittenPiece]:
    """Write the ranges of `plan` to `image` (each record verified first), then sync it.
    Returns what was written, for `verify_pieces`.

    Raises RecoveryError when a record is damaged (nothing more is written then); OSError or
    TargetError when the image cannot be written.
    """
    pieces: list[WrittenPiece] = []
    done = 0
    progress("undo", 0, plan.undo_bytes)
    for path, records in _records_by_segment(plan):
        with open(path, "rb") as f:
            for planned in records:
                _apply_record(f, path, planned, image, pieces)
                done += sum(end - start for start, end in planned.ranges)
                progress("undo", done, plan.undo_bytes)
    image.sync()
    return pieces


def _apply_record(
    f: BinaryIO, path: Path, planned: PlannedRecord, image: Image, pieces: list[WrittenPiece]
) -> None:
    header = planned.header
    try:
        record = read_record(f, header, path)
    except JournalCorrupt as exc:
        raise RecoveryError(f"undo record damaged, restore stopped: {exc}") from None
    data = memoryview(record.data)
    for start, end in planned.ranges:
        piece = data[start - header.offset : end - header.offset]
        if header.flags & FLAG_ZERO or is_zero(piece):
            image.zero(start, end - start)
        else:
            image.write(start, piece)
        pieces.append(WrittenPiece(start, end - start, xxhash.xxh3_64_intdigest(piece)))


def verify_pieces(
    image: Image, pieces: Sequence[WrittenPiece], progress: Progress = _no_progress
) -> None:
    """Read every piece back from the device (page cache dropped first) and compare it with
    the digest of what was written. Raises RecoveryError naming the first range that differs."""
    image.drop_cache()
    total = sum(p.length for p in pieces)
    done = 0
    progress("verify undo", 0, total)
    ordered = sorted(pieces, key=lambda p: p.offset)
    i = 0
    while i < len(ordered):
        # Neighbouring pieces are read together.
        j = i + 1
        while (
            j < len(ordered)
            and ordered[j].offset == ordered[j - 1].offset + ordered[j - 1].length
            and ordered[j].offset + ordered[j].length - ordered[i].offset <= _VERIFY_SPAN
        ):
            j += 1
        start = ordered[i].offset
        span = image.read(start, ordered[j - 1].offset + ordered[j - 1].length - start)
        for piece in ordered[i:j]:
            at = piece.offset - start
            if xxhash.xxh3_64_intdigest(span[at : at + piece.length]) != piece.digest:
                raise RecoveryError(
                    f"verification failed: bytes [{piece.offset}, {piece.offset + piece.length})"
                    " do not read back as written"
                )
            done += piece.length
        progress("verify undo", done, total)
        i = j


def copy_target(
    source: TargetDisk, image: CopyImage, progress: Progress = _no_progress
) -> list[int]:
    """Copy `source` whole into `image` (zero chunks left as holes in a fresh image, written as
    zeros otherwise), then sync it. Returns the XXH3-64 of each COPY_CHUNK read, for
    `verify_copy`. Raises TargetError, OSError."""
    size = source.size_bytes
    digests = []
    progress("copy", 0, size)
    for offset in range(0, size, COPY_CHUNK):
        data = source.read(offset, min(COPY_CHUNK, size - offset))
        digests.append(xxhash.xxh3_64_intdigest(data))
        if not is_zero(data):
            image.write(offset, data)
        elif not image.fresh:
            image.zero(offset, len(data))
        progress("copy", offset + len(data), size)
    image.sync()
    return digests


def verify_copy(
    image: CopyImage, digests: Sequence[int], progress: Progress = _no_progress
) -> None:
    """Read the copy back from the device and compare each chunk with what was read from the
    target. Raises RecoveryError naming the first chunk that differs."""
    image.drop_cache()
    size = image.size_bytes
    progress("verify copy", 0, size)
    for index, digest in enumerate(digests):
        offset = index * COPY_CHUNK
        data = image.read(offset, min(COPY_CHUNK, size - offset))
        if xxhash.xxh3_64_intdigest(data) != digest:
            raise RecoveryError(
                f"verification failed: {image.path} at offset {offset} does not read back as copied"
            )
        progress("verify copy", offset + len(data), size)


@dataclass(frozen=True, slots=True)
class DiskRestore:
    """What restoring one disk did."""

    disk: str
    seq: int
    output: Path
    size_bytes: int
    records: int
    undo_bytes: int


def export_disk(
    target: TargetDisk,
    directory: Path,
    disk: str,
    seq: int,
    output: Path,
    summaries: Sequence[SegmentSummary] = (),
    progress: Progress = _no_progress,
) -> DiskRestore:
    """Write `output` (a new sparse file) holding `target` as it was at the end of batch `seq`:
    copy, verify the copy, plan from the journal in `directory`, write, verify. The caller holds
    the journal shared throughout (see the module docstring).

    Raises RecoveryError, TargetError, OSError; `output` is left as far as it got.
    """
    image = SparseFile(output, target.size_bytes)
    try:
        plan = _copy_and_roll_back(target, image, directory, disk, seq, summaries, progress)
    finally:
        image.close()
    return DiskRestore(disk, seq, output, target.size_bytes, plan.records, plan.undo_bytes)


def _copy_and_roll_back(
    target: TargetDisk,
    image: CopyImage,
    directory: Path,
    disk: str,
    seq: int,
    summaries: Sequence[SegmentSummary],
    progress: Progress,
) -> RollbackPlan:
    """An export's work: copy `target` into `image`, verify the copy, plan from the journal in
    `directory`, write, verify. Returns the plan it wrote."""
    digests = copy_target(target, image, progress)
    verify_copy(image, digests, progress)
    plan = plan_rollback(directory, disk, seq, summaries)
    pieces = apply_plan(plan, image, progress)
    verify_pieces(image, pieces, progress)
    return plan


def export_to_device(
    target: TargetDisk,
    device: TargetDisk,
    directory: Path,
    disk: str,
    seq: int,
    summaries: Sequence[SegmentSummary] = (),
    progress: Progress = _no_progress,
) -> DiskRestore:
    """Write `device` (opened for writing, at least as large as `target`) so that its first
    `target.size_bytes` hold `target` as it was at the end of batch `seq`: as `export_disk`,
    with every byte of that range written (zeros too). The caller holds the journal shared
    throughout and has checked that nothing uses the device.

    Raises RecoveryError, TargetError, OSError; the device is left as far as it got.
    """
    image = TargetImage(device)
    image.size_bytes = target.size_bytes  # the device may be larger; what is beyond stays
    plan = _copy_and_roll_back(target, image, directory, disk, seq, summaries, progress)
    return DiskRestore(disk, seq, device.path, target.size_bytes, plan.records, plan.undo_bytes)


def rollback_in_place(
    target: TargetDisk,
    directory: Path,
    disk: str,
    seq: int,
    summaries: Sequence[SegmentSummary] = (),
    progress: Progress = _no_progress,
) -> DiskRestore:
    """Roll `target` itself back to the end of batch `seq`, then verify what was written.
    Nothing else may write the target meanwhile. Idempotent: run again after being cut off, it
    writes the same bytes (the journal is only read).

    Raises RecoveryError, TargetError, OSError.
    """
    image = TargetImage(target)
    plan = plan_rollback(directory, disk, seq, summaries)
    pieces = apply_plan(plan, image, progress)
    verify_pieces(image, pieces, progress)
    return DiskRestore(disk, seq, target.path, target.size_bytes, plan.records, plan.undo_bytes)
