"""`<state_dir>/agent.lock`: at most one process at a time applies to the disks of a state dir.

The daemon holds it exclusively (flock) from before it opens any disk until it has closed them
all; `mtagent recover --in-place` takes it the same way, without waiting, and so refuses to run
beside an agent (and an agent refuses to start beside an in-place recovery). The kernel releases
the lock when its holder dies, so a crash leaves nothing to clean up. The file holds the
holder's pid and name, for the message of whoever finds it taken.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import AgentError

LOCK_NAME = "agent.lock"


class AgentLockHeld(AgentError):
    """Another process holds the state dir's lock. `holder`: what its lock file says."""

    def __init__(self, path: Path, holder: str, wanted_by: str) -> None:
        self.path = path
        self.holder = holder
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"{path} is held by {who}: {wanted_by}")


def acquire_agent_lock(state_dir: Path, *, holder: str, refusal: str) -> int:
    """Take `<state_dir>/agent.lock` exclusively, without waiting, and write `holder` (with our
    pid) into it. Returns the descriptor: closing it releases the lock.

    Raises AgentLockHeld (its message ends with `refusal`) when another process holds it;
    OSError when the file cannot be created.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        current = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AgentLockHeld(path, current, refusal) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} ({holder})\n".encode(), 0)
    return fd
