"""The retention directory at start-up: made ready before any disk is opened, or refused.

An unmounted retention drive leaves an empty mount point (or nothing) where the drive should be;
undo data written there fills the root file system. So the agent creates the retention
directory only when its parent exists (never a whole missing tree), refuses a path that is not
a directory, and with `[retention] require_mount = true` refuses a path whose file system is
the root one (read from /proc/self/mountinfo), before it creates anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from agent.config import RetentionConfig
from agent.errors import AgentError
from blockio.disks.safety import PROC, Mount, parse_mountinfo
from blockio.durable import fsync_directory


class RetentionDirRefused(AgentError):
    """The retention directory cannot be used as configured. The message names the path and
    says what to do."""


def mount_point_of(path: Path, mounts: Sequence[Mount]) -> str:
    """The mount point of the file system that holds `path` (absolute, symbolic links
    resolved): the longest mount point that contains it; '/' when no other one does."""
    holding = [m.mount_point for m in mounts if path.is_relative_to(m.mount_point)]
    return max(holding, key=len, default="/")


def prepare_retention_dir(config: RetentionConfig, proc: Path = PROC) -> None:
    """Make sure `config.path` is a directory the agent may write undo data to, creating it
    (and syncing its parent) when only it is missing.

    Raises RetentionDirRefused, having created nothing, when the path is not a directory, when
    it and its parent are both missing, or, with `require_mount`, when it is on the root file
    system; OSError when the directory cannot be created or mountinfo cannot be read.
    """
    path = config.path
    if path.exists() and not path.is_dir():
        raise RetentionDirRefused(
            f"retention path {path} is not a directory: point [retention] path at the "
            "retention drive's directory"
        )
    if not path.exists() and not path.parent.is_dir():
        raise RetentionDirRefused(
            f"retention path {path} does not exist, nor does {path.parent}: mount the "
            "retention drive (or create the directory), or correct [retention] path"
        )
    if config.require_mount:
        # The directory's own file system, or its parent's where it is still to be made.
        held_by = path if path.exists() else path.parent
        mounts = parse_mountinfo((proc / "self" / "mountinfo").read_text())
        if mount_point_of(held_by.resolve(), mounts) == "/":
            raise RetentionDirRefused(
                f"retention path {path} is on the root file system: mount the retention drive "
                "there, or set [retention] require_mount = false to keep undo data on /"
            )
    if not path.exists():
        os.mkdir(path)
        fsync_directory(path.parent)
