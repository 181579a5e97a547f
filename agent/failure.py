"""The one exception a command raises to fail with a one-line reason (exit code 1)."""

from __future__ import annotations


class CommandFailed(Exception):
    """A command could not do its job. The message is the whole story, on one line."""
