"""Which undo record restores which bytes of a disk rolled back to a recovery point.

Every UNDO record with a seq above the point's batch holds, for the bytes it covers, the value
they had just before the batch that overwrote them. For each byte, the OLDEST such record holds
its value at the point; a byte no such record covers has not changed since. So rather than
writing every record newest first, the plan gives each record the parts of its extent that no
older record covers (`owned_ranges`), and every byte is written once, with its value at the point.
Planning reads record headers only (`blockio.journal.restore` writes the bytes).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blockio.errors import BlockIOError
from blockio.journal.index import SegmentSummary
from blockio.journal.reader import scan_headers
from blockio.journal.records import JournalCorrupt, RecordHeader, RecordKind
from blockio.journal.segments import segment_numbers, segment_path


class RecoveryError(BlockIOError):
    """A restore cannot be done or did not verify. `str()` is one line saying why."""


def owned_ranges(extents: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """For extents `(offset, length)` in priority order (index 0 first), the `[start, end)`
    ranges of each that no extent before it covers, sorted and merged. Together they cover the
    union of the extents exactly once. O(n log n): a sweep over the extent boundaries with a heap
    of the extents open at each point."""
    owned: list[list[tuple[int, int]]] = [[] for _ in extents]
    by_offset = sorted((e[0], i) for i, e in enumerate(extents) if e[1] > 0)
    coords = sorted({c for o, n in extents if n > 0 for c in (o, o + n)})
    heap: list[tuple[int, int]] = []  # (priority, end)
    next_start = 0
    for k in range(len(coords) - 1):
        x = coords[k]
        while next_start < len(by_offset) and by_offset[next_start][0] <= x:
            i = by_offset[next_start][1]
            heapq.heappush(heap, (i, extents[i][0] + extents[i][1]))
            next_start += 1
        while heap and heap[0][1] <= x:
            heapq.heappop(heap)
        if not heap:
            continue
        ranges = owned[heap[0][0]]
        if ranges and ranges[-1][1] == x:
            ranges[-1] = (ranges[-1][0], coords[k + 1])
        else:
            ranges.append((x, coords[k + 1]))
    return owned


@dataclass(frozen=True, slots=True)
class PlannedRecord:
    """An UNDO record (`header`, in `segment`) and the ranges of the disk it restores."""

    segment: Path
    header: RecordHeader
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """What rolls `disk` back to the end of batch `after_seq`: records oldest first, each with
    the ranges it owns; `records` counts every record above the point, `undo_bytes` the bytes
    to write."""

    disk: str
    after_seq: int
    planned: tuple[PlannedRecord, ...]
    records: int
    undo_bytes: int


def plan_rollback(
    directory: Path,
    disk: str,
    after_seq: int,
    summaries: Sequence[SegmentSummary] = (),
) -> RollbackPlan:
    """Read the headers of the journal in `directory` and plan the rollback of `disk` to the end
    of batch `after_seq`. `summaries` (from `load_summaries` or the journal) let segments that
    end at or before the point go unread; segments they do not describe are read.

    A torn record is tolerated at the tail of the newest segment (an append in progress, or a
    crash the agent has not recovered yet). Raises RecoveryError when a segment is missing,
    damaged or holds records of another disk.
    """
    known = {s.number: s for s in summaries}
    numbers = segment_numbers(directory)
    headers: list[tuple[Path, RecordHeader]] = []
    for index, number in enumerate(numbers):
        if _newest_seq_in(known, numbers, index) <= after_seq:
            continue  # nothing above the point in it: not even read (it may be damaged)
        path = segment_path(directory, number)
        try:
            with open(path, "rb") as f:
                found, torn_at = scan_headers(f, path)
        except JournalCorrupt as exc:
            raise RecoveryError(f"undo journal damaged: {exc}") from None
        except FileNotFoundError:
            raise RecoveryError(f"undo segment {path} disappeared while it was read") from None
        if torn_at is not None and number != numbers[-1]:
            raise RecoveryError(f"undo segment {path} ends inside a record at byte {torn_at}")
        for header in found:
            if header.kind != RecordKind.UNDO or header.seq <= after_seq:
                continue
            if header.disk != disk:
                raise RecoveryError(
                    f"undo segment {path} at byte {header.position}: record of disk "
                    f"{header.disk!r} in the journal of {disk!r}"
                )
            headers.append((path, header))
    owned = owned_ranges([(h.offset, h.length) for _, h in headers])
    planned = tuple(
        PlannedRecord(path, header, tuple(ranges))
        for (path, header), ranges in zip(headers, owned, strict=True)
        if ranges
    )
    undo_bytes = sum(end - start for p in planned for start, end in p.ranges)
    return RollbackPlan(disk, after_seq, planned, len(headers), undo_bytes)


def _newest_seq_in(known: dict[int, SegmentSummary], numbers: Sequence[int], index: int) -> float:
    """The highest seq segment `numbers[index]` can hold, as far as the summaries tell (a batch
    never spans segments, so the next segment's first batch bounds it too); inf if unknown.
    The newest summarized segment may have grown since (appends go on beside an export)."""
    summary = known.get(numbers[index])
    if summary is None or summary.number == max(known):
        return float("inf")
    if summary.damage is None:
        return summary.last_seq
    following = known.get(numbers[index + 1]) if index + 1 < len(numbers) else None
    if following is not None and following.first_seq:
        return following.first_seq - 1
    return float("inf")
