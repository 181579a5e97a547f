"""A graceful stop that lets batches in flight finish.

aiohttp's own graceful shutdown is not enough for streamed bodies: once it starts
closing a connection it drops every byte still arriving on it, so a batch whose body
is still on the wire could only stall and be rolled back. The daemon therefore
drains first, with the connections still open: new batches are refused (503
TARGET_UNAVAILABLE, which senders retry once the agent is back), requests in progress
go on until they end, and only then does aiohttp close what is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from protocol.errors import TargetUnavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestDrain:
    """Counts the requests in progress; after `close()` refuses new batch uploads."""

    def __init__(self) -> None:
        self.closing = False
        self.in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Place inside the error middleware, so that the refusal is answered as JSON."""
        if self.closing and request.method == "PUT":
            raise TargetUnavailable("the agent is stopping; send this batch again once it is back")
        self.in_progress += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.in_progress -= 1
            if self.in_progress == 0:
                self._idle.set()

    def close(self) -> None:
        """Refuse new batch uploads from now on."""
        self.closing = True

    async def wait(self, timeout: float) -> bool:
        """Wait until no request is in progress, at most `timeout` s; returns whether none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
