"""`<state_dir>/agent.lock`: at most one process at a time applies to the disks of a state dir.

The daemon holds it exclusively (flock) from before it opens any disk until it has closed them
all; `mtagent recover --in-place` takes it the same way, without waiting, and so refuses to run
beside an agent (and an agent refuses to start beside an in-place recovery). The kernel releases
the lock when its holder dies, so a crash leaves nothing to clean up. The file holds the
holder's pid and name, for the message of whoever finds it taken. `lock_holder` tells who holds
it without taking it (the kernel's table of locks), so `mtagent status` never stands in the way
of an agent starting.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError

LOCK_NAME = "agent.lock"
_KERNEL_LOCKS = Path("/proc/locks")


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


@dataclass(frozen=True, slots=True)
class LockHolder:
    """The live process that holds a state dir's lock: its `pid` (as the kernel tells it) and
    `name`, what it wrote into the file (`mtagent serve`, `mtagent recover --in-place`; empty
    when it wrote nothing readable)."""

    pid: int
    name: str


def lock_holder(state_dir: Path, *, kernel_locks: Path = _KERNEL_LOCKS) -> LockHolder | None:
    """Who holds `<state_dir>/agent.lock` now, read from the kernel's table of locks without
    taking the lock; None when the file does not exist or no process holds it.

    Raises OSError when the kernel's table cannot be read.
    """
    path = state_dir / LOCK_NAME
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    table = kernel_locks.read_text()
    pid = _flock_holder(table, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    if pid is None:
        return None
    try:
        content = path.read_text(errors="replace").strip()
    except OSError:
        content = ""
    # The file says "<pid> (<name>)"; the kernel's pid is the one to trust.
    name = content.partition(" ")[2].strip("()") if content else ""
    return LockHolder(pid, name)


def _flock_holder(table: str, major: int, minor: int, inode: int) -> int | None:
    """The pid of the flock on that file in /proc/locks's `table`; lines read
    `1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146390 0 EOF` (device numbers in hex)."""
    wanted = f"{major:02x}:{minor:02x}:{inode}"
    for line in table.splitlines():
        fields = line.split()
        # A waiter's line starts "1: -> FLOCK ...": it does not hold the lock.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return int(fields[4])
    return None
