"""The two digest streams of a comparison: the source's, read ahead in windows on threads of
their own, and the target's, streamed by the agent and asked again after a failure."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

from agent.sender.errors import PushFailed, reading_failed
from agent.sender.retry import TRANSPORT_ERRORS, RetryBudget, is_transient
from blockio.scan.chunk_digests import SCAN_READERS, WindowReaders, windows
from blockio.scan.source_image import ImageChanged
from protocol.client import AgentClient
from protocol.errors import ProtocolError

READ_AHEAD_WINDOWS = 32
"""Windows of the source digested ahead of the comparison."""


class TargetDigests:
    """The target's digest stream, asked again from the first missing chunk after a failure."""

    def __init__(
        self, client: AgentClient, disk: str, end: int, chunk_bytes: int, retries: RetryBudget
    ) -> None:
        self._client = client
        self._disk = disk
        self._end = end
        self._chunk_bytes = chunk_bytes
        self._retries = retries
        self._stream: AsyncIterator[bytes] | None = None
        self._first: asyncio.Future[bytes] | None = None

    def begin(self, offset: int) -> None:
        """Ask for the digests from `offset` now, before the first `take`: the comparison
        waits on the slower side, and the agent need not wait for the source's first window
        to start reading. Its failures surface in `take`, which asks again."""
        self._stream = self._open(offset)
        self._first = asyncio.ensure_future(anext(self._stream))

    async def take(self, offset: int, count: int) -> bytes:
        """The digests of the `count` chunks from `offset`, concatenated. Successive calls
        must ask for successive chunks.

        Raises PushFailed for an error answer retrying cannot fix or when retries run out.
        """
        got: list[bytes] = []
        while len(got) < count:
            try:
                if self._stream is None:
                    self._stream = self._open(offset + len(got) * self._chunk_bytes)
                first, self._first = self._first, None
                got.append(await (first if first is not None else anext(self._stream)))
            except ProtocolError as exc:
                await self.close()
                if not is_transient(exc):
                    raise PushFailed(
                        f"disk {self._disk}: the agent refused its digests: {exc}", disk=self._disk
                    ) from exc
                await self._retries.back_off(exc)
            except (*TRANSPORT_ERRORS, StopAsyncIteration) as exc:
                await self.close()
                await self._retries.back_off(exc)
        return b"".join(got)

    async def close(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            # The stream cannot be closed while a task is inside it.
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    def _open(self, at: int) -> AsyncIterator[bytes]:
        return aiter(self._client.hashes(self._disk, at, self._end - at, self._chunk_bytes))


class SourceDigests:
    """The source's digests, window by window, read ahead of use by SCAN_READERS readers
    with O_DIRECT where the file system allows it."""

    def __init__(
        self, source: Path, start: int, end: int, chunk_bytes: int, window_bytes: int, disk: str
    ) -> None:
        self._source = source
        self._start = start
        self._end = end
        self._chunk_bytes = chunk_bytes
        self._window_bytes = window_bytes
        self._disk = disk

    async def windows(self) -> AsyncGenerator[tuple[range, bytes], None]:
        """Each window of `[start, end)` with its chunks' digests, in order.

        Raises PushFailed if the source cannot be read or ends early.
        """
        readers: WindowReaders | None = None
        ahead: deque[tuple[range, asyncio.Future[bytes]]] = deque()
        try:
            readers = await asyncio.to_thread(
                WindowReaders.open,
                self._source,
                window_bytes=self._window_bytes,
                count=SCAN_READERS,
                direct=True,
                name=f"source-{self._disk}",
            )
            todo = windows(
                self._start, self._end - self._start, self._chunk_bytes, self._window_bytes
            )

            def read_ahead() -> None:
                assert readers is not None
                while len(ahead) < READ_AHEAD_WINDOWS:
                    window = next(todo, None)
                    if window is None:
                        return
                    digests = readers.digests(window, self._chunk_bytes)
                    ahead.append((window, asyncio.wrap_future(digests)))

            read_ahead()
            while ahead:
                window, digests = ahead.popleft()
                mine = await digests
                read_ahead()
                yield window, mine
        except (OSError, ImageChanged) as exc:
            raise reading_failed(self._disk, self._source, exc) from exc
        finally:
            for _, digests in ahead:
                digests.cancel()
            if readers is not None:
                readers.close()
