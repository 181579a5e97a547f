"""The base of every error blockio raises, so a caller can tell a disk or journal failure from a
bug with one `except`.

Each subclass says what failed and carries the path and reason a person needs to act on it. An
error that callers also catch as an OSError (an operation of the file system that half happened)
derives from both bases: `DirectoryNotSynced`.
"""

from __future__ import annotations


class BlockIOError(Exception):
    """Something on a disk, a target or the retention drive failed or is not as it must be."""
