"""The journal's side of a detected gap: undo records of a batch that cannot be read back are
reported as UndoLost (which batch, where its records start), are cut off unapplied by
`discard_lost`, and the journal then takes batches again. On real files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import DiskConfig
from agent.replication.replica import Replica
from agent.replication.state import DiskProgress
from blockio.batch_writer import BatchWriter, Write
from blockio.disks.target import TargetDisk
from blockio.journal.reader import scan_headers
from blockio.journal.records import CommitRecord, JournalCorrupt, RecordKind
from blockio.journal.rollback import UndoLost
from blockio.journal.undo_journal import UndoJournal
from tests.support.damage import flip_byte

KiB = 1 << 10
MiB = 1 << 20
DISK = "vm1-disk0"


@pytest.fixture
def target(file_target: Callable[[bytes], Path]) -> Iterator[TargetDisk]:
    disk = TargetDisk.open(file_target(os.urandom(MiB)))
    yield disk
    disk.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[UndoJournal]:
    opened = UndoJournal.open(tmp_path / "retention" / DISK, DISK)
    yield opened
    opened.close()


def committed(target: TargetDisk, journal: UndoJournal, seq: int) -> None:
    writer = BatchWriter(target, journal, seq)
    writer.write_group([Write(seq * 64 * KiB, 4 * KiB, os.urandom(4 * KiB))])
    writer.finish()
    writer.committed(keep_undo=True, commit=CommitRecord(DISK, seq, 0, 0))


def two_groups(target: TargetDisk, journal: UndoJournal, seq: int) -> BatchWriter:
    """Batch `seq` left open after two groups of two writes each reached the target."""
    writer = BatchWriter(target, journal, seq)
    writer.write_group([Write(0, 64 * KiB, os.urandom(64 * KiB)), Write(MiB // 2, 4 * KiB, None)])
    writer.write_group([Write(128 * KiB, 64 * KiB, os.urandom(64 * KiB))])
    return writer


def undo_headers(journal: UndoJournal, seq: int) -> list[tuple[int, int]]:
    """(position, payload position) of the undo records of batch `seq` in the current segment."""
    segment = journal.current_segment
    with open(segment, "rb") as f:
        headers, _ = scan_headers(f, segment)
    return [
        (h.position, h.payload_position)
        for h in headers
        if h.seq == seq and h.kind == RecordKind.UNDO
    ]


def test_a_rollback_that_cannot_read_a_synced_record_says_which_batch_was_lost(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1)
    batch_start = journal.current_segment.stat().st_size
    writer = two_groups(target, journal, 2)
    first, _ = undo_headers(journal, 2)[0]
    flip_byte(journal.current_segment, undo_headers(journal, 2)[0][1] + 10)

    with pytest.raises(UndoLost) as lost:
        writer.rollback()

    assert (lost.value.seq, lost.value.batch_start, lost.value.position) == (2, batch_start, first)
    assert isinstance(lost.value, JournalCorrupt) and lost.value.path == journal.current_segment
    assert str(lost.value).startswith("batch 2 cannot be rolled back: segment ")
    assert "old data digest mismatch" in str(lost.value)


def test_discarding_a_lost_batch_cuts_its_records_and_the_journal_goes_on(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1)
    batch_start = journal.current_segment.stat().st_size
    writer = two_groups(target, journal, 2)
    flip_byte(journal.current_segment, undo_headers(journal, 2)[0][1] + 10)
    with pytest.raises(UndoLost) as lost:
        writer.rollback()
    on_target = target.read(0, 64 * KiB)

    writer.discard(lost.value)

    assert journal.current_segment.stat().st_size == batch_start
    assert target.read(0, 64 * KiB) == on_target  # nothing is applied
    committed(target, journal, 2)
    assert journal.last_commit_seq == 2


def test_recovery_reports_a_cut_off_batch_whose_header_is_damaged_and_goes_on_after_discarding(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1)
    committed_end = journal.current_segment.stat().st_size
    two_groups(target, journal, 2)
    second, _ = undo_headers(journal, 2)[1]
    flip_byte(journal.current_segment, second + 24)  # a header field: the scan stops there
    journal.close()  # as a crash leaves it: batch 2 open

    with UndoJournal.open(journal.directory, DISK) as reopened:
        with pytest.raises(UndoLost) as lost:
            reopened.recover(target, committed_seq=1)
        assert (lost.value.seq, lost.value.batch_start) == (2, committed_end)
        assert "header digest mismatch" in str(lost.value)

        reopened.discard_lost(lost.value)
        assert reopened.recover(target, committed_seq=1) == 0
        assert reopened.current_segment.stat().st_size == committed_end
        assert [s.damage for s in reopened.summaries()] == [None]
        committed(target, reopened, 2)
        assert reopened.last_commit_seq == 2


def test_damage_among_committed_records_is_not_taken_for_a_lost_batch(
    target: TargetDisk, journal: UndoJournal
) -> None:
    committed(target, journal, 1)
    second = journal.current_segment.stat().st_size
    committed(target, journal, 2)
    committed(target, journal, 3)
    flip_byte(journal.current_segment, second + 24)
    journal.close()

    with UndoJournal.open(journal.directory, DISK) as reopened:
        with pytest.raises(JournalCorrupt) as damaged:
            reopened.recover(target, committed_seq=3)
        assert not isinstance(damaged.value, UndoLost)


def test_a_disk_whose_journal_cannot_be_recovered_leaves_no_descriptor_open(
    target: TargetDisk, journal: UndoJournal
) -> None:
    for seq in (1, 2, 3):
        committed(target, journal, seq)
    flip_byte(journal.current_segment, undo_headers(journal, 2)[0][0] + 24)
    journal.close()
    replica = Replica(
        DiskConfig(DISK, "g1", target.path, None),
        journal.directory,
        DiskProgress(DISK, last_seq=3, state="ok"),
    )
    before = len(os.listdir("/proc/self/fd"))

    for _ in range(3):  # the agent tries again at each batch
        with pytest.raises(JournalCorrupt):
            replica.open_blocking()

    assert len(os.listdir("/proc/self/fd")) == before
    replica.executor.shutdown()
