"""The resync planner: which differing chunks go into which batch, and when a checkpoint is cut."""

from __future__ import annotations

import pytest

from protocol.resync_plan import BatchPlan, ComparedWindow, plan_resync_batches
from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE

KiB = 1024
MiB = 1024 * KiB
C = 64 * KiB  # a chunk
SECTOR = 512
W = 4 * MiB  # a window


def window(number: int, at: float, *chunks: int) -> ComparedWindow:
    """Window `number` (ending at (number + 1) * W) seen at time `at`, with the differing
    chunks of the given indexes."""
    return ComparedWindow((number + 1) * W, at, tuple((index * C, C) for index in chunks))


# (windows, batch_bytes, checkpoint_seconds) -> the batches, numbered from 1, starting at 0.
PLANS = {
    "nothing differs: one batch without frames that completes the resync": (
        [window(0, 0.1), window(1, 0.2)],
        MiB,
        2.0,
        [BatchPlan(1, (), None, done=True)],
    ),
    "adjacent chunks coalesce into one run, also across windows": (
        [window(0, 0.1, 3, 4, 63), window(1, 0.2, 64, 70)],
        MiB,
        2.0,
        [BatchPlan(1, ((3 * C, 2 * C), (63 * C, 2 * C), (70 * C, C)), None, done=True)],
    ),
    "a batch closes when the next chunk would take it over batch_bytes": (
        [window(0, 0.1, 1, 3, 5, 7, 9)],
        2 * C,
        2.0,
        [
            BatchPlan(1, ((1 * C, C), (3 * C, C))),
            BatchPlan(2, ((5 * C, C), (7 * C, C))),
            BatchPlan(3, ((9 * C, C),), None, done=True),
        ],
    ),
    "a checkpoint carries the sector before the frontier when nothing differs": (
        [window(0, 1.0), window(1, 2.5), window(2, 3.0)],
        MiB,
        2.0,
        [BatchPlan(1, (), (2 * W - SECTOR, SECTOR)), BatchPlan(2, (), None, done=True)],
    ),
    "a checkpoint closes the open batch, its sector after the runs": (
        [window(0, 2.0, 5)],
        MiB,
        2.0,
        [BatchPlan(1, ((5 * C, C),), (W - SECTOR, SECTOR)), BatchPlan(2, (), None, done=True)],
    ),
    "a checkpoint whose runs reach the frontier needs no sector": (
        [window(0, 2.0, W // C - 1)],
        MiB,
        2.0,
        [BatchPlan(1, ((W - C, C),)), BatchPlan(2, (), None, done=True)],
    ),
    "a checkpoint without room for the sector goes without it": (
        [window(0, 2.0, 1, 3)],
        2 * C,
        2.0,
        [BatchPlan(1, ((1 * C, C), (3 * C, C))), BatchPlan(2, (), None, done=True)],
    ),
    "the checkpoint clock starts again at every batch, full ones included": (
        [window(0, 1.5, 1, 3, 5), window(1, 3.0), window(2, 3.6), window(3, 5.0)],
        2 * C,
        2.0,
        [
            BatchPlan(1, ((1 * C, C), (3 * C, C))),
            BatchPlan(2, ((5 * C, C),), (3 * W - SECTOR, SECTOR)),
            BatchPlan(3, (), None, done=True),
        ],
    ),
    "checkpoint_seconds=0: a checkpoint after every window": (
        [window(0, 0.0), window(1, 0.0)],
        MiB,
        0.0,
        [
            BatchPlan(1, (), (W - SECTOR, SECTOR)),
            BatchPlan(2, (), (2 * W - SECTOR, SECTOR)),
            BatchPlan(3, (), None, done=True),
        ],
    ),
}


@pytest.mark.parametrize(
    ("windows", "batch_bytes", "checkpoint_seconds", "expected"),
    list(PLANS.values()),
    ids=list(PLANS),
)
def test_the_planner_cuts_the_differing_chunks_into_batches(
    windows: list[ComparedWindow],
    batch_bytes: int,
    checkpoint_seconds: float,
    expected: list[BatchPlan],
) -> None:
    plans = plan_resync_batches(
        windows,
        first_seq=1,
        start=0,
        batch_bytes=batch_bytes,
        sector=SECTOR,
        checkpoint_seconds=checkpoint_seconds,
    )

    assert plans == expected


def test_a_resumed_resync_numbers_from_first_seq_and_records_no_checkpoint_below_its_start() -> (
    None
):
    # Resuming at 2 W: a window that ends there (it cannot happen, but the rule holds) is
    # no news for the agent's resync_offset; the next one is.
    windows = [ComparedWindow(2 * W, 5.0), ComparedWindow(3 * W, 10.0)]

    plans = plan_resync_batches(
        windows, first_seq=7, start=2 * W, batch_bytes=MiB, sector=SECTOR, checkpoint_seconds=2.0
    )

    assert plans == [BatchPlan(7, (), (3 * W - SECTOR, SECTOR)), BatchPlan(8, (), None, True)]


def test_every_batch_is_flagged_resync_and_only_the_last_resync_done() -> None:
    assert BatchPlan(1, ()).flags == {BEGIN_FLAG_RESYNC}
    assert BatchPlan(2, (), done=True).flags == {BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE}


def test_a_batch_writes_its_runs_then_its_checkpoint() -> None:
    plan = BatchPlan(1, ((0, C), (4 * C, C)), (W - SECTOR, SECTOR))

    assert plan.extents == ((0, C), (4 * C, C), (W - SECTOR, SECTOR))
