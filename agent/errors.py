"""The agent's error base: every error a person can cause or must act on, in one line.

`AgentError` is what the CLI maps to its `exit_code` (1 unless a command documents another) with
its message on stderr; domain errors of every room of agent/ derive from it (the config's, the
PKI's, a held lock, a failed push).
`CommandFailed` is the one a command raises itself when it has nothing more specific to say.
"""

from __future__ import annotations


class AgentError(Exception):
    """Something the agent could not do. The message is the whole story, on one line;
    `exit_code` is the CLI's exit status for it (1 unless a command documents another)."""

    exit_code: int = 1


class CommandFailed(AgentError):
    """A command could not do its job, for a reason no domain error names."""
