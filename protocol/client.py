"""The sender's side of PROTOCOL.md: an HTTPS client of the agent.

This is the one module of `protocol/` with I/O. `AgentClient` speaks the endpoints of
section 2 over mutual TLS and turns error bodies into the typed errors of
`protocol.errors`. What to send (reading images, batching, retrying) is the sender's
business, in `agent.sender`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from protocol.errors import ERRORS_BY_CODE, ProtocolError
from protocol.wire import BATCH_CONTENT_TYPE

# One chunk digest of the hashes stream: XXH3-128.
DIGEST_BYTES = 16


def client_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A TLS context presenting `cert`/`key`, trusting only agents whose certificate chains
    to `ca` and matches the host name of the URL. TLS 1.2 or newer.

    Raises OSError if a file cannot be read, ssl.SSLError if it does not hold a
    certificate or key (or the key does not match the certificate).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


def error_from_response(status: int, body: bytes) -> ProtocolError:
    """The typed error of an agent's error response (PROTOCOL.md section 1).

    A known code gives its `protocol.errors` class; an unknown code a plain
    ProtocolError that keeps the agent's code and status; a body that is not the
    protocol's JSON (a proxy's page, say) a ProtocolError with code `HTTP_<status>`.
    The message, the frame index and the other details are filled in.
    """
    try:
        error = json.loads(body)["error"]
        code = error["code"]
        if not isinstance(code, str):
            raise TypeError(code)
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
        return _with_code(ProtocolError(f"HTTP {status}: {text}"), f"HTTP_{status}", status)
    message = str(error.get("message", ""))
    frame = error.get("frame")
    details = {k: v for k, v in error.items() if k not in ("code", "message", "frame")}
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        exc = ProtocolError(message, frame=frame if isinstance(frame, int) else None, **details)
        return _with_code(exc, code, status)
    return cls(message, frame=frame if isinstance(frame, int) else None, **details)


def _with_code(exc: ProtocolError, code: str, status: int) -> ProtocolError:
    # Instance attributes shadow the class defaults: the agent's own code and status
    # are what a person needs to see, even for a code this sender does not know.
    exc.code = code  # type: ignore[misc]
    exc.status = status  # type: ignore[misc]
    return exc


class AgentClient:
    """An async context manager around one aiohttp session to one agent.

    `timeout` bounds connecting, each wait for the agent's answer, and any stall of a
    streamed request body (no chunk accepted for that long); a whole upload may take
    longer. Timeouts raise TimeoutError; connection failures aiohttp.ClientError.
    """

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout: float = 300) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AgentClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout, sock_read=self._timeout
            ),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def info(self) -> dict[str, Any]:
        """`GET /v1/info`. Raises the ProtocolError of an error answer."""
        return await self._get("/v1/info")

    async def disks(self) -> list[dict[str, Any]]:
        """`GET /v1/disks`: every target. Raises the ProtocolError of an error answer."""
        disks: list[dict[str, Any]] = (await self._get("/v1/disks"))["disks"]
        return disks

    async def disk(self, disk_id: str) -> dict[str, Any]:
        """`GET /v1/disks/{disk}`. Raises UnknownDisk for a disk the agent does not have."""
        return await self._get(f"/v1/disks/{quote(disk_id, safe='')}")

    async def put_batch(
        self, disk_id: str, seq: int, body: bytes | AsyncIterable[bytes | memoryview]
    ) -> dict[str, Any]:
        """`PUT /v1/disks/{disk}/batches/{seq}`: send one batch, return the agent's answer.

        A 200 means the batch is durable on the target. An iterable body is streamed
        (chunked), one request-body chunk per item. An error answer raises the
        ProtocolError of its code (see `error_from_response`).
        """
        url = f"{self.base_url}/v1/disks/{quote(disk_id, safe='')}/batches/{seq}"
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout) as deadline:

            async def watched(
                chunks: AsyncIterable[bytes | memoryview],
            ) -> AsyncIterator[bytes | memoryview]:
                # Moving the deadline costs a timer; once a second is precise enough.
                moved = loop.time()
                async for chunk in chunks:
                    now = loop.time()
                    if now - moved >= 1.0:
                        deadline.reschedule(now + self._timeout)
                        moved = now
                    yield chunk
                deadline.reschedule(loop.time() + self._timeout)

            data = body if isinstance(body, bytes | bytearray | memoryview) else watched(body)
            async with self._open().put(
                url, data=data, headers={"Content-Type": BATCH_CONTENT_TYPE}
            ) as response:
                deadline.reschedule(loop.time() + self._timeout)
                return await _answer(response)

    async def hashes(
        self, disk_id: str, offset: int, length: int, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        """`POST /v1/disks/{disk}/hashes` (PROTOCOL.md section 5): the 16-byte XXH3-128
        digest of each chunk of `[offset, offset + length)` of the target, in order, yielded
        one by one as the agent streams them (the last chunk may be short).

        An error answer raises its ProtocolError (BadRequest, OutOfRange, UnknownDisk,
        TargetUnavailable...) before the first digest. A stream that stops before its last
        digest raises aiohttp.ClientPayloadError: the digests yielded so far are good, so a
        caller can ask again from the first missing chunk.
        """
        url = f"{self.base_url}/v1/disks/{quote(disk_id, safe='')}/hashes"
        request = {"offset": offset, "length": length, "chunk_bytes": chunk_bytes}
        missing = -(-length // chunk_bytes) if length > 0 and chunk_bytes > 0 else 0
        async with self._open().post(url, json=request) as response:
            if response.status != 200:
                raise error_from_response(response.status, await response.read())
            carry = b""
            while missing:
                # Whatever has arrived, so that digests reach the caller as the agent
                # produces them rather than in fixed blocks.
                block = await response.content.read(min(missing * DIGEST_BYTES, 1 << 16))
                if not block:
                    raise aiohttp.ClientPayloadError(
                        f"the digest stream of disk {disk_id} ended {missing} digests early"
                    )
                if carry:
                    block, carry = carry + block, b""
                whole = len(block) - len(block) % DIGEST_BYTES
                for at in range(0, whole, DIGEST_BYTES):
                    yield block[at : at + DIGEST_BYTES]
                missing -= whole // DIGEST_BYTES
                carry = block[whole:]

    async def _get(self, path: str) -> dict[str, Any]:
        async with self._open().get(self.base_url + path) as response:
            return await _answer(response)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AgentClient is used outside `async with`")
        return self._session


async def _answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.read()
    if 200 <= response.status < 300:
        answer: dict[str, Any] = json.loads(body)
        return answer
    raise error_from_response(response.status, body)
