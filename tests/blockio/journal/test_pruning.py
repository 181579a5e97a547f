"""The pruning policy, a pure function, tested on a table of cases (time is an argument)."""

from __future__ import annotations

import pytest

from blockio.journal.pruning import (
    Deletion,
    DriveSpace,
    RetentionPolicy,
    SegmentState,
    decide_pruning,
)

MiB = 1 << 20
HOUR = 3600 * 10**9
NOW = 1_000 * HOUR
ROOMY = DriveSpace(total_bytes=1000 * MiB, free_bytes=900 * MiB)


def seg(
    disk: str, number: int, age_hours: float, mib: int = 10, current: bool = False
) -> SegmentState:
    return SegmentState(disk, number, mib * MiB, NOW - int(age_hours * HOUR), current)


def policy(
    window_hours: float = 24,
    max_mib: int = 10_000,
    high_water: float = 0.9,
    on_full: str = "shrink",
) -> RetentionPolicy:
    return RetentionPolicy(int(window_hours * HOUR), max_mib * MiB, high_water, on_full)  # type: ignore[arg-type]


CASES = [
    pytest.param(
        [seg("a", 1, 30), seg("a", 2, 25), seg("a", 3, 2, current=True)],
        policy(),
        ROOMY,
        [("a", 1, "window"), ("a", 2, "window")],
        None,
        id="segments older than the window go",
    ),
    pytest.param(
        [seg("a", 1, 30), seg("a", 2, 23), seg("a", 3, 30, current=True)],
        policy(),
        ROOMY,
        [("a", 1, "window")],
        None,
        id="a segment holding anything newer than the window stays",
    ),
    pytest.param(
        [seg("a", 1, 30), seg("a", 2, 20), seg("a", 3, 40), seg("a", 4, 1, current=True)],
        policy(),
        ROOMY,
        [("a", 1, "window")],
        None,
        id="only the oldest: a newer segment behind a kept one stays (the chain)",
    ),
    pytest.param(
        [seg("a", 7, 100, current=True)],
        policy(),
        ROOMY,
        [],
        None,
        id="the current segment is never deleted, however old",
    ),
    pytest.param(
        [
            seg("a", 1, 30),
            seg("a", 2, 1, current=True),
            seg("b", 4, 26),
            seg("b", 5, 25),
            seg("b", 6, 1, current=True),
        ],
        policy(),
        ROOMY,
        [("a", 1, "window"), ("b", 4, "window"), ("b", 5, "window")],
        None,
        id="each disk by its own segments",
    ),
    pytest.param(
        [seg("a", 1, 5), seg("a", 2, 4), seg("a", 3, 3), seg("a", 4, 0, current=True)],
        policy(max_mib=25),
        ROOMY,
        [("a", 1, "max_bytes"), ("a", 2, "max_bytes")],
        None,
        id="above max_bytes, shrink drops the oldest until under",
    ),
    pytest.param(
        [
            seg("a", 1, 5),
            seg("a", 2, 1, current=True),
            seg("b", 1, 6),
            seg("b", 2, 2),
            seg("b", 3, 0, current=True),
        ],
        policy(max_mib=30),
        ROOMY,
        [("b", 1, "max_bytes"), ("a", 1, "max_bytes")],
        None,
        id="shrink takes the oldest data first, across disks",
    ),
    pytest.param(
        [seg("a", 1, 5, mib=100), seg("a", 2, 4, mib=100), seg("a", 3, 0, current=True)],
        policy(high_water=0.9),
        DriveSpace(total_bytes=1000 * MiB, free_bytes=50 * MiB),
        [("a", 1, "high_water")],
        None,
        id="above the high-water mark, shrink frees what brings it under",
    ),
    pytest.param(
        [seg("a", 1, 30, mib=100), seg("a", 2, 4, mib=100), seg("a", 3, 0, current=True)],
        policy(high_water=0.9),
        DriveSpace(total_bytes=1000 * MiB, free_bytes=50 * MiB),
        [("a", 1, "window")],
        None,
        id="what the window frees counts against the high-water mark",
    ),
    pytest.param(
        [seg("a", 1, 5), seg("a", 2, 0, current=True)],
        policy(high_water=0.5),
        DriveSpace(total_bytes=1000 * MiB, free_bytes=100 * MiB),
        [("a", 1, "high_water")],
        "full",
        id="shrink cannot go below the current segments: still full",
    ),
    pytest.param(
        [seg("a", 1, 5), seg("a", 2, 4), seg("a", 3, 0, current=True)],
        policy(max_mib=15, on_full="pause"),
        ROOMY,
        [],
        "pause",
        id="above max_bytes, pause keeps the window and pauses",
    ),
    pytest.param(
        [seg("a", 1, 30), seg("a", 2, 4), seg("a", 3, 0, current=True)],
        policy(on_full="pause", high_water=0.9),
        DriveSpace(total_bytes=1000 * MiB, free_bytes=95 * MiB),
        [("a", 1, "window")],
        None,
        id="pause lifts when the window frees enough",
    ),
    pytest.param(
        [seg("a", 1, 4), seg("a", 2, 0, current=True)],
        policy(on_full="pause", high_water=0.9),
        DriveSpace(total_bytes=1000 * MiB, free_bytes=60 * MiB),
        [],
        "pause",
        id="above the high-water mark under pause: nothing deleted, paused",
    ),
    pytest.param(
        [],
        policy(),
        ROOMY,
        [],
        None,
        id="no journal, nothing to do",
    ),
]


@pytest.mark.parametrize(("segments", "rules", "space", "deleted", "outcome"), CASES)
def test_pruning_decision(
    segments: list[SegmentState],
    rules: RetentionPolicy,
    space: DriveSpace,
    deleted: list[tuple[str, int, str]],
    outcome: str | None,
) -> None:
    decision = decide_pruning(segments, NOW, rules, space)
    assert [(d.disk, d.number, d.reason) for d in decision.deletions] == deleted
    assert (decision.pause is not None) == (outcome == "pause")
    assert (decision.full is not None) == (outcome in ("pause", "full"))


def test_the_decision_says_why_it_pauses() -> None:
    decision = decide_pruning(
        [seg("a", 1, 1), seg("a", 2, 0, current=True)],
        NOW,
        policy(on_full="pause", high_water=0.8),
        DriveSpace(total_bytes=100 * MiB, free_bytes=10 * MiB),
    )
    assert decision.pause == "retention file system 90% used, high-water mark 80%"


def test_moving_the_clock_moves_the_window() -> None:
    segments = [seg("a", 1, 10), seg("a", 2, 5), seg("a", 3, 0, current=True)]
    assert decide_pruning(segments, NOW, policy(window_hours=12), ROOMY).deletions == ()
    later = decide_pruning(segments, NOW + 4 * HOUR, policy(window_hours=12), ROOMY)
    assert later.deletions == (Deletion("a", 1, 10 * MiB, "window"),)
