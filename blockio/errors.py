"""The base of every error blockio raises, so a caller can tell a disk or journal failure from a
bug with one `except`.

Each subclass says what failed and carries the path and reason a person needs to act on it.

OSError. blockio lets the OSError of a plain file operation pass as it is. Its own errors are not
OSErrors, even `JournalIOError`, which carries the errno of the write that failed: callers catch
it beside OSError today, and making it one would let `except OSError` clauses meant for other
failures (a lock file, a sidecar) catch a failed append. The one error that is both is
`blockio.durable.DirectoryNotSynced`: a rename that happened but whose directory sync failed is
the OSError callers of a file write already handle, told apart where it matters.
"""

from __future__ import annotations


class BlockIOError(Exception):
    """Something on a disk, a target or the retention drive failed or is not as it must be."""
