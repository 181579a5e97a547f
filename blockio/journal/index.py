"""What the undo journal of one disk holds, segment by segment, and how far back it reaches.

The journal is its own index: UNDO records carry their batch's seq and time, and every committed
batch ends with a COMMIT record (`blockio.journal.records`). Walking a segment gives its
`SegmentSummary`: the batches it holds, their time range, their bytes, and anything wrong with it.
Nothing else is needed to rebuild the index; the state store stays the authority on what is
committed (a batch whose COMMIT record did not reach the disk before a crash is committed all the
same: the agent writes the missing record at start-up).

Summaries are cached in a sidecar (`blockio.journal.catalog`).

Reachability (`restorable_floor`): the disk can be rolled back to batch p when the journal holds
the undo records of every batch p+1 .. last_seq. COMMIT records are contiguous in a healthy
journal, so walking segments from the newest back, the chain holds while each segment's commits
join the next one's, and stops at a damaged segment, at a gap (pruned or missing segments), or at
a batch whose undo is not kept (a resync batch, or one found missing).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from blockio.journal.reader import read_commit, read_record, scan_headers_into
from blockio.journal.records import (
    UNDO_KEPT,
    CommitRecord,
    JournalCorrupt,
    RecordHeader,
    RecordKind,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """One segment as a whole. Seqs and times are 0 when the segment holds no such record.

    `pending` lists the batches whose UNDO records are in the segment without their COMMIT
    record yet, as (seq, records, undo bytes): the batch in flight, or the last one before a crash.
    `broken_seq` is the newest batch here whose undo is not kept (resync, missing): no point older
    than it can be reached through this segment. `damage` is the first problem found, or None.
    """

    number: int
    size_bytes: int
    mtime_ns: int
    records: int = 0
    undo_bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    first_commit_seq: int = 0
    last_commit_seq: int = 0
    broken_seq: int = 0
    first_time_ns: int = 0
    last_time_ns: int = 0
    pending: tuple[tuple[int, int, int], ...] = ()
    damage: str | None = None

    @property
    def empty(self) -> bool:
        """No record at all (and nothing wrong)."""
        return self.first_seq == 0 and self.damage is None

    def to_json(self) -> dict[str, object]:
        fields: dict[str, object] = {name: getattr(self, name) for name in _INT_FIELDS}
        fields["pending"] = [list(entry) for entry in self.pending]
        fields["damage"] = self.damage
        return fields

    @classmethod
    def from_json(cls, fields: dict[str, object]) -> SegmentSummary:
        """The summary from `to_json()`; ValueError, TypeError or KeyError if it is not one."""
        numbers = {name: fields[name] for name in _INT_FIELDS}
        if not all(type(value) is int for value in numbers.values()):
            raise TypeError("a summary field is not an integer")
        damage = fields["damage"]
        if damage is not None and not isinstance(damage, str):
            raise TypeError("damage is not a string")
        pending = tuple((int(a), int(b), int(c)) for a, b, c in fields["pending"])  # type: ignore[attr-defined]
        return cls(**numbers, pending=pending, damage=damage)  # type: ignore[arg-type]


_INT_FIELDS = (
    "number",
    "size_bytes",
    "mtime_ns",
    "records",
    "undo_bytes",
    "first_seq",
    "last_seq",
    "first_commit_seq",
    "last_commit_seq",
    "broken_seq",
    "first_time_ns",
    "last_time_ns",
)


@dataclass(slots=True)
class SegmentTally:
    """Builds a segment's summary record by record, noting what is wrong on the way.

    Used both when walking a segment and by the journal as it appends, so the two cannot
    disagree. `problems` are one-line descriptions (`byte N: ...`) in file order.
    """

    disk: str
    records: int = 0
    undo_bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    first_commit_seq: int = 0
    last_commit_seq: int = 0
    broken_seq: int = 0
    first_time_ns: int = 0
    last_time_ns: int = 0
    # seq -> [records, undo bytes] of batches whose COMMIT record has not been seen yet
    pending: dict[int, list[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def copy(self) -> SegmentTally:
        """An independent copy (the journal keeps one to go back to when a batch is undone)."""
        return SegmentTally(
            self.disk,
            self.records,
            self.undo_bytes,
            self.first_seq,
            self.last_seq,
            self.first_commit_seq,
            self.last_commit_seq,
            self.broken_seq,
            self.first_time_ns,
            self.last_time_ns,
            {seq: list(counts) for seq, counts in self.pending.items()},
            list(self.problems),
        )

    @classmethod
    def from_summary(cls, disk: str, summary: SegmentSummary) -> SegmentTally:
        """Carry on counting where `summary` left off."""
        tally = cls(
            disk,
            summary.records,
            summary.undo_bytes,
            summary.first_seq,
            summary.last_seq,
            summary.first_commit_seq,
            summary.last_commit_seq,
            summary.broken_seq,
            summary.first_time_ns,
            summary.last_time_ns,
            {seq: [records, size] for seq, records, size in summary.pending},
        )
        if summary.damage is not None:
            tally.problems.append(summary.damage)
        return tally

    def summary(self, number: int, size_bytes: int, mtime_ns: int) -> SegmentSummary:
        return SegmentSummary(
            number=number,
            size_bytes=size_bytes,
            mtime_ns=mtime_ns,
            records=self.records,
            undo_bytes=self.undo_bytes,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            first_commit_seq=self.first_commit_seq,
            last_commit_seq=self.last_commit_seq,
            broken_seq=self.broken_seq,
            first_time_ns=self.first_time_ns,
            last_time_ns=self.last_time_ns,
            pending=tuple((seq, c[0], c[1]) for seq, c in sorted(self.pending.items())),
            damage=self.problems[0] if self.problems else None,
        )

    def _see(self, position: int, disk: str, seq: int, time_ns: int) -> None:
        if disk != self.disk:
            self.problems.append(
                f"byte {position}: record of disk {disk!r} in the journal of {self.disk!r}"
            )
        if seq < self.last_seq:
            self.problems.append(
                f"byte {position}: batch {seq} follows batch {self.last_seq} (sequence goes back)"
            )
        if not self.first_seq:
            self.first_seq = seq
        self.last_seq = max(self.last_seq, seq)
        if time_ns:
            self.first_time_ns = min(self.first_time_ns or time_ns, time_ns)
            self.last_time_ns = max(self.last_time_ns, time_ns)

    def _close_older_batches(self, position: int, seq: int) -> None:
        for older in [s for s in self.pending if s < seq]:
            del self.pending[older]
            self.problems.append(
                f"byte {position}: batch {older} has undo records but no commit record"
            )

    def add_undo(self, position: int, disk: str, seq: int, length: int, time_ns: int) -> None:
        """An UNDO record of batch `seq` holding `length` bytes of old data."""
        self._see(position, disk, seq, time_ns)
        if self.last_commit_seq and seq <= self.last_commit_seq:
            self.problems.append(
                f"byte {position}: undo record of batch {seq} after the commit record of "
                f"batch {self.last_commit_seq}"
            )
        self._close_older_batches(position, seq)
        counts = self.pending.setdefault(seq, [0, 0])
        counts[0] += 1
        counts[1] += length
        self.records += 1
        self.undo_bytes += length

    def add_commit(self, position: int, commit: CommitRecord) -> None:
        """The COMMIT record of batch `commit.seq`."""
        seq = commit.seq
        self._see(position, commit.disk, seq, commit.committed_ns)
        if self.last_commit_seq and seq != self.last_commit_seq + 1:
            self.problems.append(
                f"byte {position}: commit record of batch {seq} follows that of batch "
                f"{self.last_commit_seq}"
            )
        self._close_older_batches(position, seq)
        found = self.pending.pop(seq, [0, 0])
        newer = [s for s in self.pending if s > seq]
        if newer:
            self.problems.append(
                f"byte {position}: commit record of batch {seq} after undo records of "
                f"batch {newer[0]}"
            )
        if commit.undo == UNDO_KEPT:
            if found != [commit.records, commit.undo_bytes]:
                self.problems.append(
                    f"byte {position}: commit record of batch {seq} counts {commit.records} "
                    f"undo records ({commit.undo_bytes} bytes); the segment holds {found[0]} "
                    f"({found[1]} bytes)"
                )
        else:
            self.broken_seq = max(self.broken_seq, seq)
        if not self.first_commit_seq:
            self.first_commit_seq = seq
        self.last_commit_seq = max(self.last_commit_seq, seq)


@dataclass(frozen=True, slots=True)
class SegmentWalk:
    """What walking one segment found: its tally, the end of its last whole record, where a torn
    record starts (None if none) and the commit records read."""

    tally: SegmentTally
    size_bytes: int
    mtime_ns: int
    torn_at: int | None
    commits: tuple[CommitRecord, ...]


def walk_segment(path: Path, disk: str, *, last: bool) -> SegmentWalk:
    """Read every record of the segment at `path`, verifying each payload against its digest.

    A torn record at the tail is expected in the journal's newest segment (`last`: a crash or an
    append in progress) and is a problem anywhere else. A damaged header ends the walk (the
    records after it cannot be found); a damaged payload is noted and the walk goes on.
    Raises OSError when the file cannot be read (FileNotFoundError: pruned meanwhile).
    """
    tally = SegmentTally(disk)
    commits: list[CommitRecord] = []
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        headers: list[RecordHeader] = []
        torn_at: int | None = None
        try:
            torn_at = scan_headers_into(f, path, headers)
        except JournalCorrupt as exc:
            tally.problems.append(f"byte {exc.position}: {exc.reason}")
        for header in headers:
            try:
                if header.kind == RecordKind.UNDO:
                    read_record(f, header, path)
                    tally.add_undo(
                        header.position, header.disk, header.seq, header.length, header.time_ns
                    )
                elif header.kind == RecordKind.COMMIT:
                    commit = read_commit(f, header, path)
                    tally.add_commit(header.position, commit)
                    commits.append(commit)
            except JournalCorrupt as exc:
                tally.problems.append(f"byte {exc.position}: {exc.reason}")
                # The batch is known to be in this segment even if its record is unreadable.
                tally.last_seq = max(tally.last_seq, header.seq)
        if torn_at is not None and not last:
            tally.problems.append(f"byte {torn_at}: the segment ends inside a record")
    tally.problems.sort(key=_problem_position)
    return SegmentWalk(tally, stat.st_size, stat.st_mtime_ns, torn_at, tuple(commits))


def _problem_position(problem: str) -> int:
    match = re.match(r"byte (\d+):", problem)
    return int(match.group(1)) if match else 0


def restorable_floor(summaries: Sequence[SegmentSummary], last_seq: int) -> int:
    """The oldest batch p (0 <= p <= last_seq) such that the journal whose segments are
    `summaries` (oldest first) holds the undo of every batch p+1 .. last_seq: the disk can be
    rolled back to any batch from p to last_seq. last_seq is the disk's committed last batch.

    The newest batch's COMMIT record may not be written yet (it follows the state commit), so the
    newest commits may end at last_seq - 1; records of a batch in flight (seq > last_seq) are
    ignored. Pure.
    """
    floor = last_seq
    expected: int | None = None  # the commit the next older segment must end with
    for summary in reversed(summaries):
        if summary.damage is not None:
            break
        if summary.empty:
            continue
        if summary.last_commit_seq == 0:
            # Only the newest batch (its commit record not written yet) or one in flight.
            if expected is None and summary.first_seq >= last_seq:
                continue
            break
        if expected is None:
            if not last_seq - 1 <= summary.last_commit_seq <= last_seq:
                break
        elif summary.last_commit_seq != expected:
            break
        if summary.broken_seq:
            return summary.broken_seq
        floor = summary.first_commit_seq - 1
        expected = floor
    return max(floor, 0)
