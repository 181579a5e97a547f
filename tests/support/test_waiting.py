"""The waits of the harness: they return what they waited for, and fail naming it."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import WaitTimedOut, wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count()

    found = wait_until(lambda: next(calls) >= 2 and "ready", timeout=5, what="x", interval=0)

    assert found == "ready"
    assert next(calls) == 3  # no call after the one that held


def test_wait_until_fails_after_its_deadline_naming_what_it_waited_for() -> None:
    with pytest.raises(WaitTimedOut, match=r"timed out after 0.05 s waiting for the file"):
        wait_until(lambda: False, timeout=0.05, what="the file")


def test_a_description_is_computed_at_the_deadline_with_the_last_state() -> None:
    looks: list[int] = []

    def never() -> bool:
        looks.append(len(looks))
        return False

    with pytest.raises(WaitTimedOut) as failed:
        wait_until(never, timeout=0.05, what=lambda: f"the state, {len(looks)} looks")

    assert len(looks) > 1
    assert str(failed.value).endswith(f"waiting for the state, {len(looks)} looks")


async def test_wait_until_async_awaits_a_coroutine_predicate() -> None:
    calls = itertools.count()

    async def ready() -> int | None:
        n = next(calls)
        return n if n >= 2 else None

    assert await wait_until_async(ready, timeout=5, what="x", interval=0) == 2


async def test_wait_until_async_takes_a_plain_predicate_and_fails_naming_it() -> None:
    with pytest.raises(WaitTimedOut, match="waiting for the agent to count it"):
        await wait_until_async(lambda: 0, timeout=0.05, what="the agent to count it")
