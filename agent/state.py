"""The agent's durable state: per-disk replication progress and batch digests, in SQLite (WAL).

The store is the single authority on what is acknowledged: a batch is committed
when its row and the disk's new `last_seq` are in the database, in one
transaction, with `synchronous=FULL` so that the commit survives power loss.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path

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
"""

# States kept in the store. `missing` and `protected` are facts about the
# device right now, so they are derived at run time and never persisted.
RESYNC_REQUIRED = "resync_required"
RESYNCING = "resyncing"
OK = "ok"
RECOVERED = "recovered"
PERSISTED_STATES = frozenset({RESYNC_REQUIRED, RESYNCING, OK, RECOVERED})


@dataclass(frozen=True, slots=True)
class DiskProgress:
    """What has been committed for one disk."""

    disk: str
    last_seq: int = 0
    last_source_time_ns: int = 0
    state: str = RESYNC_REQUIRED
    committed_ns: int = 0


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


def state_after(progress: DiskProgress, flags: frozenset[str]) -> str:
    """The disk's state once a batch with `flags` commits (PROTOCOL.md section 5)."""
    if "resync_done" in flags:
        return OK
    if "resync" in flags:
        return RESYNCING
    return progress.state


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
        if row is None:
            return DiskProgress(disk)
        return DiskProgress(disk, row[0], row[1], row[2], row[3])

    def batch_digest(self, disk: str, seq: int) -> bytes | None:
        """The body digest of an acknowledged batch, or None if it is not known."""
        with self._lock:
            row = self._db.execute(
                "SELECT digest FROM batches WHERE disk = ? AND seq = ?", (disk, seq)
            ).fetchone()
        return None if row is None else bytes(row[0])

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
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new
