"""The thread-to-loop pipe: items in order, bounded, and either side stopping ends the other."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from agent.sender.pipe import PipeBroken, PipeClosed, ThreadPipe

DEADLINE = 10.0
T = TypeVar("T")


async def until(condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, polling, failing after DEADLINE seconds."""
    async with asyncio.timeout(DEADLINE):
        while not condition():
            await asyncio.sleep(0.01)


async def test_items_arrive_in_order_then_none_for_good() -> None:
    def produce(put: Callable[[int], None]) -> None:
        for number in range(100):
            put(number)

    async with ThreadPipe(produce, depth=4, name="test") as pipe:
        got = [item async for item in _items(pipe)]
        assert await pipe.get() is None

    assert got == list(range(100))


async def test_a_producer_failure_is_raised_by_get_after_the_items_put_before_it() -> None:
    def produce(put: Callable[[str], None]) -> None:
        put("first")
        raise OSError(5, "Input/output error")

    async with ThreadPipe(produce, depth=4, name="test") as pipe:
        assert await pipe.get() == "first"
        with pytest.raises(PipeBroken) as raised:
            await pipe.get()

    assert isinstance(raised.value.__cause__, OSError)
    assert pipe.failure is raised.value.__cause__


async def test_a_full_pipe_holds_the_producer_back() -> None:
    put_count = 0

    def produce(put: Callable[[int], None]) -> None:
        nonlocal put_count
        for number in range(10):
            put(number)
            put_count += 1

    async with ThreadPipe(produce, depth=3, name="test") as pipe:
        await until(lambda: put_count == 3)
        await asyncio.sleep(0.2)  # time for a producer that is not held back to run on
        assert put_count == 3
        assert await pipe.get() == 0
        await until(lambda: put_count == 4)
        assert [item async for item in _items(pipe)] == list(range(1, 10))


async def test_leaving_the_pipe_stops_a_producer_blocked_on_it() -> None:
    stopped = threading.Event()

    def produce(put: Callable[[int], None]) -> None:
        try:
            while True:
                put(0)
        except PipeClosed:
            stopped.set()
            raise

    async with asyncio.timeout(DEADLINE):
        async with ThreadPipe(produce, depth=2, name="test") as pipe:
            assert await pipe.get() == 0

    assert stopped.is_set()  # the exit waited for the producer's end


async def test_a_consumer_failure_stops_the_producer_and_is_raised() -> None:
    ended = threading.Event()

    def produce(put: Callable[[int], None]) -> None:
        try:
            while True:
                put(0)
                time.sleep(0.001)
        finally:
            ended.set()

    with pytest.raises(RuntimeError, match="consumer"):
        async with ThreadPipe(produce, depth=2, name="test") as pipe:
            await pipe.get()
            raise RuntimeError("the consumer failed")

    assert ended.is_set()


def test_a_pipe_needs_room_for_an_item() -> None:
    with pytest.raises(ValueError, match="depth"):
        ThreadPipe(lambda put: None, depth=0, name="test")


async def _items(pipe: ThreadPipe[T]) -> AsyncIterator[T]:
    """The pipe's items up to its end."""
    while (item := await pipe.get()) is not None:
        yield item
