"""Start-up recovery after a power cut: the journal's durable prefix is trusted and the torn,
never-synced tail of the newest segment is cut off, whatever mix of its pages survived.

Each test builds the segment a power cut leaves, byte for byte: everything up to the last sync
as written, and after it only the pages the cut kept (the others read as zeros), the file's size
as the appends left it. Seeded, so every state is reproduced exactly.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from blockio.batch_writer import BatchWriter, Write
from blockio.disks.target import TargetDisk
from blockio.journal.reader import scan_headers
from blockio.journal.records import CommitRecord, JournalCorrupt, RecordKind
from blockio.journal.rollback import UndoLost
from blockio.journal.segments import JournalIOError
from blockio.journal.undo_journal import UndoJournal
from tests.support.damage import zero_bytes

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4 * KiB
DISK = "vm1-disk0"


@pytest.fixture
def rng() -> random.Random:
    return random.Random(14)


@pytest.fixture
def target(file_target: Callable[[bytes], Path], rng: random.Random) -> Iterator[TargetDisk]:
    disk = TargetDisk.open(file_target(rng.randbytes(MiB)))
    yield disk
    disk.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[UndoJournal]:
    with UndoJournal.open(tmp_path / DISK, DISK) as opened:
        yield opened


def committed(target: TargetDisk, journal: UndoJournal, seq: int, rng: random.Random) -> int:
    """Batch `seq` (one random 16 KiB write) applied and committed with its COMMIT record, as
    the agent does it. Returns the segment's durable size: the COMMIT record is not synced."""
    writer = BatchWriter(target, journal, seq)
    writer.write_group([Write(seq * 64 * KiB, 16 * KiB, rng.randbytes(16 * KiB))])
    writer.finish()
    synced = journal.current_segment.stat().st_size
    writer.committed(keep_undo=True, commit=CommitRecord(DISK, seq, seq, seq))
    return synced


def unsynced_group(target: TargetDisk, journal: UndoJournal, extents: Iterable[int]) -> None:
    """The undo records of a group of 64 KiB writes at `extents`, written out but not synced:
    the power is cut before the sync, so the group never touches the target."""
    for offset in extents:
        journal.append(offset, target.read(offset, 64 * KiB), 1)
    journal.sync()  # writes the records out; the cut below drops what this sync made durable


