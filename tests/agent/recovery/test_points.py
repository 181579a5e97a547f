"""Listing and picking recovery points: pure functions over batches, states and journal reach."""

from __future__ import annotations

import pytest

from agent.recovery.errors import PointNotFound
from agent.recovery.points import (
    DiskHistory,
    RecoveryPoint,
    format_time,
    list_points,
    own_point_times,
    parse_time,
    select_point,
    stored_histories,
)
from agent.replication.state import BatchCommit

T0 = 1_800_000_000_000_000_000
SECOND = 10**9
GROUP = ["d0", "d1"]


def row(
    disk: str, seq: int, *, flags: tuple[str, ...] = (), tag: dict[str, object] | None = None
) -> BatchCommit:
    when = T0 + seq * SECOND
    return BatchCommit(disk, seq, b"", when, when + 1, frozenset(flags), 512, tag)


def tag(tag_id: str, kind: str = "app", time_ns: int = T0) -> dict[str, object]:
    return {
        "tag_id": tag_id,
        "name": f"n-{tag_id}",
        "kind": kind,
        "group": "g1",
        "time_ns": time_ns,
    }


class Rows:
    """Acknowledged batches by disk, read by (disk, first, last) as the state store does."""

    def __init__(self, *batches: BatchCommit) -> None:
        self.batches = batches

    def __call__(self, disk: str, first: int, last: int) -> list[BatchCommit]:
        return [b for b in self.batches if b.disk == disk and first <= b.seq <= last]


def history(disk: str, last_seq: int, floor: int = 0, state: str = "ok") -> DiskHistory:
    return DiskHistory(disk, state, last_seq, floor)


def test_each_batch_is_a_point_of_its_disk_from_the_journal_floor_on() -> None:
    rows = Rows(*(row("d0", s) for s in range(1, 6)))
    points = list_points(["d0"], {"d0": history("d0", 5, floor=2)}, rows)
    assert [p.id for p in points] == ["d0@2", "d0@3", "d0@4", "d0@5"]
    assert points[0] == RecoveryPoint("d0@2", "crash", "batch 2", T0 + 2 * SECOND, {"d0": 2})


def test_a_batch_in_the_middle_of_a_resync_is_no_point_but_its_end_is() -> None:
    rows = Rows(
        row("d0", 1, flags=("resync",)),
        row("d0", 2, flags=("resync", "resync_done")),
        row("d0", 3),
    )
    points = list_points(["d0"], {"d0": history("d0", 3, floor=1)}, rows)
    assert [p.id for p in points] == ["d0@2", "d0@3"]


@pytest.mark.parametrize("state", ["resync_required", "resyncing", "recovered", "missing"])
def test_a_disk_that_is_not_ok_has_no_point(state: str) -> None:
    rows = Rows(row("d0", 1), row("d0", 2))
    assert list_points(["d0"], {"d0": history("d0", 2, state=state)}, rows) == []


def test_a_tag_needs_every_disk_of_the_group_within_reach() -> None:
    rows = Rows(row("d0", 1, tag=tag("a")), row("d1", 1), row("d1", 2, tag=tag("a")))
    both = {"d0": history("d0", 1), "d1": history("d1", 2)}
    [point] = [p for p in list_points(GROUP, both, rows) if p.id == "tag:a"]
    assert point == RecoveryPoint("tag:a", "app", "n-a", T0, {"d0": 1, "d1": 2})
    assert point.completed_ns == T0 + 2 * SECOND + 1
    out_of_reach = {"d0": history("d0", 1), "d1": history("d1", 2, floor=2)}
    assert "tag:a" in {p.id for p in list_points(GROUP, out_of_reach, rows)}
    gone = {"d0": history("d0", 1), "d1": history("d1", 3, floor=3)}
    assert "tag:a" not in {p.id for p in list_points(GROUP, gone, rows)}
    one_disk = {"d0": history("d0", 1)}
    assert "tag:a" not in {p.id for p in list_points(GROUP, one_disk, rows)}


def test_a_tag_whose_disks_disagree_on_the_kind_is_crash_consistent() -> None:
    rows = Rows(row("d0", 1, tag=tag("a", "app")), row("d1", 1, tag=tag("a", "crash")))
    histories = {"d0": history("d0", 1), "d1": history("d1", 1)}
    [point] = [p for p in list_points(GROUP, histories, rows) if p.id == "tag:a"]
    assert point.kind == "crash"


def test_a_tag_id_sent_twice_counts_at_its_newest_batch() -> None:
    rows = Rows(row("d0", 1, tag=tag("a")), row("d0", 2, tag=tag("a")))
    [point] = [p for p in list_points(["d0"], {"d0": history("d0", 2)}, rows) if p.id == "tag:a"]
    assert point.disks == {"d0": 2}


POINTS = [
    RecoveryPoint("d0@1", "crash", "batch 1", T0 + 1 * SECOND, {"d0": 1}),
    RecoveryPoint("tag:a", "app", "a", T0 + 2 * SECOND, {"d0": 2, "d1": 2}),
    RecoveryPoint("tag:b", "crash", "b", T0 + 3 * SECOND, {"d0": 3, "d1": 3}),
    RecoveryPoint("d1@4", "crash", "batch 4", T0 + 4 * SECOND, {"d1": 4}),
]


@pytest.mark.parametrize(
    ("spec", "chosen"),
    [
        ("latest", "tag:b"),
        ("latest-app", "tag:a"),
        ("latest-crash", "tag:b"),  # d1@4 is newer, but covers d1 only
        (f"time:{T0 + 2 * SECOND}", "tag:a"),
        (f"time:{format_time(T0 + 3 * SECOND)}", "tag:b"),
        ("time:2027-01-15T08:00:02.500+00:00", "tag:a"),
        ("d1@4", "d1@4"),
        ("d0@1", "d0@1"),
    ],
)
def test_picking_a_point(spec: str, chosen: str) -> None:
    assert select_point(POINTS, spec, "g1", GROUP).id == chosen


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("d0@9", "no recovery point 'd0@9'"),
        (f"time:{T0}", "no recovery point covering d0, d1 at or before 2027-01-15T08:00:00.000Z"),
    ],
)
def test_a_point_that_is_not_listed_is_refused(spec: str, message: str) -> None:
    with pytest.raises(PointNotFound, match=message):
        select_point(POINTS, spec, "g1", GROUP)


def test_latest_crash_needs_a_crash_point_of_the_whole_group() -> None:
    with pytest.raises(PointNotFound, match="no crash-consistent recovery point"):
        select_point(POINTS[:2], "latest-crash", "g1", GROUP)


def test_times_read_as_utc_and_print_back() -> None:
    assert parse_time("2027-01-15T08:00:00Z") == T0
    assert parse_time("2027-01-15T08:00:00") == T0
    assert parse_time("2027-01-15T10:00:00+02:00") == T0
    assert format_time(T0 + 1_500_000) == "2027-01-15T08:00:00.001Z"
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_own_point_times_are_the_per_disk_points_by_disk() -> None:
    one_disk_tag = RecoveryPoint("tag:c", "app", "c", T0 + 5 * SECOND, {"d0": 5})

    times = own_point_times([*POINTS, one_disk_tag])

    assert times == {"d0": [T0 + 1 * SECOND], "d1": [T0 + 4 * SECOND]}


def test_without_a_state_store_no_disk_has_a_history() -> None:
    assert stored_histories(["d0", "d1"], None, {"d0": [], "d1": []}) == {}
