"""The rollback plan: each byte restored once, from the oldest record above the point; and the
images it writes, exact, verified and sparse."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockio.disks.target import TargetDisk
from blockio.journal.records import CommitRecord
from blockio.journal.restore import SparseFile, export_disk, rollback_in_place
from blockio.journal.restore_plan import RecoveryError, owned_ranges, plan_rollback
from blockio.journal.undo_journal import UndoJournal

KiB = 1 << 10
SIZE = 512 * KiB
DISK = "d0"

extents = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), min_size=0, max_size=25)


@given(extents)
def test_owned_ranges_give_each_byte_to_the_first_extent_that_covers_it(
    given_extents: list[tuple[int, int]],
) -> None:
    owned = owned_ranges(given_extents)
    owner: dict[int, int] = {}
    for index, (offset, length) in enumerate(given_extents):
        for byte in range(offset, offset + length):
            owner.setdefault(byte, index)
    found: dict[int, int] = {}
    for index, ranges in enumerate(owned):
        assert ranges == sorted(ranges)
        for start, end in ranges:
            assert start < end
            for byte in range(start, end):
                assert byte not in found, "a byte owned twice"
                found[byte] = index
    assert found == owner
    for ranges in owned:  # merged: no two ranges of one extent touch
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))


def replicate(tmp_path: Path, batches: int, seed: int) -> tuple[Path, Path, list[bytes]]:
    """A target and its journal after `batches` batches of overlapping writes, in groups like
    the batch writer's; returns (target path, journal dir, content after each batch)."""
    rng = random.Random(seed)
    path = tmp_path / "target.img"
    path.write_bytes(rng.randbytes(SIZE // 2) + bytes(SIZE // 2))
    directory = tmp_path / "retention" / DISK
    snapshots = [path.read_bytes()]
    with (
        TargetDisk.open(path) as target,
        UndoJournal.open(directory, DISK, segment_bytes=64 * KiB) as journal,
    ):
        for seq in range(1, batches + 1):
            journal.begin(seq)
            for _group in range(rng.randint(1, 3)):
                writes = []
                for _ in range(rng.randint(1, 4)):
                    length = rng.randint(1, 64) * 512
                    offset = rng.randrange(0, SIZE - length + 1, 512)
                    data = bytes(length) if rng.random() < 0.2 else rng.randbytes(length)
                    writes.append((offset, data))
                old = [target.read(offset, len(data)) for offset, data in writes]
                for (offset, _), before in zip(writes, old, strict=True):
                    journal.append(offset, before, seq)
                journal.sync()
                for offset, data in writes:
                    target.write(offset, data)
            target.sync()
            journal.end(keep=True, commit=CommitRecord(DISK, seq, seq, seq))
            snapshots.append(path.read_bytes())
    return path, directory, snapshots


def test_rolling_back_in_place_gives_the_content_at_every_batch(tmp_path: Path) -> None:
    path, directory, snapshots = replicate(tmp_path, batches=12, seed=3)
    pristine = path.read_bytes()
    for seq in range(len(snapshots) - 1, -1, -1):
        path.write_bytes(pristine)
        with TargetDisk.open(path) as target:
            result = rollback_in_place(target, directory, DISK, seq)
        assert path.read_bytes() == snapshots[seq], f"batch {seq}"
        assert result.undo_bytes <= SIZE  # each byte written once at most


def test_each_byte_is_written_once(tmp_path: Path) -> None:
    _, directory, snapshots = replicate(tmp_path, batches=12, seed=4)
    plan = plan_rollback(directory, DISK, 0)
    changed = sum(1 for a, b in zip(snapshots[0], snapshots[-1], strict=True) if a != b)
    written = [r for p in plan.planned for r in p.ranges]
    assert plan.undo_bytes == sum(end - start for start, end in written)
    assert plan.undo_bytes >= changed
    covered: set[int] = set()
    for start, end in written:
        assert covered.isdisjoint(range(start, end))
        covered.update(range(start, end))


def test_an_export_is_exact_and_sparse_where_the_data_is_zero(tmp_path: Path) -> None:
    path, directory, snapshots = replicate(tmp_path, batches=6, seed=5)
    output = tmp_path / "out.img"
    with TargetDisk.open(path, writable=False) as target:
        export_disk(target, directory, DISK, 2, output)
    assert output.read_bytes() == snapshots[2]
    zero_bytes = snapshots[2].count(0)
    # Whole zero chunks of the copy are holes: the file holds little more than its data.
    assert output.stat().st_blocks * 512 <= SIZE - zero_bytes + 256 * KiB


def test_a_damaged_undo_record_stops_the_restore(tmp_path: Path) -> None:
    path, directory, _ = replicate(tmp_path, batches=4, seed=6)
    plan = plan_rollback(directory, DISK, 0)
    victim = next(p for p in plan.planned if p.header.stored_bytes)
    with open(victim.segment, "r+b") as f:
        f.seek(victim.header.payload_position)
        byte = f.read(1)
        f.seek(victim.header.payload_position)
        f.write(bytes([byte[0] ^ 0x40]))
    with (
        TargetDisk.open(path, writable=False) as target,
        pytest.raises(RecoveryError, match="undo record damaged"),
    ):
        export_disk(target, directory, DISK, 0, tmp_path / "out.img")


def test_zeroing_a_written_range_of_a_sparse_file_punches_a_hole(tmp_path: Path) -> None:
    image = SparseFile(tmp_path / "img", 4 << 20)
    image.write(0, os.urandom(4 << 20))
    image.sync()
    image.zero(1 << 20, 2 << 20)
    image.sync()
    image.close()
    data = (tmp_path / "img").read_bytes()
    assert data[1 << 20 : 3 << 20] == bytes(2 << 20)
    assert (tmp_path / "img").stat().st_blocks * 512 <= 2 << 20