def two_synced_groups(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> tuple[int, bytes]:
    """Batch 1 committed, then batch 2 open with two groups synced and on the target. Returns
    where batch 2's records start and the target as batch 1 left it."""
    committed(target, journal, 1, rng)
    batch_start = journal.current_segment.stat().st_size  # after the COMMIT record
    acknowledged = target.read(0, MiB)
    writer = BatchWriter(target, journal, 2)
    writer.write_group([Write(0, 64 * KiB, rng.randbytes(64 * KiB))])
    writer.write_group([Write(128 * KiB, 64 * KiB, rng.randbytes(64 * KiB))])
    return batch_start, acknowledged


def power_cut(segment: Path, synced: int, kept: Callable[[int], bool]) -> None:
    """Leave `segment` as a power cut does: bytes before `synced` as written, and of each page
    after it only those for which `kept(page index)` holds; the others read as zeros."""
    data = bytearray(segment.read_bytes())
    for page in range(synced // PAGE, (len(data) + PAGE - 1) // PAGE):
        if not kept(page):
            start = max(page * PAGE, synced)
            data[start : (page + 1) * PAGE] = bytes(len(data[start : (page + 1) * PAGE]))
    segment.write_bytes(bytes(data))


def undo_positions(segment: Path, seq: int) -> list[int]:
    with open(segment, "rb") as f:
        headers, _ = scan_headers(f, segment)
    return [h.position for h in headers if h.seq == seq and h.kind == RecordKind.UNDO]


def restart(journal: UndoJournal) -> UndoJournal:
    journal.close()
    return UndoJournal.open(journal.directory, DISK)


def test_a_commit_record_whose_first_sector_was_lost_is_cut_off_and_written_again(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> None:
    committed(target, journal, 1, rng)
    synced = committed(target, journal, 2, rng)
    acknowledged = target.read(0, MiB)
    segment = journal.current_segment
    zero_bytes(segment, synced, 512 - synced % 512)  # its first sector lost, its end kept

    journal = restart(journal)
    assert journal.recover(target, committed_seq=2) == 0
    assert segment.stat().st_size == synced
    # What start-up does next (complete_commit_records): the record comes back from state.db.
    journal.append_commits([CommitRecord(DISK, 2, 2, 2, records=1, undo_bytes=16 * KiB)])
    assert journal.last_commit_seq == 2
    assert [s.damage for s in journal.summaries()] == [None]
    journal.close()
    assert target.read(0, MiB) == acknowledged


def test_a_commit_record_whose_payload_was_lost_is_cut_off(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> None:
    synced = committed(target, journal, 1, rng)
    segment = journal.current_segment
    power_cut(segment, synced + 100, lambda page: False)  # its header kept, its JSON not

    journal = restart(journal)
    assert journal.recover(target, committed_seq=1) == 0
    journal.close()
    assert segment.stat().st_size == synced


def test_the_next_batch_first_group_persisted_partly_behind_a_lost_commit_record(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> None:
    committed(target, journal, 1, rng)
    synced = committed(target, journal, 2, rng)
    acknowledged = target.read(0, MiB)
    journal.begin(3)
    unsynced_group(target, journal, [0, 256 * KiB, 512 * KiB])
    segment = journal.current_segment
    # The pages of the COMMIT record and the group's first record lost, the rest kept: zeros
    # followed by the group's later records.
    power_cut(segment, synced, lambda page: page > synced // PAGE + 1)

    journal = restart(journal)
    assert journal.recover(target, committed_seq=2) == 2  # the two records found past the hole
    assert segment.stat().st_size == synced
    journal.close()
    assert target.read(0, MiB) == acknowledged


def test_a_hole_in_the_last_unsynced_group_does_not_cost_the_batch_its_rollback(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> None:
    batch_start, acknowledged = two_synced_groups(target, journal, rng)
    segment = journal.current_segment
    synced = segment.stat().st_size
    unsynced_group(target, journal, [512 * KiB, 640 * KiB, 768 * KiB])
    hole = synced // PAGE + 8  # a page in the middle of the group's second record
    power_cut(segment, synced, lambda page: page != hole)

    journal = restart(journal)
    journal.recover(target, committed_seq=1)
    assert segment.stat().st_size == batch_start
    journal.close()
    assert target.read(0, MiB) == acknowledged


def test_a_hole_in_a_group_synced_before_another_is_a_lost_batch(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> None:
    batch_start, _ = two_synced_groups(target, journal, rng)
    segment = journal.current_segment
    first = undo_positions(segment, 2)[0]
    zero_bytes(segment, first, 8 * KiB)  # bit rot: the second group proves it was synced

    journal = restart(journal)
    with pytest.raises(UndoLost) as lost:
        journal.recover(target, committed_seq=1)
    journal.close()
    assert (lost.value.seq, lost.value.batch_start, lost.value.position) == (2, batch_start, first)


def test_a_hole_followed_by_committed_records_is_damage_not_a_torn_tail(
    target: TargetDisk, journal: UndoJournal, rng: random.Random
) -> None:
    committed(target, journal, 1, rng)
    second = journal.current_segment.stat().st_size
    committed(target, journal, 2, rng)
    committed(target, journal, 3, rng)
    segment = journal.current_segment
    zero_bytes(segment, second, 512)

    journal = restart(journal)
    with pytest.raises(JournalCorrupt, match=f"at byte {second}: bad magic") as damaged:
        journal.recover(target, committed_seq=3)
    journal.close()
    assert not isinstance(damaged.value, UndoLost)


@pytest.mark.parametrize("seed", range(40))
def test_any_pages_kept_after_the_last_sync_recover_to_the_acknowledged_batch(
    seed: int, file_target: Callable[[bytes], Path], tmp_path: Path
) -> None:
    """The power-loss model of a disk with a volatile cache: any subset of the pages written
    since the last sync survives; the batch in flight has synced groups before its last one."""
    rng = random.Random(seed)
    target = TargetDisk.open(file_target(rng.randbytes(MiB)))
    journal = UndoJournal.open(tmp_path / DISK, DISK)
    try:
        last = rng.randint(1, 3)
        for seq in range(1, last + 1):
            synced = committed(target, journal, seq, rng)
        acknowledged = target.read(0, MiB)
        if rng.random() < 0.8:  # else the cut comes right after the 200
            writer = BatchWriter(target, journal, last + 1)
            for _ in range(rng.randint(0, 2)):
                offset = rng.randrange(0, MiB - 64 * KiB, 512)
                writer.write_group([Write(offset, 64 * KiB, rng.randbytes(64 * KiB))])
                synced = journal.current_segment.stat().st_size
            extents = [rng.randrange(0, MiB - 64 * KiB, 512) for _ in range(rng.randint(1, 4))]
            unsynced_group(target, journal, extents)
        kept = {page for page in range(MiB // PAGE) if rng.random() < 0.5}
        power_cut(journal.current_segment, synced, kept.__contains__)

        journal = restart(journal)
        journal.recover(target, committed_seq=last)
        assert target.read(0, MiB) == acknowledged
        with open(journal.current_segment, "rb") as f:
            headers, torn_at = scan_headers(f, journal.current_segment)
        assert torn_at is None and all(h.seq <= last for h in headers)
    finally:
        journal.close()
        target.close()


def test_a_failed_commit_append_that_cannot_be_cut_off_makes_the_journal_reopen(
    target: TargetDisk, journal: UndoJournal, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the disk-fault run: the sync of a COMMIT record failed, and so did cutting it
    off again. The writer no longer knows where the segment ends, so it refuses to append
    until the journal is opened again; reopening recovers a segment with no damage."""
    committed(target, journal, 1, rng)
    journal.begin(2)  # a batch that keeps no record: its COMMIT record is synced at once
    real_fdatasync, real_ftruncate = os.fdatasync, os.ftruncate

    def failing(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(JournalIOError):
        journal.end(keep=True, commit=CommitRecord(DISK, 2, 2, 2))
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)

    assert journal.needs_reopening
    with pytest.raises(JournalIOError, match="could not be cut off; reopen"):
        journal.begin(3)
    journal = restart(journal)
    journal.recover(target, committed_seq=2)
    assert journal.last_commit_seq == 2
    assert [s.damage for s in journal.summaries()] == [None]
    journal.begin(3)
