"""Retrying: which failures are worth another try, and the budget of failures in a row."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.sender.errors import PushFailed
from protocol.client import TlsRefused, TransportError
from protocol.errors import ProtocolError, Stalled, TargetUnavailable

T = TypeVar("T")

RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 10.0

TRANSPORT_ERRORS = (TransportError, TimeoutError, ConnectionError)
"""Failures of the connection rather than answers of the agent."""


class RetryBudget:
    """The failures in a row of one run, across all its requests; `limit` bounds them."""

    def __init__(self, limit: int, disk: str, base_url: str) -> None:
        self.limit = limit
        self.disk = disk
        self.base_url = base_url
        self.in_a_row = 0
        self.total = 0

    def succeeded(self) -> None:
        self.in_a_row = 0

    def count(self, exc: BaseException) -> None:
        """Count `exc` as a failure; PushFailed once the budget is spent."""
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row > self.limit:
            retries = f"{self.limit} retr{'y' if self.limit == 1 else 'ies'}"
            raise PushFailed(
                f"disk {self.disk}: gave up after {retries}: {describe_failure(exc)}",
                disk=self.disk,
            ) from exc

    async def back_off(self, exc: BaseException) -> None:
        """Count `exc` and wait before trying again; PushFailed if retrying is pointless
        (a TLS failure) or the budget is spent."""
        if isinstance(exc, TlsRefused):
            # A certificate the other side refuses stays refused.
            raise PushFailed(
                f"disk {self.disk}: TLS with {self.base_url} failed: {exc}", disk=self.disk
            ) from exc
        self.count(exc)
        await asyncio.sleep(min(RETRY_FIRST_DELAY * 2 ** (self.in_a_row - 1), RETRY_MAX_DELAY))

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """`request()`, again after transient failures. PushFailed for any other error."""
        while True:
            try:
                result = await request()
            except ProtocolError as exc:
                if not is_transient(exc):
                    raise PushFailed(f"disk {self.disk}: {exc}", disk=self.disk) from exc
                await self.back_off(exc)
            except TRANSPORT_ERRORS as exc:
                await self.back_off(exc)
            else:
                return result


def is_transient(exc: ProtocolError) -> bool:
    """Whether an error answer may go away when the request is made again later."""
    # STALLED: the agent cut a batch off because this sender paused too long; sending it
    # again is the cure. 5xx covers TARGET_UNAVAILABLE (503) and RETENTION_FULL (507).
    return exc.status >= 500 or isinstance(exc, TargetUnavailable | Stalled)


def describe_failure(exc: BaseException) -> str:
    """One line for a person: the error's own text, with its type unless it has a code."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ProtocolError):
        return text
    return f"{type(exc).__name__}: {text}"
