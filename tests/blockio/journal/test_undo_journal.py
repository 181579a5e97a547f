"""UndoJournal: segments, batches kept or discarded, rollback and crash recovery, on real files."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blockio.disks.target import TargetDisk
from blockio.journal.reader import read_record, scan_headers
from blockio.journal.records import JournalCorrupt
from blockio.journal.undo_journal import UndoJournal
from tests.support.damage import flip_byte

KiB = 1 << 10
MiB = 1 << 20
DISK = "vm1-disk0"

Extents = list[tuple[int, bytes]]


def journal_group(target: TargetDisk, journal: UndoJournal, writes: Extents) -> None:
    """What the batch writer does with one group, spelled out on the journal API."""
    old = [target.read(offset, len(data)) for offset, data in writes]
    for (offset, _), data in zip(writes, old, strict=True):
        journal.append(offset, data, 1_700_000_000_000_000_000)
    journal.sync()
    for offset, data in writes:
        target.write(offset, data)


def committed_batch(target: TargetDisk, journal: UndoJournal, seq: int, writes: Extents) -> None:
    journal.begin(seq)
    journal_group(target, journal, writes)
    target.sync()
    journal.end(keep=True)


def seqs_in(segment: Path) -> list[int]:
    with open(segment, "rb") as f:
        headers, torn_at = scan_headers(f, segment)
    assert torn_at is None
    return [h.seq for h in headers]


@pytest.fixture
def content() -> bytes:
    return os.urandom(MiB)


@pytest.fixture
def target(file_target: Callable[[bytes], Path], content: bytes) -> Iterator[TargetDisk]:
    disk = TargetDisk.open(file_target(content))
    yield disk
    disk.close()


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "retention" / DISK


@pytest.fixture
def journal(journal_dir: Path) -> Iterator[UndoJournal]:
    opened = UndoJournal.open(journal_dir, DISK)
    yield opened
    opened.close()


def reopen(journal: UndoJournal, **kwargs: int) -> UndoJournal:
    """Drop the journal as a crash would (nothing more is written) and open it again."""
    journal.close()
    return UndoJournal.open(journal.directory, journal.disk_id, **kwargs)


def test_open_creates_the_directory_and_a_private_first_segment(journal_dir: Path) -> None:
    with UndoJournal.open(journal_dir, DISK) as journal:
        [segment] = journal.segments()
    assert segment == journal_dir / "seg-00000001.undo"
    assert segment.stat().st_size == 0
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600


def test_rollback_restores_the_bytes_and_the_segment_size(
    target: TargetDisk, journal: UndoJournal, content: bytes
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(4 * KiB))])
    before, size_before = target.read(0, MiB), journal.current_segment.stat().st_size
    journal.begin(2)
    journal_group(target, journal, [(8 * KiB, os.urandom(64 * KiB))])
    journal_group(target, journal, [(4 * KiB, os.urandom(16 * KiB)), (64 * KiB, bytes(8 * KiB))])
    assert target.read(0, MiB) != before

    assert journal.rollback(target) == 3
    assert target.read(0, MiB) == before
    assert journal.current_segment.stat().st_size == size_before
    assert seqs_in(journal.current_segment) == [1]


def test_rollback_drops_records_that_were_never_written_out(
    target: TargetDisk, journal: UndoJournal, content: bytes
) -> None:
    journal.begin(1)
    journal.append(0, target.read(0, 4 * KiB), 1)  # buffered; the target was never touched
    assert journal.rollback(target) == 0
    assert journal.current_segment.stat().st_size == 0
    assert target.read(0, MiB) == content


def test_end_keep_false_discards_the_batch(target: TargetDisk, journal: UndoJournal) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(4 * KiB))])
    size_before = journal.current_segment.stat().st_size
    journal.begin(2)
    journal_group(target, journal, [(0, os.urandom(256 * KiB))])
    journal.end(keep=False)
    assert journal.current_segment.stat().st_size == size_before
    assert seqs_in(journal.current_segment) == [1]


def test_end_keep_true_writes_out_records_appended_since_the_last_sync(
    target: TargetDisk, journal: UndoJournal
) -> None:
    journal.begin(1)
    journal.append(0, target.read(0, 512), 1)
    journal.end(keep=True)
    assert seqs_in(journal.current_segment) == [1]


def test_a_batch_never_spans_segments_and_the_next_one_rolls(
    target: TargetDisk, journal_dir: Path
) -> None:
    with UndoJournal.open(journal_dir, DISK, segment_bytes=64 * KiB) as journal:
        committed_batch(target, journal, 1, [(0, os.urandom(48 * KiB))])
        committed_batch(
            target, journal, 2, [(i * 16 * KiB, os.urandom(16 * KiB)) for i in range(8)]
        )
        committed_batch(target, journal, 3, [(0, os.urandom(4 * KiB))])
        assert [p.name for p in journal.segments()] == ["seg-00000001.undo", "seg-00000002.undo"]
        assert seqs_in(journal.segments()[0]) == [1, 2, 2, 2, 2, 2, 2, 2, 2]
        assert seqs_in(journal.segments()[1]) == [3]
        assert journal.current_segment == journal.segments()[1]


def test_begin_is_refused_until_recover_has_looked_at_existing_records(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(512))])
    journal = reopen(journal)
    with pytest.raises(RuntimeError, match="recover"):
        journal.begin(2)
    assert journal.recover(target, committed_seq=1) == 0
    journal.begin(2)
    journal.close()


def test_append_without_a_batch_is_refused(journal: UndoJournal) -> None:
    with pytest.raises(RuntimeError, match="no batch is open"):
        journal.append(0, bytes(512), 1)


def test_recover_leaves_committed_batches_untouched(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(64 * KiB))])
    committed_batch(target, journal, 2, [(32 * KiB, os.urandom(64 * KiB))])
    on_target, segment = target.read(0, MiB), journal.current_segment.read_bytes()
    journal = reopen(journal)
    assert journal.recover(target, committed_seq=2) == 0
    journal.close()
    assert target.read(0, MiB) == on_target
    assert journal.current_segment.read_bytes() == segment


def test_recover_rolls_back_a_batch_cut_off_after_its_records_were_synced(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(64 * KiB))])
    acknowledged, size_acknowledged = target.read(0, MiB), journal.current_segment.stat().st_size
    journal.begin(2)
    journal_group(target, journal, [(16 * KiB, os.urandom(64 * KiB))])
    new = [(0, os.urandom(32 * KiB)), (512 * KiB, os.urandom(32 * KiB))]
    for offset, data in new:
        journal.append(offset, target.read(offset, len(data)), 2)
    journal.sync()
    target.write(*new[0])  # the crash comes before the second write of the group

    journal = reopen(journal)
    assert journal.recover(target, committed_seq=1) == 3
    journal.close()
    assert target.read(0, MiB) == acknowledged
    assert journal.current_segment.stat().st_size == size_acknowledged
    assert seqs_in(journal.current_segment) == [1]


def test_recover_cuts_a_torn_tail_off_a_committed_segment(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(64 * KiB))])
    segment = journal.current_segment.read_bytes()
    on_target = target.read(0, MiB)
    with open(journal.current_segment, "ab") as f:
        f.write(segment[:100])  # the start of a record whose append never finished
    journal = reopen(journal)
    assert journal.recover(target, committed_seq=1) == 0
    journal.close()
    assert journal.current_segment.read_bytes() == segment
    assert target.read(0, MiB) == on_target


def test_recover_rolls_back_a_cut_off_batch_that_ends_in_a_torn_record(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(64 * KiB))])
    acknowledged, size_acknowledged = target.read(0, MiB), journal.current_segment.stat().st_size
    journal.begin(2)
    journal_group(target, journal, [(0, os.urandom(128 * KiB))])
    end_of_group = journal.current_segment.stat().st_size
    journal.append(256 * KiB, target.read(256 * KiB, 64 * KiB), 2)
    journal.sync()
    os.truncate(journal.current_segment, end_of_group + 1000)  # the append was cut short

    journal = reopen(journal)
    assert journal.recover(target, committed_seq=1) == 1
    journal.close()
    assert target.read(0, MiB) == acknowledged
    assert journal.current_segment.stat().st_size == size_acknowledged


def test_recover_skips_a_damaged_last_group_that_never_reached_the_target(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(64 * KiB))])
    acknowledged = target.read(0, MiB)
    journal.begin(2)
    journal_group(target, journal, [(0, os.urandom(64 * KiB))])
    unsynced_start = journal.current_segment.stat().st_size
    # A group written out but not synced: after a power loss its pages may be anything.
    for offset in (128 * KiB, 512 * KiB):
        journal.append(offset, target.read(offset, 64 * KiB), 2)
    journal.sync()
    flip_byte(journal.current_segment, unsynced_start + 1000)

    journal = reopen(journal)
    journal.recover(target, committed_seq=1)
    journal.close()
    assert target.read(0, MiB) == acknowledged


def test_recover_fails_on_damage_in_a_group_that_was_synced_before_another(
    target: TargetDisk, journal: UndoJournal
) -> None:
    journal.begin(1)
    journal_group(target, journal, [(0, os.urandom(64 * KiB))])
    journal_group(target, journal, [(128 * KiB, os.urandom(64 * KiB))])
    flip_byte(journal.current_segment, 1000)
    journal = reopen(journal)
    with pytest.raises(JournalCorrupt, match=r"seg-00000001.undo at byte 0: old data digest"):
        journal.recover(target, committed_seq=0)
    journal.close()


def test_recover_fails_on_a_damaged_header_among_committed_records(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed_batch(target, journal, 1, [(0, os.urandom(4 * KiB))])
    second = journal.current_segment.stat().st_size
    committed_batch(target, journal, 2, [(0, os.urandom(4 * KiB))])
    committed_batch(target, journal, 3, [(0, os.urandom(4 * KiB))])
    flip_byte(journal.current_segment, second + 24)  # the offset field of batch 2's record
    journal = reopen(journal)
    with pytest.raises(JournalCorrupt, match=f"at byte {second}: header digest mismatch"):
        journal.recover(target, committed_seq=3)
    journal.close()


def test_recover_finishes_a_rollback_cut_off_by_a_crash(
    target: TargetDisk, journal: UndoJournal, content: bytes
) -> None:
    journal.begin(1)
    journal_group(target, journal, [(0, os.urandom(64 * KiB))])
    journal_group(target, journal, [(32 * KiB, os.urandom(64 * KiB))])
    # The rollback had put back the newest record only when the process died.
    segment = journal.current_segment
    with open(segment, "rb") as f:
        headers, _ = scan_headers(f, segment)
        newest = read_record(f, headers[-1], segment)
    target.write(newest.offset, newest.data)

    journal = reopen(journal)
    assert journal.recover(target, committed_seq=0) == 2
    journal.close()
    assert target.read(0, MiB) == content
    assert segment.stat().st_size == 0


def test_recover_rolls_back_a_cut_off_batch_alone_in_a_new_segment(
    target: TargetDisk, journal_dir: Path
) -> None:
    journal = UndoJournal.open(journal_dir, DISK, segment_bytes=16 * KiB)
    committed_batch(target, journal, 1, [(0, os.urandom(64 * KiB))])
    first_segment = journal.current_segment.read_bytes()
    acknowledged = target.read(0, MiB)
    journal.begin(2)
    journal_group(target, journal, [(0, os.urandom(64 * KiB))])
    assert journal.current_segment.name == "seg-00000002.undo"

    journal = reopen(journal, segment_bytes=16 * KiB)
    assert journal.recover(target, committed_seq=1) == 1
    first, second = journal.segments()
    journal.close()
    assert target.read(0, MiB) == acknowledged
    assert first.read_bytes() == first_segment
    assert second.stat().st_size == 0


def test_recover_refuses_records_of_another_disk(
    target: TargetDisk, journal: UndoJournal, journal_dir: Path
) -> None:
    journal.begin(1)
    journal_group(target, journal, [(0, os.urandom(4 * KiB))])
    journal.close()
    with (
        UndoJournal.open(journal_dir, "vm2-disk0") as other,
        pytest.raises(JournalCorrupt, match="record of disk 'vm1-disk0' in the journal of"),
    ):
        other.recover(target, committed_seq=0)


def test_close_twice_is_harmless(journal: UndoJournal) -> None:
    journal.close()
    journal.close()
