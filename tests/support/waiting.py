"""Waiting for something to happen: poll a predicate until it holds or a deadline passes.

Tests wait on conditions, never on fixed sleeps: a sleep long enough for a loaded machine wastes
time everywhere else, and one short enough for a fast machine fails on a slow one.

    wait_until(lambda: path.exists(), timeout=10, what="the export to appear")
    disk = await wait_until_async(ready_disk, timeout=15, what=lambda: f"d0 ready, last {seen}")
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

Description = str | Callable[[], str]


class WaitTimedOut(AssertionError):
    """What a test waited for did not happen before its deadline."""


def _timed_out(what: Description, timeout: float) -> WaitTimedOut:
    description = what() if callable(what) else what
    return WaitTimedOut(f"timed out after {timeout:g} s waiting for {description}")


def wait_until(
    predicate: Callable[[], T | None], *, timeout: float, what: Description, interval: float = 0.05
) -> T:
    """Call `predicate` every `interval` seconds until it returns a truthy value, and return it.

    Raises WaitTimedOut naming `what` (a text, or a callable asked at the deadline for one that
    can show the last thing seen) once `timeout` seconds have passed without it holding.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout)
        time.sleep(interval)


@overload
async def wait_until_async(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: Description,
    interval: float = ...,
) -> T: ...
@overload
async def wait_until_async(
    predicate: Callable[[], T | None], *, timeout: float, what: Description, interval: float = ...
) -> T: ...
async def wait_until_async(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: Description,
    interval: float = 0.05,
) -> Any:
    """`wait_until` for a running event loop: `predicate` may be a coroutine function, and the
    loop keeps running between calls. Raises WaitTimedOut as `wait_until` does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(interval)
