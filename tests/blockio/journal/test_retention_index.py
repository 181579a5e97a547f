"""The journal as its own index: commit records, segment summaries, the sidecar cache, how far
back a journal reaches, pruning, and the commit records start-up completes after a crash."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.replication.retention_gate import complete_commit_records
from agent.replication.state import BatchCommit, StateStore
from blockio.disks.target import TargetDisk
from blockio.journal.catalog import SIDECAR_NAME, load_summaries
from blockio.journal.index import SegmentSummary, restorable_floor, walk_segment
from blockio.journal.reader import read_commit, scan_headers
from blockio.journal.records import CommitRecord, JournalCorrupt, RecordKind, encode_commit
from blockio.journal.segments import shared_lock
from blockio.journal.undo_journal import UndoJournal

KiB = 1 << 10
DISK = "d0"
TAG = {"tag_id": "t1", "name": "nightly", "kind": "app", "group": "g1", "time_ns": 5}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[TargetDisk]:
    path = tmp_path / "target.img"
    path.write_bytes(os.urandom(256 * KiB))
    with TargetDisk.open(path) as disk:
        yield disk


def commit(seq: int, **fields: object) -> CommitRecord:
    return CommitRecord(DISK, seq, 1000 + seq, 2000 + seq, **fields)  # type: ignore[arg-type]


def batch(
    journal: UndoJournal,
    target: TargetDisk,
    seq: int,
    extents: list[tuple[int, int]],
    *,
    keep: bool = True,
    **fields: object,
) -> None:
    """What the agent does for one committed batch: undo first, then the target, then end."""
    journal.begin(seq)
    for offset, length in extents:
        journal.append(offset, target.read(offset, length), 3000 + seq)
    journal.sync()
    for offset, length in extents:
        target.write(offset, os.urandom(length))
    journal.end(keep=keep, commit=commit(seq, **fields))


def test_a_commit_record_reads_back_with_its_tag_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    path.write_bytes(encode_commit(commit(7, tag=TAG, flags=("resync",), records=3)))
    with open(path, "rb") as f:
        [header], torn_at = scan_headers(f, path)
        assert torn_at is None and header.kind == RecordKind.COMMIT and header.seq == 7
        assert read_commit(f, header, path) == commit(7, tag=TAG, flags=("resync",), records=3)


def test_a_damaged_commit_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    raw = bytearray(encode_commit(commit(7, tag=TAG)))
    raw[-5] ^= 0x01
    path.write_bytes(bytes(raw))
    with open(path, "rb") as f:
        [header], _ = scan_headers(f, path)
        with pytest.raises(JournalCorrupt, match="commit record of batch 7: digest mismatch"):
            read_commit(f, header, path)


def test_each_committed_batch_ends_with_a_commit_record(tmp_path: Path, target: TargetDisk) -> None:
    with UndoJournal.open(tmp_path / DISK, DISK) as journal:
        batch(journal, target, 1, [(0, 4 * KiB), (8 * KiB, 512)])
        batch(journal, target, 2, [], tag=TAG)
        segment = journal.current_segment
    with open(segment, "rb") as f:
        headers, _ = scan_headers(f, segment)
        kinds = [(h.kind, h.seq) for h in headers]
        undo, done = RecordKind.UNDO, RecordKind.COMMIT
        assert kinds == [(undo, 1), (undo, 1), (done, 1), (done, 2)]
        first, second = (read_commit(f, h, segment) for h in headers[2:])
    assert (first.undo, first.records, first.undo_bytes) == ("kept", 2, 4 * KiB + 512)
    assert (second.records, second.tag) == (0, TAG)


def test_a_resync_batch_leaves_only_its_commit_record(tmp_path: Path, target: TargetDisk) -> None:
    with UndoJournal.open(tmp_path / DISK, DISK) as journal:
        batch(journal, target, 1, [(0, 4 * KiB)])
        batch(journal, target, 2, [(0, 64 * KiB)], keep=False, flags=("resync",))
        [summary] = journal.summaries()
    assert (summary.records, summary.first_commit_seq, summary.last_commit_seq) == (1, 1, 2)
    assert summary.broken_seq == 2
    assert restorable_floor([summary], 2) == 2  # nothing before the resync can be reached


def test_the_journal_summary_is_what_walking_the_segment_finds(
    tmp_path: Path, target: TargetDisk
) -> None:
    with UndoJournal.open(tmp_path / DISK, DISK, segment_bytes=64 * KiB) as journal:
        for seq in range(1, 9):
            batch(journal, target, seq, [(seq * 4 * KiB, 16 * KiB)])
        live = journal.summaries()
        paths = journal.segments()
    for summary, path in zip(live, paths, strict=True):
        walked = walk_segment(path, DISK, last=path == paths[-1]).tally
        assert walked.summary(summary.number, 0, 0) == SegmentSummary(
            summary.number, 0, 0, **{k: getattr(summary, k) for k in _FIELDS}
        )
    assert [(s.first_commit_seq, s.last_commit_seq) for s in live] == [(1, 4), (5, 8)]
    assert all(s.damage is None for s in live)


_FIELDS = [
    "records",
    "undo_bytes",
    "first_seq",
    "last_seq",
    "first_commit_seq",
    "last_commit_seq",
    "broken_seq",
    "first_time_ns",
    "last_time_ns",
    "pending",
    "damage",
]


def test_the_index_is_rebuilt_from_the_segments_alone(tmp_path: Path, target: TargetDisk) -> None:
    directory = tmp_path / DISK
    with UndoJournal.open(directory, DISK, segment_bytes=64 * KiB) as journal:
        for seq in range(1, 9):
            batch(journal, target, seq, [(0, 16 * KiB)])
    cached, walked = load_summaries(directory, DISK)
    assert not walked
    (directory / SIDECAR_NAME).unlink()
    rebuilt, walked = load_summaries(directory, DISK)
    assert walked
    assert rebuilt == cached


def test_a_cached_summary_is_trusted_only_while_its_segment_is_unchanged(
    tmp_path: Path, target: TargetDisk
) -> None:
    directory = tmp_path / DISK
    with UndoJournal.open(directory, DISK) as journal:
        batch(journal, target, 1, [(0, 4 * KiB)])
    sidecar = json.loads((directory / SIDECAR_NAME).read_text())
    sidecar["segments"][0]["records"] = 99  # a marker: only the cache says so
    (directory / SIDECAR_NAME).write_text(json.dumps(sidecar))
    [summary], _ = load_summaries(directory, DISK)
    assert summary.records == 99
    segment = directory / "seg-00000001.undo"
    os.utime(segment, ns=(1, 1))  # the segment changed behind the cache's back
    [summary], walked = load_summaries(directory, DISK)
    assert walked and summary.records == 1


def summary(number: int, first: int, last: int, **fields: object) -> SegmentSummary:
    return SegmentSummary(
        number,
        0,
        0,
        records=1,
        first_seq=first,
        last_seq=last,
        first_commit_seq=first,
        last_commit_seq=last,
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("segments", "last_seq", "floor"),
    [
        pytest.param([summary(1, 1, 10)], 10, 0, id="the whole journal"),
        pytest.param([summary(3, 5, 8), summary(4, 9, 10)], 10, 4, id="older segments pruned"),
        pytest.param([summary(1, 1, 9)], 10, 0, id="the newest commit record not written yet"),
        pytest.param([summary(1, 1, 8)], 10, 10, id="commit records stop short: tail lost"),
        pytest.param([summary(1, 1, 4), summary(2, 6, 10)], 10, 5, id="a gap between segments"),
        pytest.param(
            [summary(1, 1, 4), summary(2, 5, 10, broken_seq=7)], 10, 7, id="a resync batch"
        ),
        pytest.param(
            [
                summary(1, 1, 4),
                summary(2, 5, 7, damage="byte 9: header digest mismatch"),
                summary(3, 8, 10),
            ],
            10,
            7,
            id="a damaged segment cuts the chain",
        ),
        pytest.param(
            [summary(1, 1, 10, damage="byte 0: bad magic")], 10, 10, id="damaged newest segment"
        ),
        pytest.param([], 10, 10, id="no journal: only the newest batch"),
        pytest.param(
            [summary(1, 1, 9), SegmentSummary(2, 0, 0, records=2, first_seq=10, last_seq=11)],
            10,
            0,
            id="records of the newest batch and of one in flight in a new segment",
        ),
    ],
)
def test_how_far_back_a_journal_reaches(
    segments: list[SegmentSummary], last_seq: int, floor: int
) -> None:
    assert restorable_floor(segments, last_seq) == floor


def test_pruning_deletes_the_oldest_segments_and_moves_the_floor(
    tmp_path: Path, target: TargetDisk
) -> None:
    with UndoJournal.open(tmp_path / DISK, DISK, segment_bytes=64 * KiB) as journal:
        for seq in range(1, 10):
            batch(journal, target, seq, [(0, 16 * KiB)])
        first, second, *_ = journal.summaries()
        assert restorable_floor(journal.summaries(), 9) == 0
        freed = journal.prune([first.number, second.number])
        assert freed == first.size_bytes + second.size_bytes
        assert [p.name for p in journal.segments()] == ["seg-00000003.undo"]
        assert restorable_floor(journal.summaries(), 9) == second.last_commit_seq
        with pytest.raises(ValueError, match="only the oldest sealed segments"):
            journal.prune([journal.summaries()[-1].number])


def test_pruning_waits_for_a_reader_and_a_truncation_waits_too(
    tmp_path: Path, target: TargetDisk
) -> None:
    directory = tmp_path / DISK
    with UndoJournal.open(directory, DISK, segment_bytes=64 * KiB) as journal:
        for seq in range(1, 5):
            batch(journal, target, seq, [(0, 16 * KiB)])
        oldest = journal.summaries()[0].number
        journal.begin(5)
        journal.append(0, target.read(0, 4 * KiB), 1)
        journal.sync()
        rolled_back = threading.Event()
        with shared_lock(directory):
            assert journal.prune([oldest]) == 0  # put off: a reader holds the journal
            rollback = threading.Thread(
                target=lambda: (journal.rollback(target), rolled_back.set())
            )
            rollback.start()
            assert not rolled_back.wait(0.3)  # the truncation waits for the reader
        rollback.join(5)
        assert rolled_back.is_set()
        assert journal.prune([oldest]) > 0


def test_start_up_completes_commit_records_a_crash_lost(tmp_path: Path, target: TargetDisk) -> None:
    directory = tmp_path / DISK
    store = StateStore.open(tmp_path / "state")
    journal = UndoJournal.open(directory, DISK)
    batch(journal, target, 1, [(0, 4 * KiB)])
    journal.begin(2)
    journal.append(0, target.read(0, 4 * KiB), 1)
    journal.sync()
    journal.end(keep=True)  # committed, but its commit record never reached the disk
    journal.close()
    rows = [(1, 4 * KiB), (2, 4 * KiB)]
    for seq, data_bytes in rows:
        store.commit(
            BatchCommit(DISK, seq, b"d", 1000 + seq, 2000 + seq, frozenset(), data_bytes),
            store.progress(DISK),
        )
    journal = UndoJournal.open(directory, DISK)
    journal.recover(target, 2)
    [completed] = complete_commit_records(journal, store, 2)
    assert (completed.seq, completed.undo, completed.records) == (2, "kept", 1)
    assert complete_commit_records(journal, store, 2) == []
    assert restorable_floor(journal.summaries(), 2) == 0
    journal.close()
    store.close()


def test_undo_records_lost_with_a_segment_tail_are_recorded_missing(
    tmp_path: Path, target: TargetDisk
) -> None:
    directory = tmp_path / DISK
    store = StateStore.open(tmp_path / "state")
    with UndoJournal.open(directory, DISK) as journal:
        for seq in range(1, 5):
            batch(journal, target, seq, [(0, 4 * KiB)])
            store.commit(
                BatchCommit(DISK, seq, b"d", 1, 2, frozenset(), 4 * KiB), store.progress(DISK)
            )
        end_of_batch_2 = journal.summaries()[0].size_bytes // 2
        segment = journal.current_segment
    os.truncate(segment, end_of_batch_2 + 100)  # inside a record of batch 3
    journal = UndoJournal.open(directory, DISK)
    journal.recover(target, 4)
    completed = complete_commit_records(journal, store, 4)
    assert [(c.seq, c.undo) for c in completed] == [(3, "missing"), (4, "missing")]
    assert restorable_floor(journal.summaries(), 4) == 4
    journal.close()
    store.close()
