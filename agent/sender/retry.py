"""Retrying: which failures are worth another try, and the budget of failures in a row."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.sender.errors import PushFailed
from protocol.client import TlsRefused, TransportError, Unreachable
from protocol.errors import ProtocolError, Stalled, TargetUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 10.0
UNREACHED_RETRIES = 3
"""Retries of a connection refused before this run has reached the agent once (0.5 + 1 + 2 s
of waiting): a wrong port or an agent that is not running fails in about 4 s, not 45. Once
the agent has answered, a refused connection is an agent restarting: the whole budget."""

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
        self.reached = False  # whether the agent has answered once in this run

    def succeeded(self) -> None:
        self.in_a_row = 0
        self.reached = True

    def count(self, exc: BaseException) -> None:
        """Count `exc` as a failure; PushFailed once the budget is spent."""
        self.in_a_row += 1
        self.total += 1
        limit = self.limit
        if isinstance(exc, Unreachable) and not self.reached:
            limit = min(limit, UNREACHED_RETRIES)
        if self.in_a_row > limit:
            retries = f"{limit} retr{'y' if limit == 1 else 'ies'}"
            hint = "" if self.reached else " (is the agent running, and is this its data port?)"
            raise PushFailed(
                f"disk {self.disk}: gave up after {retries}: {describe_failure(exc)}{hint}",
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
        delay = min(RETRY_FIRST_DELAY * 2 ** (self.in_a_row - 1), RETRY_MAX_DELAY)
        # One line per wait, so that a terminal never sits silent while the push retries.
        log.warning(
            "disk %s: %s; trying again in %g s (retry %d)",
            self.disk,
            describe_failure(exc),
            delay,
            self.in_a_row,
        )
        await asyncio.sleep(delay)

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
                self.reached = True
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
