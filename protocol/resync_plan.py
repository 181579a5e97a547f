"""The batches of a resync by hash comparison (docs/protocol.md section 5), planned, sans-I/O.

A resync compares the source with the target chunk by chunk, window by window, and sends the
chunks that differ while the comparison goes on. `ResyncPlanner` decides, as the windows
come in, which differing chunks go into which batch: a batch is decided before it is sent,
so that it can be sent again as it was after a failure. `plan_resync_batches` is the same
planner as a function of a whole comparison. Each `BatchPlan` is then read from the source
and sent as one batch (`protocol.batching.one_batch_events`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A batch of a resync whose content is decided: the differing chunks as coalesced runs
    `(offset, length)` in order, then a checkpoint sector `(offset, length)` (the source's
    sector just before where the comparison got to, so that the agent's `resync_offset`
    records that point), and whether it completes the resync."""

    seq: int
    runs: tuple[tuple[int, int], ...]
    checkpoint: tuple[int, int] | None = None
    done: bool = False

    @property
    def extents(self) -> tuple[tuple[int, int], ...]:
        """What the batch writes, `(offset, length)` in order: the runs, then the checkpoint."""
        return self.runs if self.checkpoint is None else (*self.runs, self.checkpoint)

    @property
    def flags(self) -> frozenset[str]:
        if self.done:
            return frozenset({BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE})
        return frozenset({BEGIN_FLAG_RESYNC})


@dataclass(frozen=True, slots=True)
class ComparedWindow:
    """A window of the comparison: it ended at `frontier`, at time `at` (seconds of a
    monotonic clock), and found the chunks `differing` `(offset, length)` in offset order."""

    frontier: int
    at: float
    differing: tuple[tuple[int, int], ...] = ()


@dataclass
class ResyncPlanner:
    """Cuts the differing chunks of a comparison, window by window, into the batches of a
    resync. Deterministic: what it returns depends only on the calls made.

    A batch closes when its next chunk would take it over `batch_bytes`, or as a checkpoint
    when `checkpoint_seconds` have passed since the last batch closed (`started_at` for the
    first) and the comparison got past what the agent's `resync_offset` will record; the
    checkpoint carries the sector before the comparison's frontier if the batch's last run
    ends before it and there is room. `finish` closes the last batch, flagged done (maybe
    without frames). `start` is where the comparison began (the resync_offset already
    recorded); `sector` the disk's sector size; a chunk is at most `batch_bytes`.
    """

    first_seq: int
    start: int
    batch_bytes: int
    sector: int
    checkpoint_seconds: float
    started_at: float = 0.0
    _seq: int = field(init=False)
    _runs: list[tuple[int, int]] = field(init=False, default_factory=list)
    _bytes: int = field(init=False, default=0)
    _recorded: int = field(init=False)
    _cut_at: float = field(init=False)

    def __post_init__(self) -> None:
        self._seq = self.first_seq
        self._recorded = self.start  # where the agent's resync_offset will be
        self._cut_at = self.started_at

    def window(self, window: ComparedWindow) -> list[BatchPlan]:
        """The batches that the next window of the comparison closes, in order."""
        closed: list[BatchPlan] = []
        for offset, length in window.differing:
            if self._runs and self._bytes + length > self.batch_bytes:
                closed.append(self._close(None, done=False, at=window.at))
            if self._runs and sum(self._runs[-1]) == offset:
                self._runs[-1] = (self._runs[-1][0], self._runs[-1][1] + length)
            else:
                self._runs.append((offset, length))
            self._bytes += length
        if window.at - self._cut_at >= self.checkpoint_seconds and window.frontier > self._recorded:
            end = sum(self._runs[-1]) if self._runs else 0
            checkpoint = None
            if end < window.frontier and self._bytes + self.sector <= self.batch_bytes:
                checkpoint = (window.frontier - self.sector, self.sector)
            closed.append(self._close(checkpoint, done=False, at=window.at))
        return closed

    def finish(self) -> BatchPlan:
        """The last batch: what is left, flagged done (maybe without frames)."""
        return self._close(None, done=True, at=self._cut_at)

    def _close(self, checkpoint: tuple[int, int] | None, *, done: bool, at: float) -> BatchPlan:
        plan = BatchPlan(self._seq, tuple(self._runs), checkpoint, done)
        self._recorded = max([self._recorded, *(sum(extent) for extent in plan.extents)])
        self._seq += 1
        self._runs, self._bytes = [], 0
        self._cut_at = at
        return plan


def plan_resync_batches(
    windows: Iterable[ComparedWindow],
    *,
    first_seq: int,
    start: int,
    batch_bytes: int,
    sector: int,
    checkpoint_seconds: float,
    started_at: float = 0.0,
) -> list[BatchPlan]:
    """The batches of a resync whose comparison went through `windows` (in offset order),
    cut by `ResyncPlanner`; the last one completes the resync."""
    planner = ResyncPlanner(
        first_seq=first_seq,
        start=start,
        batch_bytes=batch_bytes,
        sector=sector,
        checkpoint_seconds=checkpoint_seconds,
        started_at=started_at,
    )
    plans = [plan for window in windows for plan in planner.window(window)]
    plans.append(planner.finish())
    return plans
