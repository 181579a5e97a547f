"""The sender's errors: a run that stopped before its end, and a batch the agent refused."""

from __future__ import annotations

from pathlib import Path

from agent.errors import AgentError
from protocol.errors import ProtocolError


class PushFailed(AgentError):
    """A push, resync or verify stopped before its end. The message is one line naming the
    disk."""

    def __init__(self, message: str, *, disk: str) -> None:
        super().__init__(message)
        self.disk = disk


class BatchRefused(PushFailed):
    """The agent refused batch `seq` with `error`, an error that retrying cannot fix."""

    def __init__(self, disk: str, seq: int, error: ProtocolError) -> None:
        super().__init__(f"batch {seq} of disk {disk} refused: {error}", disk=disk)
        self.seq = seq
        self.error = error


def source_unreadable(disk: str, source: Path, error: OSError) -> PushFailed:
    """The PushFailed for a source (or base) that cannot be opened or measured."""
    failed = PushFailed(
        f"disk {disk}: cannot read {error.filename or source}: {error.strerror}", disk=disk
    )
    failed.__cause__ = error
    return failed


def reading_failed(disk: str, source: Path, error: BaseException) -> PushFailed:
    """The PushFailed for a failure while reading the source (an I/O error, an image that
    ended early), with `error` as its cause."""
    if isinstance(error, OSError):
        what = f"{error.filename or source}: {error.strerror or error}"
    else:
        what = str(error)
    failed = PushFailed(f"disk {disk}: reading the source failed: {what}", disk=disk)
    failed.__cause__ = error
    return failed
