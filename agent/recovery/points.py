"""Recovery points of a consistency group (docs/protocol.md section 6), for the API (served by
`agent.server.points_api`) and the CLI.

A point (`protocol.documents.Point`) is `{"id", "kind", "name", "time_ns", "disks": {disk: seq}}`:
restoring it puts each of its disks back as it was at the end of that batch. Ids are stable: a
point keeps its id for as long as it is listed.

- `tag:<tag_id>`: a group point. TAG frames with this `tag_id` in a batch of every disk of the
  group; listed once every disk of the group has acknowledged its tagged batch. Kind, name and
  time come from the tag (`crash` if the disks disagree on the kind). Should a disk carry the
  same tag_id twice, its newest batch with it counts.
- `<disk>@<seq>`: every acknowledged batch is a crash-consistent point of its own disk (kind
  `crash`, named `batch <seq>`, time: the batch's source time). It covers that disk only: in a
  group of several disks, restoring it writes that disk alone. The commit of a `resync_done`
  batch is such a point; a batch in the middle of a resync is not (the disk is half copied).

A point is listed only while every disk it covers is `ok` and its undo journal reaches back to
it (`blockio.journal.index.restorable_floor`): resync batches, pruned segments, damaged
segments and lost undo data all cut the journal's reach.

Points are listed oldest first (by time, then by when they became complete). Picking one
(`select_point`): `latest` (the newest point that covers every disk of the group), `latest-app`
(the same, of kind app), `latest-crash` (the same, of kind crash), `time:<when>` (the newest
such point at or before an ISO 8601 time, as `time:2026-11-26T10:00:00Z`, or nanoseconds since
the epoch), or an id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.config import AgentConfig
from agent.recovery.errors import PointNotFound, UnknownGroupName
from agent.replication.replica import Replica
from agent.replication.state import BatchCommit, StateStore
from blockio.journal.catalog import load_summaries
from blockio.journal.index import SegmentSummary, restorable_floor
from blockio.journal.segments import shared_lock
from protocol.documents import DiskState, Point, PointKind
from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE

BatchRows = Callable[[str, int, int], Sequence[BatchCommit]]


@dataclass(frozen=True, slots=True)
class RecoveryPoint(Point):
    """One listed point. `completed_ns` (not part of the JSON, which `Point.to_json` gives):
    when its last batch was committed, which orders points of equal time."""

    completed_ns: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class DiskHistory:
    """What listing needs of one disk: its state, its last committed batch and the oldest batch
    its journal can roll it back to."""

    disk: str
    state: DiskState
    last_seq: int
    floor: int


def disk_history(
    disk: str, state: DiskState, last_seq: int, summaries: Sequence[SegmentSummary]
) -> DiskHistory:
    """The history of `disk` in `state` with `last_seq` committed, whose journal's segments
    `summaries` describes: the floor is the oldest batch those segments can roll it back to
    (`restorable_floor`). The one place a disk's history is built."""
    return DiskHistory(disk, state, last_seq, restorable_floor(summaries, last_seq))


def stored_histories(
    disks: Sequence[str],
    store: StateStore | None,
    summaries: Mapping[str, Sequence[SegmentSummary]],
) -> dict[str, DiskHistory]:
    """The histories of `disks` from the state store and their journals' `summaries`. A disk
    without summaries is left out, and so is every disk when there is no store yet (nothing
    was committed: no disk has a point)."""
    histories = {}
    for disk in disks:
        if store is None or disk not in summaries:
            continue
        progress = store.progress(disk)
        histories[disk] = disk_history(disk, progress.state, progress.last_seq, summaries[disk])
    return histories


def _is_point(batch: BatchCommit) -> bool:
    return BEGIN_FLAG_RESYNC not in batch.flags or BEGIN_FLAG_RESYNC_DONE in batch.flags


