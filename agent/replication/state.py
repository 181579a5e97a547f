"""The agent's durable state: per-disk replication progress and batch digests, in SQLite (WAL).

The store is the single authority on what is acknowledged: a batch is committed
when its row and the disk's new `last_seq` are in the database, in one
transaction, with `synchronous=FULL` so that the commit survives power loss.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from protocol.documents import DiskState, Point
from protocol.wire import BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE

SCHEMA = """
CREATE TABLE IF NOT EXISTS disks (
    id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_source_time_ns INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'resync_required',
    committed_ns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    disk TEXT NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    source_time_ns INTEGER NOT NULL,
    committed_ns INTEGER NOT NULL,
    flags TEXT NOT NULL,
    data_bytes INTEGER NOT NULL,
    tag TEXT,
    PRIMARY KEY (disk, seq)
);
CREATE TABLE IF NOT EXISTS recoveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    point TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS resyncs (
    disk TEXT PRIMARY KEY,
    started_seq INTEGER NOT NULL,
    started_ns INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    sent_bytes INTEGER NOT NULL,
    done_seq INTEGER NOT NULL,
    done_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS resync_reasons (
    disk TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detected_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS failovers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    requested TEXT NOT NULL,
    phase TEXT NOT NULL,
    point TEXT,
    point_age_ns INTEGER NOT NULL DEFAULT 0,
    requested_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS target_sizes (
    disk TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    seen_ns INTEGER NOT NULL
);
"""

# States kept in the store. `missing` and `protected` are facts about the
# device right now, so they are derived at run time and never persisted.
PERSISTED_STATES = frozenset(
    {
        DiskState.RESYNC_REQUIRED,
        DiskState.RESYNCING,
        DiskState.OK,
        DiskState.RECOVERED,
        DiskState.FAILED_OVER,
    }
)


class FailoverPhase(StrEnum):
    """Where the failover of a group stands (agent.recovery.failover); each is durable before
    the step after it begins."""

    # Asked for: the group's disks refuse batches; the point is not chosen yet.
    REQUESTED = "requested"
    # The point is chosen and recorded; the disks are `failed_over` and being rolled back.
    ROLLING_BACK = "rolling_back"
    # Every disk holds the point, verified and synced; descriptors still open.
    ROLLED_BACK = "rolled_back"
    # Descriptors closed, exclusive opens dropped: the disks belong to the recovered machine.
    RELEASED = "released"
    # Taken back into replication (`reprotect`): the disks are `resync_required`. Ended.
    REPROTECTED = "reprotected"
    # The point asked for could not be found when the failover resumed: nothing was rolled
    # back, and the disks went back to replication as they were. Ended.
    ABANDONED = "abandoned"


# Phases after which a failover is over: the group's disks are free of it.
ENDED_PHASES = frozenset({FailoverPhase.REPROTECTED, FailoverPhase.ABANDONED})


@dataclass(frozen=True, slots=True)
class FailoverRecord:
    """The failover of consistency group `group`, asked for as `requested` (`latest`, an id,
    ...). `point` is None while the phase is `requested`; `point_age_ns` is how old the point
    was when it was chosen."""

    id: int
    group: str
    requested: str
    phase: FailoverPhase
    point: Point | None
    point_age_ns: int
    requested_ns: int
    updated_ns: int

    @property
    def ended(self) -> bool:
        return self.phase in ENDED_PHASES


@dataclass(frozen=True, slots=True)
class ResyncProgress:
    """The current resync of a disk (its state is `resyncing`), or else its last one.

    A resync is the run of batches flagged `resync` from the first one committed while the
    disk was not `resyncing` (`started_seq`, committed at `started_ns`) to the one flagged
    `resync_done` (`done_seq`, `done_ns`; 0 while it runs), whose commit is the first
    crash-consistent point after it. `offset` is the end of the furthest extent its batches
    wrote: below it the target already holds the resync's source, so a resync cut off
    resumes its comparison there. `sent_bytes` sums the DATA and ZERO lengths of its batches.
    """

    started_seq: int = 0
    started_ns: int = 0
    offset: int = 0
    sent_bytes: int = 0
    done_seq: int = 0
    done_ns: int = 0


@dataclass(frozen=True, slots=True)
class DiskProgress:
    """What has been committed for one disk."""

    disk: str
    last_seq: int = 0
    last_source_time_ns: int = 0
    state: DiskState = DiskState.RESYNC_REQUIRED
    committed_ns: int = 0
    resync: ResyncProgress = ResyncProgress()
    # Why the disk needs a resync when the agent found a gap (its target no longer holds what it
    # acknowledged): kept until a resync completes; "" otherwise (a new pair, a recovered disk).
    resync_reason: str = ""


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """An in-place recovery of consistency group `group` to `point` (its `disks` map each disk
    rolled back to its batch). `finished_ns` is 0 until
    every target was written and verified (a recovery cut off is run again to the same point)."""

    id: int
    group: str
    point: Point
    started_ns: int
    finished_ns: int = 0


@dataclass(frozen=True, slots=True)
class BatchCommit:
    """One acknowledged batch, as recorded in the store."""

    disk: str
    seq: int
    digest: bytes
    source_time_ns: int
    committed_ns: int
    flags: frozenset[str]
    data_bytes: int
    tag: dict[str, object] | None = None
    # The end of the furthest DATA or ZERO extent of the batch (0 without extents).
    extent_end: int = 0


@dataclass(frozen=True, slots=True)
class BatchReceipt:
    """An acknowledged batch as a replay of it is checked: the digest of its body, and the sum
    of its DATA and ZERO lengths."""

    digest: bytes
    data_bytes: int


def state_after(progress: DiskProgress, flags: frozenset[str]) -> DiskState:
    """The disk's state once a batch with `flags` commits (docs/protocol.md section 5)."""
    if BEGIN_FLAG_RESYNC_DONE in flags:
        return DiskState.OK
    if BEGIN_FLAG_RESYNC in flags:
        return DiskState.RESYNCING
    return progress.state


def resync_after(progress: DiskProgress, batch: BatchCommit) -> ResyncProgress:
    """The disk's resync record once `batch` commits (see ResyncProgress)."""
    if BEGIN_FLAG_RESYNC not in batch.flags:
        return progress.resync
    if progress.state == DiskState.RESYNCING:
        resync = progress.resync
    else:
        resync = ResyncProgress(started_seq=batch.seq, started_ns=batch.committed_ns)
    done = BEGIN_FLAG_RESYNC_DONE in batch.flags
    return replace(
        resync,
        offset=max(resync.offset, batch.extent_end),
        sent_bytes=resync.sent_bytes + batch.data_bytes,
        done_seq=batch.seq if done else 0,
        done_ns=batch.committed_ns if done else 0,
    )


class StateStore:
    """SQLite-backed progress of every disk. Safe to call from several threads."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> StateStore:
        """Open (creating if needed) `state_dir/state.db` in WAL mode with full durability."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "state.db"
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        return cls(db, path)

    @classmethod
    def open_readonly(cls, state_dir: Path) -> StateStore:
        """Open an existing store for reading only (the CLI beside a running agent)."""
        path = state_dir / "state.db"
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        return cls(db, path)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, durable at commit), rolled back on any
        exception. Holds the store's lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _newest(self, sql: str, group: str) -> tuple[Any, ...] | None:
        """The one row of `sql` (a SELECT of the newest row of `group`), or None; None too from
        a read-only store written before the table existed."""
        with self._lock:
            try:
                row: tuple[Any, ...] | None = self._db.execute(sql, (group,)).fetchone()
            except sqlite3.OperationalError:
                return None
        return row

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def progress(self, disk: str) -> DiskProgress:
        """The committed progress of `disk` (a fresh disk if it was never seen)."""
        with self._lock:
            row = self._db.execute(
                "SELECT last_seq, last_source_time_ns, state, committed_ns FROM disks WHERE id = ?",
                (disk,),
            ).fetchone()
            try:
                resync = self._db.execute(
                    "SELECT started_seq, started_ns, offset, sent_bytes, done_seq, done_ns"
                    " FROM resyncs WHERE disk = ?",
                    (disk,),
                ).fetchone()
            except sqlite3.OperationalError:
                # A store of an older agent, opened read-only: it has no resyncs table yet.
                resync = None
            try:
                reason = self._db.execute(
                    "SELECT reason FROM resync_reasons WHERE disk = ?", (disk,)
                ).fetchone()
            except sqlite3.OperationalError:
                reason = None  # likewise
        if row is None:
            return DiskProgress(disk)
        return DiskProgress(
            disk,
            row[0],
            row[1],
            DiskState(row[2]),
            row[3],
            ResyncProgress() if resync is None else ResyncProgress(*resync),
            "" if reason is None else reason[0],
        )

    def batch_receipt(self, disk: str, seq: int) -> BatchReceipt | None:
        """What the store keeps of an acknowledged batch to recognise it when it is sent again,
        or None if it is not known."""
        with self._lock:
            row = self._db.execute(
                "SELECT digest, data_bytes FROM batches WHERE disk = ? AND seq = ?", (disk, seq)
            ).fetchone()
        return None if row is None else BatchReceipt(bytes(row[0]), int(row[1]))

    def target_size(self, disk: str) -> tuple[int, int]:
        """(size in bytes, time_ns) of `disk`'s target when it was last opened for writing;
        (0, 0) when it never was (a target smaller than this one is `protected`)."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT size_bytes, seen_ns FROM target_sizes WHERE disk = ?", (disk,)
                ).fetchone()
            except sqlite3.OperationalError:
                return 0, 0  # a read-only store written before this table existed
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def record_target_size(self, disk: str, size_bytes: int, seen_ns: int) -> None:
        """Remember the size of `disk`'s target, just opened for writing (durable on return)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO target_sizes (disk, size_bytes, seen_ns) VALUES (?, ?, ?)"
                " ON CONFLICT(disk) DO UPDATE SET"
                " size_bytes = excluded.size_bytes, seen_ns = excluded.seen_ns",
                (disk, size_bytes, seen_ns),
            )

    def commit(self, batch: BatchCommit, progress: DiskProgress) -> DiskProgress:
        """Record `batch` as acknowledged, atomically with the disk's new progress.

        Returns the new progress. On return the commit is on stable storage.
        Raises sqlite3.Error if it could not be made durable (nothing is committed then).
        """
        new = replace(
            progress,
            last_seq=batch.seq,
            last_source_time_ns=batch.source_time_ns,
            state=state_after(progress, batch.flags),
            committed_ns=batch.committed_ns,
            resync=resync_after(progress, batch),
            resync_reason="" if BEGIN_FLAG_RESYNC_DONE in batch.flags else progress.resync_reason,
        )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        batch.disk,
                        batch.seq,
                        batch.digest,
                        batch.source_time_ns,
                        batch.committed_ns,
                        ",".join(sorted(batch.flags)),
                        batch.data_bytes,
                        None if batch.tag is None else json.dumps(batch.tag),
                    ),
                )
                self._db.execute(
                    "INSERT INTO disks (id, last_seq, last_source_time_ns, state, committed_ns)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                    " last_seq = excluded.last_seq,"
                    " last_source_time_ns = excluded.last_source_time_ns,"
                    " state = excluded.state, committed_ns = excluded.committed_ns",
                    (new.disk, new.last_seq, new.last_source_time_ns, new.state, new.committed_ns),
                )
                if new.resync != progress.resync:
                    self._db.execute(
                        "INSERT OR REPLACE INTO resyncs VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (new.disk, *astuple(new.resync)),
                    )
                if progress.resync_reason and not new.resync_reason:
                    self._db.execute("DELETE FROM resync_reasons WHERE disk = ?", (new.disk,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def require_resync(
        self, disk: str, reason: str, detected_ns: int, *, last_seq: int = 0
    ) -> DiskProgress:
        """Record a gap found on `disk` (docs/protocol.md 5: a divergence the agent detects):
        its state becomes `resync_required` (a `recovered` disk stays `recovered`, which already
        refuses all but a resync) and `reason` says why until a `resync_done` commits. `last_seq`:
        a batch the undo journal committed that the store does not know; the disk's last_seq
        becomes it if it is higher, so that batch numbers go on after it. In one transaction,
        durable on return; returns the disk's new progress. Raises sqlite3.Error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO disks (id, last_seq, state) VALUES (?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET"
                    " last_seq = MAX(last_seq, excluded.last_seq),"
                    " state = CASE state WHEN ? THEN state ELSE excluded.state END",
                    (disk, last_seq, DiskState.RESYNC_REQUIRED, DiskState.RECOVERED),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO resync_reasons VALUES (?, ?, ?)",
                    (disk, reason, detected_ns),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.progress(disk)

    # -- recovery points and recoveries (retention) ---------------------------------------

    def batch_rows(self, disk: str, first_seq: int, last_seq: int) -> list[BatchCommit]:
        """The acknowledged batches of `disk` with seq from `first_seq` to `last_seq`, in order
        (`extent_end` is not kept and reads 0)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, digest, source_time_ns, committed_ns, flags, data_bytes, tag"
                " FROM batches WHERE disk = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (disk, first_seq, last_seq),
            ).fetchall()
        return [
            BatchCommit(
                disk=disk,
                seq=row[0],
                digest=bytes(row[1]),
                source_time_ns=row[2],
                committed_ns=row[3],
                flags=frozenset(flag for flag in row[4].split(",") if flag),
                data_bytes=row[5],
                tag=None if row[6] is None else json.loads(row[6]),
            )
            for row in rows
        ]

    def begin_recovery(self, group: str, point: Point, started_ns: int) -> RecoveryRecord:
        """Record an in-place recovery of `group` to `point` (a Point JSON object) and make each
        of its disks `recovered`, in one transaction, durable on return: from then on those
        disks refuse batches until a resync, whatever happens to the recovery.
        Raises sqlite3.Error."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO recoveries (grp, point, started_ns, finished_ns) VALUES (?, ?, ?, 0)",
                (group, json.dumps(point.to_json(), sort_keys=True), started_ns),
            )
            _set_states(db, point.disks, DiskState.RECOVERED)
        assert cursor.lastrowid is not None
        return RecoveryRecord(cursor.lastrowid, group, point, started_ns)

    def finish_recovery(self, recovery_id: int, finished_ns: int) -> None:
        """Mark the in-place recovery `recovery_id` as done (durable on return)."""
        with self._lock:
            self._db.execute(
                "UPDATE recoveries SET finished_ns = ? WHERE id = ?", (finished_ns, recovery_id)
            )

    def last_recovery(self, group: str) -> RecoveryRecord | None:
        """The latest in-place recovery of `group`, or None."""
        row = self._newest(
            "SELECT id, point, started_ns, finished_ns FROM recoveries"
            " WHERE grp = ? ORDER BY id DESC LIMIT 1",
            group,
        )
        if row is None:
            return None
        point = Point.from_json(json.loads(row[1]))
        return RecoveryRecord(row[0], group, point, row[2], row[3])

    # -- failovers (agent.recovery.failover) ----------------------------------------------

    def begin_failover(self, group: str, requested: str, now_ns: int) -> FailoverRecord:
        """Record that `group` is to fail over to the point `requested` (phase `requested`),
        durable on return. Raises sqlite3.Error."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO failovers (grp, requested, phase, requested_ns, updated_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                (group, requested, FailoverPhase.REQUESTED, now_ns, now_ns),
            )
        assert cursor.lastrowid is not None
        return FailoverRecord(
            cursor.lastrowid, group, requested, FailoverPhase.REQUESTED, None, 0, now_ns, now_ns
        )

    def choose_failover_point(
        self, failover: FailoverRecord, point: Point, now_ns: int
    ) -> FailoverRecord:
        """Record `point` as the failover's and make each disk of it `failed_over`, in one
        transaction, durable on return: from then on those disks take no batch, whatever
        happens to the failover, and the point is the one a restart finishes with.
        Raises sqlite3.Error."""
        age = max(0, now_ns - point.time_ns)
        with self._transaction() as db:
            db.execute(
                "UPDATE failovers SET phase = ?, point = ?, point_age_ns = ?, updated_ns = ?"
                " WHERE id = ?",
                (
                    FailoverPhase.ROLLING_BACK,
                    json.dumps(point.to_json(), sort_keys=True),
                    age,
                    now_ns,
                    failover.id,
                ),
            )
            _set_states(db, point.disks, DiskState.FAILED_OVER)
        return replace(
            failover,
            phase=FailoverPhase.ROLLING_BACK,
            point=point,
            point_age_ns=age,
            updated_ns=now_ns,
        )

    def advance_failover(
        self, failover: FailoverRecord, phase: FailoverPhase, now_ns: int
    ) -> FailoverRecord:
        """Move the failover to `phase` (durable on return). Raises sqlite3.Error."""
        with self._lock:
            self._db.execute(
                "UPDATE failovers SET phase = ?, updated_ns = ? WHERE id = ?",
                (phase, now_ns, failover.id),
            )
        return replace(failover, phase=phase, updated_ns=now_ns)

    def end_failover(
        self, failover: FailoverRecord, disks: list[str], reason: str, now_ns: int
    ) -> FailoverRecord:
        """Reprotect: the failover ends and each of `disks` becomes `resync_required` with
        `reason`, in one transaction, durable on return. Raises sqlite3.Error."""
        with self._transaction() as db:
            db.execute(
                "UPDATE failovers SET phase = ?, updated_ns = ? WHERE id = ?",
                (FailoverPhase.REPROTECTED, now_ns, failover.id),
            )
            _set_states(db, disks, DiskState.RESYNC_REQUIRED)
            db.executemany(
                "INSERT OR REPLACE INTO resync_reasons VALUES (?, ?, ?)",
                [(disk, reason, now_ns) for disk in disks],
            )
        return replace(failover, phase=FailoverPhase.REPROTECTED, updated_ns=now_ns)

    def last_failover(self, group: str) -> FailoverRecord | None:
        """The latest failover of `group` (ended or not), or None."""
        row = self._newest(
            "SELECT id, requested, phase, point, point_age_ns, requested_ns, updated_ns"
            " FROM failovers WHERE grp = ? ORDER BY id DESC LIMIT 1",
            group,
        )
        if row is None:
            return None
        point = None if row[3] is None else Point.from_json(json.loads(row[3]))
        id_, requested, phase, _, age, requested_ns, updated_ns = row
        return FailoverRecord(
            id_, group, requested, FailoverPhase(phase), point, age, requested_ns, updated_ns
        )

    def open_failovers(self) -> list[FailoverRecord]:
        """The failovers not ended, one per group at most, oldest first."""
        with self._lock:
            try:
                groups = [
                    row[0]
                    for row in self._db.execute(
                        "SELECT DISTINCT grp FROM failovers ORDER BY grp"
                    ).fetchall()
                ]
            except sqlite3.OperationalError:
                return []
        found = [self.last_failover(group) for group in groups]
        return sorted((f for f in found if f is not None and not f.ended), key=lambda f: f.id)


def _set_states(db: sqlite3.Connection, disks: Iterable[str], state: DiskState) -> None:
    """Within a transaction: each of `disks` is in `state` (a disk never seen gets its row)."""
    db.executemany(
        "INSERT INTO disks (id, state) VALUES (?, ?)"
        " ON CONFLICT(id) DO UPDATE SET state = excluded.state",
        [(disk, state) for disk in disks],
    )
