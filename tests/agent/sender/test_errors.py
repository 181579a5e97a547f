"""The sender's errors are agent errors: the CLI turns them into exit code 1 and one line."""

from __future__ import annotations

from pathlib import Path

from agent.errors import AgentError
from agent.sender.errors import BatchRefused, PushFailed, reading_failed
from protocol.errors import SequenceGap


def test_a_failed_push_is_an_agent_error_that_names_its_disk() -> None:
    failed = PushFailed("disk d0: gave up", disk="d0")

    assert isinstance(failed, AgentError)
    assert failed.disk == "d0"


def test_a_refused_batch_is_a_failed_push_naming_its_seq_and_error() -> None:
    error = SequenceGap("expected 3", expected_seq=3)

    refused = BatchRefused("d0", 5, error)

    assert isinstance(refused, PushFailed)
    assert (refused.seq, refused.error) == (5, error)
    assert str(refused) == "batch 5 of disk d0 refused: SEQUENCE_GAP: expected 3"


def test_a_read_failure_names_the_file_and_keeps_the_cause() -> None:
    error = OSError(5, "Input/output error", "/dev/sdz")

    failed = reading_failed("d0", Path("/images/src.img"), error)

    assert str(failed) == "disk d0: reading the source failed: /dev/sdz: Input/output error"
    assert failed.__cause__ is error
