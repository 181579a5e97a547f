"""The resync record of a disk (StateStore): how a commit moves it, and that it is durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.replication.state import (
    BatchCommit,
    DiskProgress,
    ResyncProgress,
    StateStore,
    resync_after,
)
from protocol.documents import DiskState

RESYNC = frozenset({"resync"})
DONE = frozenset({"resync", "resync_done"})
NONE = frozenset[str]()


def commit(seq: int, flags: frozenset[str], *, extent_end: int, data_bytes: int) -> BatchCommit:
    return BatchCommit(
        disk="d0",
        seq=seq,
        digest=b"\0" * 16,
        source_time_ns=7,
        committed_ns=1000 + seq,
        flags=flags,
        data_bytes=data_bytes,
        extent_end=extent_end,
    )


RUNNING = ResyncProgress(started_seq=3, started_ns=1003, offset=4096, sent_bytes=4096)
FINISHED = ResyncProgress(started_seq=3, started_ns=1003, offset=8192, sent_bytes=8192, done_seq=4)


@pytest.mark.parametrize(
    ("state", "before", "batch", "after"),
    [
        pytest.param(
            DiskState.RESYNC_REQUIRED,
            ResyncProgress(),
            commit(1, RESYNC, extent_end=4096, data_bytes=4096),
            ResyncProgress(started_seq=1, started_ns=1001, offset=4096, sent_bytes=4096),
            id="first-resync-batch-of-a-new-pair-starts-a-resync",
        ),
        pytest.param(
            DiskState.RESYNCING,
            RUNNING,
            commit(4, RESYNC, extent_end=65536, data_bytes=512),
            ResyncProgress(started_seq=3, started_ns=1003, offset=65536, sent_bytes=4608),
            id="a-later-batch-moves-the-offset-and-adds-its-bytes",
        ),
        pytest.param(
            DiskState.RESYNCING,
            RUNNING,
            commit(4, RESYNC, extent_end=1024, data_bytes=512),
            ResyncProgress(started_seq=3, started_ns=1003, offset=4096, sent_bytes=4608),
            id="an-extent-behind-the-offset-does-not-move-it-back",
        ),
        pytest.param(
            DiskState.RESYNCING,
            RUNNING,
            commit(4, DONE, extent_end=0, data_bytes=0),
            ResyncProgress(
                started_seq=3,
                started_ns=1003,
                offset=4096,
                sent_bytes=4096,
                done_seq=4,
                done_ns=1004,
            ),
            id="resync-done-records-the-consistent-point",
        ),
        pytest.param(
            DiskState.OK,
            FINISHED,
            commit(9, RESYNC, extent_end=512, data_bytes=512),
            ResyncProgress(started_seq=9, started_ns=1009, offset=512, sent_bytes=512),
            id="a-resync-of-an-ok-disk-starts-afresh",
        ),
        pytest.param(
            DiskState.RECOVERED,
            FINISHED,
            commit(9, DONE, extent_end=512, data_bytes=512),
            ResyncProgress(
                started_seq=9, started_ns=1009, offset=512, sent_bytes=512, done_seq=9, done_ns=1009
            ),
            id="a-recovered-disk-resyncs-in-one-batch",
        ),
        pytest.param(
            DiskState.OK,
            FINISHED,
            commit(9, NONE, extent_end=512, data_bytes=512),
            FINISHED,
            id="an-ordinary-batch-leaves-the-record-alone",
        ),
    ],
)
def test_resync_after(
    state: str, before: ResyncProgress, batch: BatchCommit, after: ResyncProgress
) -> None:
    progress = DiskProgress("d0", batch.seq - 1, state=state, resync=before)

    assert resync_after(progress, batch) == after


def test_the_resync_record_is_committed_with_its_batch_and_read_back(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path)
    first = store.commit(commit(1, RESYNC, extent_end=65536, data_bytes=65536), DiskProgress("d0"))
    store.close()

    reopened = StateStore.open_readonly(tmp_path)
    progress = reopened.progress("d0")
    reopened.close()

    assert progress == first
    assert progress.state == DiskState.RESYNCING
    assert progress.resync == ResyncProgress(
        started_seq=1, started_ns=1001, offset=65536, sent_bytes=65536
    )
