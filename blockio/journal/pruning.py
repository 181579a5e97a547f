"""Which undo segments to delete: a pure function of the journals, the clock, the policy and the
space left on the retention drive (like borg's `prune`: the caller only applies the decision).

Rules, in order:
1. Window. For each disk, its oldest sealed segments whose newest record is older than
   `now - window` are deleted, oldest first, up to the first one that holds anything newer (it
   stays, and so does every segment after it: a journal is always a chain that ends at the
   present, so the points it can still reach are those from its oldest segment on).
2. Full. The retention is full while the journals together hold more than `max_bytes`, or while
   the file system is used above `high_water` (a fraction of its size), counting what rule 1
   frees. Then:
   - `on_full = "shrink"`: the oldest remaining sealed segment, across all disks (the one whose
     newest record is oldest), is deleted, one at a time, until the retention is not full or only
     segments that appends go to are left. The window shrinks; the decision says why.
   - `on_full = "pause"`: nothing more is deleted (the window is kept whole); the decision says
     to pause: new batches are answered 507 until rule 1 or the operator frees space.
A disk's current segment (the one appends go to, holding any open batch) is never deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

WINDOW = "window"
MAX_BYTES = "max_bytes"
HIGH_WATER = "high_water"

OnFull = Literal["shrink", "pause"]


@dataclass(frozen=True, slots=True)
class SegmentState:
    """What pruning needs to know of one segment. `newest_ns` is the time (agent clock) of its
    newest record, 0 when it holds none; `current`: appends go to it."""

    disk: str
    number: int
    size_bytes: int
    newest_ns: int
    current: bool = False


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The `[retention]` limits, in the units pruning works in."""

    window_ns: int
    max_bytes: int
    high_water: float
    on_full: OnFull


@dataclass(frozen=True, slots=True)
class DriveSpace:
    """The retention file system: its size and the bytes still free for the agent."""

    total_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class Deletion:
    """Delete segment `number` of `disk` (`size_bytes`), for `reason`: "window", "max_bytes"
    or "high_water"."""

    disk: str
    number: int
    size_bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class PruneDecision:
    """Segments to delete, oldest first per disk; `pause`: why new batches must wait (only
    under on_full = "pause"), else None; `full`: why the retention is still full after the
    deletions (under "shrink" when nothing more can go), else None."""

    deletions: tuple[Deletion, ...]
    pause: str | None = None
    full: str | None = None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def decide_pruning(
    segments: Iterable[SegmentState], now_ns: int, policy: RetentionPolicy, space: DriveSpace
) -> PruneDecision:
    """Apply the rules of the module docstring. Pure: same input, same decision."""
    by_disk: dict[str, list[SegmentState]] = defaultdict(list)
    for segment in segments:
        by_disk[segment.disk].append(segment)
    for queue in by_disk.values():
        queue.sort(key=lambda s: s.number)

    deletions: list[Deletion] = []
    horizon = now_ns - policy.window_ns
    for disk in sorted(by_disk):
        queue = by_disk[disk]
        while queue and not queue[0].current and queue[0].newest_ns < horizon:
            segment = queue.pop(0)
            deletions.append(Deletion(disk, segment.number, segment.size_bytes, WINDOW))

    freed = sum(d.size_bytes for d in deletions)
    kept = sum(s.size_bytes for queue in by_disk.values() for s in queue)
    used = space.total_bytes - space.free_bytes

    def full_reason() -> tuple[str, str] | None:
        if kept > policy.max_bytes:
            return MAX_BYTES, (
                f"undo data {_mib(kept)} is above max_bytes {_mib(policy.max_bytes)}"
            )
        if space.total_bytes and used - freed >= policy.high_water * space.total_bytes:
            return HIGH_WATER, (
                f"retention file system {100 * (used - freed) / space.total_bytes:.0f}% used, "
                f"high-water mark {100 * policy.high_water:.0f}%"
            )
        return None

    full = full_reason()
    if full is not None and policy.on_full == "pause":
        return PruneDecision(tuple(deletions), pause=full[1], full=full[1])
    while full is not None:
        heads = [queue[0] for queue in by_disk.values() if queue and not queue[0].current]
        if not heads:
            break
        oldest = min(heads, key=lambda s: (s.newest_ns, s.disk, s.number))
        by_disk[oldest.disk].pop(0)
        deletions.append(Deletion(oldest.disk, oldest.number, oldest.size_bytes, full[0]))
        freed += oldest.size_bytes
        kept -= oldest.size_bytes
        full = full_reason()
    return PruneDecision(tuple(deletions), full=None if full is None else full[1])
