"""Each disk's state is logged when the agent finds it and again each time it changes, with the
fields DISK, STATE, PREVIOUS and REASON; a state that stays is not logged again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.log_fields import record_fields
from agent.metrics import STATE_BEHIND_JOURNAL
from agent.replication.replica import Replica
from blockio.disks.target import TargetError
from tests.support.retention_scenario import file_replica

MiB = 1 << 20
REPLICA = "agent.replication.replica"


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    replica, store = file_replica(tmp_path)
    yield replica
    await replica.run(replica.close_blocking)
    replica.executor.shutdown()
    store.close()


def state_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, str]]]:
    return [
        (r.getMessage(), record_fields(r))
        for r in caplog.records
        if r.name == REPLICA and ": state " in r.getMessage()
    ]


async def test_the_state_found_is_logged_once_logging_starts_without_a_previous_one(
    replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, REPLICA):
        await replica.run(replica.open_blocking)
        assert state_lines(caplog) == []  # the daemon's start may still be refused
        replica.start_logging_state()
    assert state_lines(caplog) == [
        ("disk d0: state resync_required", {"DISK": "d0", "STATE": "resync_required"})
    ]


@pytest.fixture
async def logging_replica(replica: Replica) -> Replica:
    """The replica opened, its first state logged."""
    await replica.run(replica.open_blocking)
    replica.start_logging_state()
    return replica


async def test_a_target_lost_is_logged_missing_with_its_previous_state_and_why(
    logging_replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, REPLICA):
        logging_replica.mark_unavailable("read of 4096 bytes at 0 failed: EIO")
    assert state_lines(caplog) == [
        (
            "disk d0: state missing (was resync_required)",
            {
                "DISK": "d0",
                "STATE": "missing",
                "PREVIOUS": "resync_required",
                "REASON": "read of 4096 bytes at 0 failed: EIO",
            },
        )
    ]


async def test_a_target_that_cannot_be_opened_is_logged_missing_with_the_reason(
    replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    replica.config.path.unlink()  # type: ignore[union-attr]
    with caplog.at_level(logging.INFO, REPLICA), pytest.raises(TargetError):
        await replica.run(replica.open_blocking)
    with caplog.at_level(logging.INFO, REPLICA):
        replica.start_logging_state()
    [(message, fields)] = state_lines(caplog)
    assert message == "disk d0: state missing"
    assert fields["STATE"] == "missing" and str(replica.config.path) in fields["REASON"]


async def test_a_state_that_stays_is_not_logged_again(
    logging_replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    replica = logging_replica
    with caplog.at_level(logging.INFO, REPLICA):
        replica.log_state_change()
        await replica.run(replica.require_resync, STATE_BEHIND_JOURNAL, "already required")
    assert state_lines(caplog) == []
