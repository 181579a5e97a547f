"""`lock_holder` tells who holds a state dir's `agent.lock` without taking it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.replication.instance_lock import LOCK_NAME, LockHolder, acquire_agent_lock, lock_holder


def test_a_state_dir_without_a_lock_file_has_no_holder(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None


def test_a_lock_file_nobody_holds_has_no_holder(tmp_path: Path) -> None:
    os.close(acquire_agent_lock(tmp_path, holder="mtagent serve", refusal="test"))

    assert lock_holder(tmp_path) is None


def test_the_holder_is_named_with_its_pid_and_the_lock_stays_free_to_take(tmp_path: Path) -> None:
    fd = acquire_agent_lock(tmp_path, holder="mtagent serve", refusal="test")
    try:
        assert lock_holder(tmp_path) == LockHolder(os.getpid(), "mtagent serve")
    finally:
        os.close(fd)
    # Reading took nothing: the lock is free again once its holder let go.
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_process_waiting_for_the_lock_is_not_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    st = lock.stat()
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    table = tmp_path / "locks"
    table.write_text(f"1: -> FLOCK  ADVISORY  WRITE 4242 {where} 0 EOF\n")

    assert lock_holder(tmp_path, kernel_locks=table) is None
