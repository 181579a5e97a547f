"""What recovery tells a person it could not do: each error's message is the whole story, on
one line, and the CLI exits 1 with it (they are `AgentError`s)."""

from __future__ import annotations

from agent.errors import AgentError


class RecoveryFailed(AgentError):
    """Listing or restoring the points of a group failed; the base of recovery's errors."""


class UnknownGroupName(RecoveryFailed):
    """No configured disk is in the group asked for. `group`: the name asked for."""

    def __init__(self, config_file: object, group: str) -> None:
        self.group = group
        super().__init__(f"{config_file}: no disk is in group {group!r}")


class PointNotFound(RecoveryFailed, LookupError):
    """The point asked for is not listed. `str()` is one line saying why."""


class RestoreFailed(RecoveryFailed):
    """A restore was refused or cut off: an image already there, a target or journal that
    cannot be read, written or verified, a recovery in place left unfinished."""
