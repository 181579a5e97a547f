"""BatchWriter: batches land in order, roll back to the exact previous bytes, and survive crashes
(including a SIGKILL of a real writer process), on files and loop devices."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockio.batch_writer import BatchWriter, Write
from blockio.disks.target import TargetDisk, TargetError
from blockio.journal.reader import scan_headers
from blockio.journal.segments import JournalIOError
from blockio.journal.undo_journal import UndoJournal
from tests.conftest import LoopDeviceFactory

KiB = 1 << 10
MiB = 1 << 20
DISK = "vm1-disk0"
REPO = Path(__file__).resolve().parents[2]


def apply_in_memory(content: bytearray, writes: list[Write]) -> None:
    for write in writes:
        data = bytes(write.length) if write.data is None else write.data
        content[write.offset : write.offset + write.length] = data


def segment_seqs(journal: UndoJournal) -> list[int]:
    seqs = []
    for segment in journal.segments():
        with open(segment, "rb") as f:
            headers, torn_at = scan_headers(f, segment)
        assert torn_at is None
        seqs += [h.seq for h in headers]
    return seqs


def committed(
    target: TargetDisk, journal: UndoJournal, seq: int, groups: list[list[Write]]
) -> None:
    writer = BatchWriter(target, journal, seq)
    for group in groups:
        writer.write_group(group)
    writer.finish()
    writer.committed(keep_undo=True)


@pytest.fixture(params=["file", "loop-512", "loop-4096"])
def target_path(
    request: pytest.FixtureRequest, file_target: Callable[[bytes], Path], tmp_path: Path
) -> Path:
    """A 2 MiB target full of random bytes: a file or a loop device."""
    content = os.urandom(2 * MiB)
    if request.param == "file":
        return file_target(content)
    make_loop: LoopDeviceFactory = request.getfixturevalue("loop_device")
    device = make_loop(2 * MiB, int(request.param.removeprefix("loop-")))
    with TargetDisk.open(device) as disk:
        disk.write(0, content)
        disk.sync()
    return device


@pytest.fixture
def target(target_path: Path) -> Iterator[TargetDisk]:
    with TargetDisk.open(target_path) as disk:
        yield disk


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[UndoJournal]:
    with UndoJournal.open(tmp_path / "retention" / DISK, DISK) as opened:
        yield opened


def overlapping_groups() -> list[list[Write]]:
    return [
        [
            Write(0, 64 * KiB, os.urandom(64 * KiB)),
            Write(32 * KiB, 64 * KiB, None),  # overlaps the first write
            Write(1 * MiB, 4 * KiB, bytes(4 * KiB)),
        ],
        [
            Write(16 * KiB, 128 * KiB, os.urandom(128 * KiB)),  # over both of group 1
            Write(16 * KiB, 8 * KiB, memoryview(os.urandom(16 * KiB))[4 * KiB : 12 * KiB]),
            Write(2 * MiB - 8 * KiB, 8 * KiB, b"\x5a" * 8 * KiB),
        ],
    ]


def test_writes_land_in_order_and_the_later_one_wins(
    target: TargetDisk, journal: UndoJournal
) -> None:
    expected = bytearray(target.read(0, target.size_bytes))
    groups = overlapping_groups()
    writer = BatchWriter(target, journal, 1)
    for group in groups:
        writer.write_group(group)
        apply_in_memory(expected, group)
    writer.finish()
    writer.committed(keep_undo=True)
    assert target.read(0, target.size_bytes) == expected
    assert segment_seqs(journal) == [1] * 6


def test_rollback_of_overlapping_writes_restores_the_exact_previous_bytes(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1, [[Write(0, 4 * KiB, os.urandom(4 * KiB))]])
    before = target.read(0, target.size_bytes)
    segment_size = journal.current_segment.stat().st_size

    writer = BatchWriter(target, journal, 2)
    for group in overlapping_groups():
        writer.write_group(group)
    assert writer.rollback() == 6

    assert target.read(0, target.size_bytes) == before
    assert journal.current_segment.stat().st_size == segment_size


def test_recover_after_a_crash_mid_batch_restores_the_previous_bytes(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1, [[Write(MiB, 64 * KiB, os.urandom(64 * KiB))]])
    acknowledged = target.read(0, target.size_bytes)
    writer = BatchWriter(target, journal, 2)
    for group in overlapping_groups():
        writer.write_group(group)
    # The process dies here: no finish, no commit. Nothing more is written.
    journal.close()

    with UndoJournal.open(journal.directory, DISK) as reopened:
        assert reopened.recover(target, committed_seq=1) == 6
        assert segment_seqs(reopened) == [1]
    assert target.read(0, target.size_bytes) == acknowledged


def test_committed_batches_survive_recover_untouched(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1, overlapping_groups())
    committed(target, journal, 2, overlapping_groups())
    on_target = target.read(0, target.size_bytes)
    journal.close()
    with UndoJournal.open(journal.directory, DISK) as reopened:
        assert reopened.recover(target, committed_seq=2) == 0
        assert segment_seqs(reopened) == [1] * 6 + [2] * 6
    assert target.read(0, target.size_bytes) == on_target


def test_a_resync_batch_keeps_no_undo_data(target: TargetDisk, journal: UndoJournal) -> None:
    committed(target, journal, 1, [[Write(0, 4 * KiB, os.urandom(4 * KiB))]])
    segment_size = journal.current_segment.stat().st_size
    writer = BatchWriter(target, journal, 2)
    writer.write_group([Write(0, MiB, os.urandom(MiB))])
    writer.finish()
    writer.committed(keep_undo=False)
    assert journal.current_segment.stat().st_size == segment_size
    assert segment_seqs(journal) == [1]


def test_records_carry_the_clock_of_their_group(target: TargetDisk, journal: UndoJournal) -> None:
    ticks = iter([111, 222])
    writer = BatchWriter(target, journal, 1, clock=lambda: next(ticks))
    writer.write_group([Write(0, 4 * KiB, None), Write(8 * KiB, 4 * KiB, None)])
    writer.write_group([Write(0, 4 * KiB, os.urandom(4 * KiB))])
    writer.committed(keep_undo=True)
    segment = journal.current_segment
    with open(segment, "rb") as f:
        headers, _ = scan_headers(f, segment)
    assert [h.time_ns for h in headers] == [111, 111, 222]


def test_data_of_the_wrong_length_is_refused_before_anything_is_touched(
    target: TargetDisk, journal: UndoJournal
) -> None:
    before = target.read(0, target.size_bytes)
    writer = BatchWriter(target, journal, 1)
    with pytest.raises(
        ValueError, match="write at offset 8192: 4095 bytes of data for length 4096"
    ):
        writer.write_group([Write(0, 4096, bytes(4096)), Write(8192, 4096, bytes(4095))])
    assert journal.current_segment.stat().st_size == 0
    assert target.read(0, target.size_bytes) == before


def test_an_extent_outside_the_disk_fails_before_the_journal_or_target_is_touched(
    target: TargetDisk, journal: UndoJournal
) -> None:
    before = target.read(0, target.size_bytes)
    writer = BatchWriter(target, journal, 1)
    outside = Write(target.size_bytes - 4096, 8192, None)
    with pytest.raises(TargetError, match="lies outside the disk"):
        writer.write_group([Write(0, 4096, os.urandom(4096)), outside])
    assert writer.rollback() == 0
    assert journal.current_segment.stat().st_size == 0
    assert target.read(0, target.size_bytes) == before


sector_extents = st.tuples(st.integers(0, 127), st.integers(1, 32), st.sampled_from("rzp"))


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.lists(sector_extents, min_size=1, max_size=5), min_size=1, max_size=4))
def test_any_batch_of_overlapping_writes_rolls_back_exactly(
    groups: list[list[tuple[int, int, str]]],
) -> None:
    sector = 512
    with tempfile.TemporaryDirectory() as scratch:
        content = os.urandom(160 * sector)
        path = Path(scratch) / "target.img"
        path.write_bytes(content)
        with TargetDisk.open(path) as target, UndoJournal.open(Path(scratch) / DISK, DISK) as j:
            writer = BatchWriter(target, j, 1)
            for group in groups:
                writes = []
                for start, count, kind in group:
                    length = count * sector
                    data = {
                        "r": lambda n: os.urandom(n),
                        "z": lambda n: None,
                        "p": lambda n: b"\xab" * n,
                    }[kind](length)
                    writes.append(Write(start * sector, length, data))
                writer.write_group(writes)
            writer.rollback()
        assert path.read_bytes() == content
        assert (Path(scratch) / DISK / "seg-00000001.undo").stat().st_size == 0


CHILD = textwrap.dedent(
    """
    import os, random, sys
    from pathlib import Path
    from blockio.batch_writer import BatchWriter, Write
    from blockio.disks.target import TargetDisk
    from blockio.journal.undo_journal import UndoJournal

    target = TargetDisk.open(sys.argv[1])
    journal = UndoJournal.open(Path(sys.argv[2]), sys.argv[3])
    journal.recover(target, committed_seq=1)
    writer = BatchWriter(target, journal, 2)
    rng = random.Random(int(sys.argv[4]))
    sectors = target.size_bytes // 4096
    for group in range(100_000):
        writes = []
        for _ in range(4):
            count = rng.randrange(1, 65)
            offset = rng.randrange(0, sectors - count + 1) * 4096
            kind = rng.random()
            if kind < 0.2:
                data = None
            elif kind < 0.6:
                data = os.urandom(count * 4096)
            else:
                data = bytes([rng.randrange(256)]) * (count * 4096)
            writes.append(Write(offset, count * 4096, data))
        writer.write_group(writes)
        print(group, flush=True)
    """
)


@pytest.mark.parametrize("groups_before_kill", [1, 6])
def test_sigkill_of_a_writer_process_mid_batch_is_undone_by_recover(
    target_path: Path, tmp_path: Path, groups_before_kill: int
) -> None:
    journal_dir = tmp_path / "retention" / DISK
    with TargetDisk.open(target_path) as target, UndoJournal.open(journal_dir, DISK) as journal:
        committed(target, journal, 1, [[Write(0, 256 * KiB, os.urandom(256 * KiB))]])
        acknowledged = target.read(0, target.size_bytes)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target_path), str(journal_dir), DISK, "7"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        for _ in range(groups_before_kill):
            assert child.stdout.readline(), "the writer died before it was killed"
        # The child is now somewhere in the next group: reading, journaling, syncing or writing.
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with TargetDisk.open(target_path) as target, UndoJournal.open(journal_dir, DISK) as journal:
        assert target.read(0, target.size_bytes) != acknowledged
        assert journal.recover(target, committed_seq=1) >= 4 * groups_before_kill
        assert target.read(0, target.size_bytes) == acknowledged
        assert segment_seqs(journal) == [1]


@pytest.fixture
def small_retention_drive(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted in tmp_path: a retention drive that fills up."""
    mountpoint = tmp_path / "retention"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], check=True
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_full_retention_drive_fails_the_group_before_the_target_is_touched(
    small_retention_drive: Path, file_target: Callable[[bytes], Path]
) -> None:
    content = os.urandom(2 * MiB)  # incompressible old data: every byte needs journal space
    with (
        TargetDisk.open(file_target(content)) as target,
        UndoJournal.open(small_retention_drive / DISK, DISK) as journal,
    ):
        writer = BatchWriter(target, journal, 1)
        group = [Write(i * 128 * KiB, 128 * KiB, bytes(128 * KiB)) for i in range(8)]
        with pytest.raises(JournalIOError) as caught:
            writer.write_group(group)
        assert caught.value.errno == errno.ENOSPC
        assert str(caught.value).startswith(f"undo journal segment {journal.current_segment}: ")
        writer.rollback()
        assert target.read(0, target.size_bytes) == content
        assert journal.current_segment.stat().st_size == 0

        # The space is back: the next batch goes through.
        committed(target, journal, 1, [[Write(0, 64 * KiB, bytes(64 * KiB))]])
        assert target.read(0, 64 * KiB) == bytes(64 * KiB)
