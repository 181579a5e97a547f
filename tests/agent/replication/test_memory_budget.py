"""The memory budget gives slots first come, first served, and never loses one."""

from __future__ import annotations

import asyncio

import pytest

from agent.replication.memory_budget import MemoryBudget


def test_a_budget_holds_whole_slots() -> None:
    budget = MemoryBudget(100, 30)
    assert budget.slots == 3 and budget.held_bytes == 0


def test_a_budget_smaller_than_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="holds no slot"):
        MemoryBudget(10, 30)


async def test_slots_go_to_waiters_in_the_order_they_came() -> None:
    budget = MemoryBudget(2, 1)
    await budget.take()
    await budget.take()
    order: list[int] = []

    async def wait(n: int) -> None:
        await budget.take()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)  # every waiter queued: the point of the test is their order
    assert budget.waiting == 3
    for _ in range(3):
        budget.give()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)

    assert order == [0, 1, 2]
    assert budget.held == 2 and budget.waiting == 0


async def test_a_newcomer_does_not_pass_a_waiter() -> None:
    budget = MemoryBudget(1, 1)
    await budget.take()
    first = asyncio.create_task(budget.take())
    await asyncio.sleep(0)
    budget.give()
    newcomer = asyncio.create_task(budget.take())
    await first

    assert not newcomer.done()
    budget.give()
    await newcomer


async def test_a_cancelled_waiter_leaves_its_slot_to_the_next() -> None:
    budget = MemoryBudget(1, 1)
    await budget.take()
    cancelled = asyncio.create_task(budget.take())
    second = asyncio.create_task(budget.take())
    await asyncio.sleep(0)
    budget.give()  # granted to the first waiter, which is cancelled before it runs
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await second

    assert budget.held == 1 and budget.waiting == 0


async def test_giving_back_every_slot_empties_the_budget() -> None:
    budget = MemoryBudget(3, 1)
    for _ in range(3):
        await budget.take()
    for _ in range(3):
        budget.give()
    assert budget.held == 0
