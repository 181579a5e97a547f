"""The C allocator told to give large buffers back to the system when they are freed.

glibc serves a large allocation from mmap and unmaps it on free, but after the first such free
it raises its mmap threshold (up to 32 MiB) and serves the next ones from its heaps, one per
thread that allocates. The agent's large buffers (frames, write groups, the old bytes read for
undo records) come and go in the event loop and in one I/O thread per disk, so with many disks
each thread's heap keeps its high water of freed groups: measured with 32 disks streaming, 407
MiB of peak RSS above what the memory budget holds live, against 150 MiB with a fixed threshold.
A fixed threshold (setting it stops the adjustment) makes the peak follow what is live, for an
mmap and munmap per large buffer, which is nothing beside an fdatasync.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BUFFER_BYTES = 256 * 1024


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 256 KiB; False (and nothing done) without glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt): its own policy stands
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
    if not done:
        log.warning("could not set the allocator's mmap threshold; peak memory may be higher")
    return done