def list_points(
    group_disks: Sequence[str], histories: Mapping[str, DiskHistory], rows: BatchRows
) -> list[RecoveryPoint]:
    """The points of a group whose disks are `group_disks`, oldest first (see the module
    docstring). `histories` holds the disks that can be restored at all (a disk missing from it
    has no point); `rows(disk, first_seq, last_seq)` reads acknowledged batches."""
    per_batch: list[RecoveryPoint] = []
    tagged: dict[str, dict[str, BatchCommit]] = {}
    for disk in group_disks:
        history = histories.get(disk)
        if history is None or history.state != DiskState.OK or history.last_seq < 1:
            continue
        for batch in rows(disk, max(history.floor, 1), history.last_seq):
            if not _is_point(batch):
                continue
            per_batch.append(
                RecoveryPoint(
                    id=f"{disk}@{batch.seq}",
                    kind=PointKind.CRASH,
                    name=f"batch {batch.seq}",
                    time_ns=batch.source_time_ns,
                    disks={disk: batch.seq},
                    completed_ns=batch.committed_ns,
                )
            )
            tag_id = None if batch.tag is None else batch.tag.get("tag_id")
            if isinstance(tag_id, str):
                tagged.setdefault(tag_id, {})[disk] = batch
    group_points = []
    for tag_id, batches in tagged.items():
        if set(batches) != set(group_disks):
            continue
        tags = [b.tag or {} for b in batches.values()]
        kinds = {t.get("kind") for t in tags}
        first = tags[0]
        group_points.append(
            RecoveryPoint(
                id=f"tag:{tag_id}",
                kind=PointKind.APP if kinds == {PointKind.APP} else PointKind.CRASH,
                name=str(first.get("name", "")),
                time_ns=int(first.get("time_ns", 0)),  # type: ignore[call-overload]
                disks={disk: batches[disk].seq for disk in group_disks},
                completed_ns=max(b.committed_ns for b in batches.values()),
            )
        )
    points = per_batch + group_points
    points.sort(key=lambda p: (p.time_ns, p.completed_ns, p.id))
    return points


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from an ISO 8601 time (`2026-11-26T10:00:00Z`; without a
    zone it is UTC) or from an integer of nanoseconds. Raises ValueError."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def format_time(time_ns: int) -> str:
    """`2026-11-26T10:00:00.123Z` (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(time_ns / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def select_point(
    points: Sequence[RecoveryPoint], spec: str, group: str, group_disks: Sequence[str]
) -> RecoveryPoint:
    """The point `spec` names among `points` (see the module docstring).

    Raises PointNotFound when there is none, or ValueError for a time that cannot be read.
    """
    whole = [p for p in points if set(p.disks) == set(group_disks)]
    disks = ", ".join(group_disks)
    if spec == "latest":
        if whole:
            return whole[-1]
        raise PointNotFound(
            f"group {group} has no recovery point that covers all its disks ({disks})"
        )
    if spec == "latest-app":
        app = [p for p in whole if p.kind == PointKind.APP]
        if app:
            return app[-1]
        raise PointNotFound(f"group {group} has no application-consistent recovery point")
    if spec == "latest-crash":
        crash = [p for p in whole if p.kind == PointKind.CRASH]
        if crash:
            return crash[-1]
        raise PointNotFound(
            f"group {group} has no crash-consistent recovery point that covers all its disks "
            f"({disks})"
        )
    if spec.startswith("time:"):
        when = parse_time(spec[len("time:") :])
        before = [p for p in whole if p.time_ns <= when]
        if before:
            return before[-1]
        raise PointNotFound(
            f"group {group} has no recovery point covering {disks} at or before {format_time(when)}"
        )
    for point in points:
        if point.id == spec:
            return point
    raise PointNotFound(
        f"group {group} has no recovery point {spec!r} (mtagent points --group {group} lists them)"
    )


def group_disk_ids(config: AgentConfig, group: str) -> list[str]:
    """The ids of the configured disks of `group`, in configuration order."""
    return [disk.id for disk in config.disks if disk.group == group]


def require_group(config: AgentConfig, group: str) -> list[str]:
    """The ids of the configured disks of `group`, in configuration order, never none.

    Raises UnknownGroupName (naming the configuration file) when no disk is in `group`.
    """
    disks = group_disk_ids(config, group)
    if not disks:
        raise UnknownGroupName(config.file, group)
    return disks


def running_points(
    config: AgentConfig, replicas: Mapping[str, Replica], store: StateStore, group: str
) -> list[RecoveryPoint]:
    """The points of `group` as the running agent sees them: its journals' summaries and its
    disks' progress. Blocking (reads the state store)."""
    disks = group_disk_ids(config, group)
    histories = {}
    for disk in disks:
        replica = replicas.get(disk)
        journal = None if replica is None else replica.journal
        if replica is None or journal is None:
            continue
        # Summaries before progress: a commit record follows the state commit, never the other
        # way round (restorable_floor allows the newest batch's record to be missing).
        summaries = journal.summaries()
        histories[disk] = disk_history(disk, replica.state, replica.progress.last_seq, summaries)
    return list_points(disks, histories, store.batch_rows)


def stored_points(config: AgentConfig, store: StateStore | None, group: str) -> list[RecoveryPoint]:
    """The points of `group` from the files alone (state store and journals), read-only: what
    the CLI lists beside a running agent or without one. Each journal of the group is held
    shared meanwhile, so that none is truncated or pruned under the walk of its summaries.

    Raises OSError when a journal cannot be locked or read.
    """
    disks = group_disk_ids(config, group)
    with contextlib.ExitStack() as held:
        for disk in disks:
            held.enter_context(shared_lock(config.retention.path / disk))
        summaries = {disk: load_summaries(config.retention.path / disk, disk)[0] for disk in disks}
        histories = stored_histories(disks, store, summaries)
        rows: BatchRows = store.batch_rows if store is not None else (lambda d, a, b: [])
        return list_points(disks, histories, rows)


def own_point_times(points: Sequence[RecoveryPoint]) -> dict[str, list[int]]:
    """The times of the per-disk points (`<disk>@<seq>`) among `points`, by disk. A tag point
    of a one-disk group covers that disk alone too, but its time is the tag's, not a batch's:
    left out."""
    own: dict[str, list[int]] = {}
    for point in points:
        if len(point.disks) != 1:
            continue
        [(disk, seq)] = point.disks.items()
        if point.id == f"{disk}@{seq}":
            own.setdefault(disk, []).append(point.time_ns)
    return own
