"""The thread-to-loop pipe: a producer thread hands items to the event loop.

The producer runs in a thread of its own (reading, zero checks, LZ4 and XXH3 release the
GIL) and hands each item over with `loop.call_soon_threadsafe` onto an `asyncio.Queue`: the
consumer wakes at once. A semaphore of `depth` slots bounds the items in flight, so memory
stays bounded however far the producer could run ahead. Either side stopping ends the other:
the producer's failure is raised by the consumer's next `get`; the consumer leaving the pipe
makes the producer's next (or current, blocked) `put` raise PipeClosed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

Produce = Callable[[Callable[[T], None]], None]
"""A producer: called in the pipe's thread with `put`, it puts its items and returns."""


class PipeClosed(Exception):
    """Raised by `put` in the producer once the consumer has left the pipe."""


class PipeBroken(Exception):
    """Raised by `get`: the producer failed; its error is the cause (and `pipe.failure`)."""


@dataclass(frozen=True, slots=True)
class _Ended:
    """The producer returned (`error` None) or failed."""

    error: BaseException | None


class ThreadPipe(Generic[T]):
    """Items of a producer thread, in order, to one consumer on the event loop.

    Use it as `async with ThreadPipe(produce, depth=..., name=...) as pipe:` and `get` the
    items; leaving the block stops the producer and waits for its thread to end.
    """

    def __init__(self, produce: Produce[T], *, depth: int, name: str) -> None:
        if depth <= 0:
            raise ValueError(f"depth must be positive, got {depth}")
        self._produce = produce
        self._name = name
        self._slots = threading.Semaphore(depth)
        self._closed = threading.Event()
        self._queue: asyncio.Queue[T | _Ended] = asyncio.Queue()
        self._ended: _Ended | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None
        """The producer's error, once `get` has met it."""

    async def __aenter__(self) -> ThreadPipe[T]:
        self._loop = asyncio.get_running_loop()
        self._finished = self._loop.create_future()
        threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        assert self._finished is not None
        await self._finished

    async def get(self) -> T | None:
        """The next item; None once the producer has returned and every item was taken.

        Raises PipeBroken if the producer failed (after the items it put before).
        """
        if self._ended is None:
            item = await self._queue.get()
            if not isinstance(item, _Ended):
                self._slots.release()
                return item
            self._ended = item
        if self._ended.error is not None:
            self.failure = self._ended.error
            raise PipeBroken(f"the producer failed: {self._ended.error!r}") from self._ended.error
        return None

    def close(self) -> None:
        """Stop the producer at its next `put` (or the one it is blocked in). Idempotent."""
        self._closed.set()
        self._slots.release()  # wakes a put blocked on a full pipe

    def _put(self, item: T) -> None:
        """Producer side: blocks while `depth` items wait. Raises PipeClosed once closed."""
        self._slots.acquire()
        if self._closed.is_set():
            raise PipeClosed
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        ended = _Ended(None)
        try:
            self._produce(self._put)
        except PipeClosed:
            pass
        except BaseException as exc:
            ended = _Ended(exc)
        assert self._loop is not None
        # The loop outlives the thread: __aexit__ waits for _finished.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._end, ended)

    def _end(self, ended: _Ended) -> None:
        self._queue.put_nowait(ended)
        assert self._finished is not None
        if not self._finished.done():
            self._finished.set_result(None)
