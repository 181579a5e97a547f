"""`mtagent check`: every segment and every record of one disk's undo journal, verified.

Per segment: each record's framing and header digest, each payload against its XXH3-64 (LZ4
payloads decompressed to exactly their length), the disk id, the order of seqs, each batch closed
by its commit record with the record count and bytes it announces (`SegmentTally`). Across
segments: no segment missing between the oldest and the newest, commit records contiguous from one
segment to the next. Against the state store, when its last committed batch is given: the journal
neither runs ahead of it nor stops short of it. A batch whose undo start-up found missing is
reported too: the points before it cannot be restored.

Things a running agent or a crash leave behind are notes, not problems: the newest segment ending
in a record being appended, records of a batch not committed yet, the newest batch's commit
record not written yet.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blockio.journal.index import walk_segment
from blockio.journal.records import UNDO_MISSING
from blockio.journal.segments import segment_numbers, segment_path


@dataclass(frozen=True, slots=True)
class JournalProblem:
    """Something wrong at `path` (a segment, or the journal directory)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class JournalCheck:
    """What `check_journal` found in the journal of `disk`."""

    disk: str
    segments: int
    records: int
    undo_bytes: int
    commits: int
    problems: tuple[JournalProblem, ...]
    notes: tuple[str, ...]


# () -> (the state store's last committed seq of the disk, that batch's data bytes or None)
CommittedState = Callable[[], tuple[int, int | None]]


def check_journal(
    directory: Path, disk: str, committed: CommittedState | None = None
) -> JournalCheck:
    """Check the journal of `disk` in `directory` (see the module docstring). `committed`
    reads the state store's last committed batch of the disk; it is read before and after the
    walk, and the journal is compared with it only when it did not change meanwhile (a running
    agent commits as it pleases). Reads only; beside the agent, hold `shared_lock` around it.

    Raises OSError when a segment cannot be read.
    """
    before = committed() if committed is not None else None
    numbers = segment_numbers(directory)
    problems: list[JournalProblem] = []
    notes: list[str] = []
    records = undo_bytes = commits = 0
    for older, newer in itertools.pairwise(numbers):
        if newer != older + 1:
            problems.append(
                JournalProblem(
                    directory,
                    f"segments {older + 1} to {newer - 1} are missing between "
                    f"{segment_path(directory, older).name} and "
                    f"{segment_path(directory, newer).name} (only the oldest are ever pruned)",
                )
            )
    last_commit = 0
    last_seq = 0
    pending_last: dict[int, tuple[int, int]] = {}
    for number in numbers:
        path = segment_path(directory, number)
        newest = number == numbers[-1]
        walk = walk_segment(path, disk, last=newest)
        tally = walk.tally
        problems += [JournalProblem(path, problem) for problem in tally.problems]
        records += tally.records
        undo_bytes += tally.undo_bytes
        commits += len(walk.commits)
        if tally.first_seq and tally.first_seq < last_seq:
            problems.append(
                JournalProblem(
                    path, f"starts with batch {tally.first_seq}, after batch {last_seq} before it"
                )
            )
        if tally.first_commit_seq and last_commit and tally.first_commit_seq != last_commit + 1:
            problems.append(
                JournalProblem(
                    path,
                    f"its first commit record is of batch {tally.first_commit_seq}; the last one "
                    f"before it is of batch {last_commit}",
                )
            )
        for commit in walk.commits:
            if commit.undo == UNDO_MISSING:
                problems.append(
                    JournalProblem(
                        path,
                        f"batch {commit.seq}: its undo records were lost (start-up found them "
                        f"missing); recovery points before batch {commit.seq} cannot be restored",
                    )
                )
        if newest:
            pending_last = {seq: (n, size) for seq, (n, size) in tally.pending.items()}
            if walk.torn_at is not None:
                notes.append(
                    f"{path}: ends inside a record at byte {walk.torn_at} (an append in "
                    "progress, or cut off by a crash: the agent cuts it off at start-up)"
                )
        else:
            for seq in tally.pending:
                problems.append(
                    JournalProblem(path, f"batch {seq} has undo records but no commit record")
                )
        last_commit = max(last_commit, tally.last_commit_seq)
        last_seq = max(last_seq, tally.last_seq)

    after = committed() if committed is not None else None
    if after is not None and after == before:
        problems += _against_state(directory, last_commit, pending_last, *after, notes)
    elif after is not None:
        notes.append(
            f"{directory}: batches were committed while it was read: its tail was not compared "
            "with the state store"
        )
    return JournalCheck(
        disk, len(numbers), records, undo_bytes, commits, tuple(problems), tuple(notes)
    )


def _against_state(
    directory: Path,
    last_commit: int,
    pending: dict[int, tuple[int, int]],
    committed_seq: int,
    committed_data_bytes: int | None,
    notes: list[str],
) -> list[JournalProblem]:
    problems: list[JournalProblem] = []
    for seq in sorted(pending):
        if seq > committed_seq:
            notes.append(
                f"{directory}: batch {seq} is not committed (in flight, or cut off by a crash: "
                "the agent rolls it back at start-up)"
            )
    if not last_commit:
        return problems  # every segment with commit records was pruned
    if last_commit > committed_seq:
        problems.append(
            JournalProblem(
                directory,
                f"holds a commit record of batch {last_commit}, but the state store's last "
                f"committed batch is {committed_seq}",
            )
        )
    elif last_commit < committed_seq - 1:
        problems.append(
            JournalProblem(
                directory,
                f"its last commit record is of batch {last_commit}, but batch {committed_seq} "
                "is committed: the tail of the journal is missing",
            )
        )
    elif last_commit == committed_seq - 1:
        found = pending.get(committed_seq, (0, 0))[1]
        if committed_data_bytes is not None and found != committed_data_bytes:
            problems.append(
                JournalProblem(
                    directory,
                    f"batch {committed_seq} is committed with {committed_data_bytes} bytes of "
                    f"data, but {found} bytes of its undo data are in the journal",
                )
            )
        else:
            notes.append(
                f"{directory}: the commit record of batch {committed_seq} is not written yet "
                "(the agent writes it at start-up)"
            )
    return problems
