"""Files that survive a crash whole: the atomic replace and the directory syncs it needs.

A file's new bytes are durable once the file is synced, its name once the directory holding the
name is synced. `write_atomically` does both around a rename, as borg's SaveFile does: a crash
leaves the old file or the new one, never part of one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from blockio.errors import BlockIOError


class DirectoryNotSynced(BlockIOError, OSError):
    """The rename is done (the new file is in place) but the directory holding it could not be
    synced: a crash may still bring the old file back. An OSError too (errno, strerror and
    filename, the directory, of the failed sync), so a caller that handles file system failures
    as OSError keeps doing so."""


def fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` durable: files created, renamed or deleted in it are
    still so after a crash. Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory_of(path: Path) -> None:
    try:
        fsync_directory(path.parent)
    except OSError as exc:
        raise DirectoryNotSynced(exc.errno, exc.strerror, str(path.parent)) from exc


def replace_durably(source: Path, destination: Path) -> None:
    """Rename `source` (a file already synced, in the same directory) over `destination`, then
    sync the directory: once this returns, a crash leaves the new file at `destination`.

    Raises OSError when the rename fails (nothing changed); DirectoryNotSynced after it.
    """
    os.replace(source, destination)
    _sync_directory_of(destination)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` with a file holding `data`, its permission bits exactly `mode` from its
    creation on (whatever the umask). Readers see the old file or the new one, never part of one.

    durable=True: the new file is synced before the rename and its directory after, so a crash
    leaves the old file or the new one. durable=False (a cache, rebuilt when lost): nothing is
    synced, and a power loss may leave the old file, the new one or a damaged one.

    Raises OSError when the file cannot be written (then `path` is as it was and no temporary
    file is left); DirectoryNotSynced when it was replaced but the directory sync failed.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write through a file or symlink planted under the temporary name.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits that `mode` asks for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                # fsync, not fdatasync: the mode set above is metadata, and must last too.
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _sync_directory_of(path)
