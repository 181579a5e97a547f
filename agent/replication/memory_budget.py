"""The memory all batches in flight may hold together (`[server] memory_budget`).

A batch holds memory for its writes in *slots*: one while it gathers a write group from the
body, one for the group the disk's I/O thread writes (the group's bytes and the old bytes read
for its undo). A slot is sized for the worst group: `2 * (group_bytes + max_frame_bytes)` (a
group ends at the frame that crosses `group_bytes`). A batch that cannot get a slot waits before
it reads more of its body, so its connection stops being read and TCP pushes back on its
sender: memory is bounded by the budget plus what each connection buffers (one frame and one
read), whatever the number of disks.

Waiting is first come, first served, and a slot is given back as soon as its group is written
(not when the batch's handler next looks), so a batch always gets a slot once those ahead of it
have had theirs: no stream starves another or waits on itself, even with a one-slot budget.
"""

from __future__ import annotations

import asyncio
from collections import deque


class MemoryBudget:
    """Slots of `slot_bytes` out of `budget_bytes`, given first come, first served."""

    def __init__(self, budget_bytes: int, slot_bytes: int) -> None:
        if budget_bytes < slot_bytes:
            raise ValueError(f"a budget of {budget_bytes} bytes holds no slot of {slot_bytes}")
        self.slot_bytes = slot_bytes
        self.slots = budget_bytes // slot_bytes
        self.budget_bytes = budget_bytes
        self.held = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def held_bytes(self) -> int:
        return self.held * self.slot_bytes

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiting)

    async def take(self) -> None:
        """One slot, once the earlier waiters have had theirs."""
        if self.held < self.slots and not self._waiting:
            self.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # granted just as it was cancelled: pass it on
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def give(self) -> None:
        """Return a slot: to the first waiter, if there is one."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: `held` stays
                return
        self.held -= 1
