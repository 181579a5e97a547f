"""The sender's side of docs/protocol.md: an HTTPS client of the agent.

This is the one module of `protocol/` with I/O. `AgentClient` speaks the endpoints of
section 2 over mutual TLS and turns error bodies into the typed errors of
`protocol.errors`. What to send (reading images, batching, retrying) is the sender's
business, in `agent.sender.push`.

HTTP/1.1 is spoken with h11 (sans-I/O) over asyncio streams rather than with aiohttp's
client: every `mtagent push` is a new process, and importing aiohttp's client cost about
0.3 s of a cold start, a tenth of a whole 2 GiB resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import h11

from protocol.documents import (
    BatchResult,
    Disk,
    Failover,
    Info,
    Point,
    disks_from_json,
    points_from_json,
)
from protocol.enrollment import EnrollChallenge, Enrolled, EnrollRequest
from protocol.errors import ERRORS_BY_CODE, BadDocument, ErrorBody, ProtocolError
from protocol.wire import BATCH_CONTENT_TYPE

# One chunk digest of the hashes stream: XXH3-128.
DIGEST_BYTES = 16
# Bytes asked of the socket per read.
_READ_BYTES = 256 * 1024
# An idle connection older than this is closed rather than used again: the agent (aiohttp)
# closes idle connections after 75 s, and a request on one it has just closed would fail
# with nothing to show for it.
_IDLE_SECONDS = 15.0
# How long a TLS 1.3 probe waits, after its handshake, for the agent to drop it: an agent that
# refuses a certificate does so within a round trip; one that accepts it waits for a request.
_VERDICT_SECONDS = 1.0


class TransportError(ConnectionError):
    """The connection to the agent failed or broke before a whole answer came: the
    agent may or may not have acted on the request. Trying again may help."""


class TlsRefused(TransportError):
    """The TLS handshake failed: one side refuses the other's certificate. Trying again
    will not help until the certificates change."""


class Unreachable(TransportError):
    """No connection could be made: nothing listens at that port, or the host cannot be
    reached or resolved. The agent has seen nothing of the request."""


def certificate_refusal(
    host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0
) -> str | None:
    """Why a certificate is refused between this sender and the agent at `host:port`, or None
    when a TLS handshake there shows no refusal (or cannot be tried: nothing listens).

    A blocking handshake, run on a thread: asyncio drops a connection whose handshake fails
    without sending the TLS alert, so the agent would never hear why; a blocking socket sends
    it (the agent counts it as rejected_by_client). Under TLS 1.3 the agent checks this
    sender's certificate after our side of the handshake is over and refuses it by closing:
    the probe waits up to a second to see whether it does.
    """
    agent_refuses = (
        "the agent closed the connection after the TLS handshake: it refuses this sender's "
        "certificate (is it issued by the agent's client CA, and still valid?)"
    )
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return f"this sender refuses the agent's certificate: {exc.verify_message}"
        except (ssl.SSLError, ConnectionError):
            return agent_refuses
        except OSError:
            return None
        with tls:
            if tls.version() != "TLSv1.3":
                return None  # the agent checked our certificate during the handshake
            tls.settimeout(_VERDICT_SECONDS)
            try:
                return agent_refuses if tls.recv(1) == b"" else None
            except TimeoutError:
                return None
            except (ssl.SSLError, ConnectionError):
                return agent_refuses


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


def pinned_ssl_context() -> ssl.SSLContext:
    """A TLS context for enrollment: no client certificate and no CA yet, so the agent's
    certificate is checked against a pinned fingerprint instead (AgentClient's `pinned_sha256`).
    TLS 1.2 or newer."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def error_from_response(status: int, body: bytes) -> ProtocolError:
    """The typed error of an agent's error response (docs/protocol.md section 1).

    A known code gives its `protocol.errors` class; an unknown code a plain
    ProtocolError that keeps the agent's code and status; a body that is not the
    protocol's error body (a proxy's page, say) a ProtocolError with code `HTTP_<status>`.
    The message, the frame index and the other details are filled in.
    """
    try:
        error = ErrorBody.from_json(json.loads(body))
    except (ValueError, BadDocument):
        text = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
        return _with_code(ProtocolError(f"HTTP {status}: {text}"), f"HTTP_{status}", status)
    cls = ERRORS_BY_CODE.get(error.code)
    exc = (cls or ProtocolError)(error.message, frame=error.frame, **error.details)
    return exc if cls is not None else _with_code(exc, error.code, status)


def _with_code(exc: ProtocolError, code: str, status: int) -> ProtocolError:
    # Instance attributes shadow the class defaults: the agent's own code and status
    # are what a person needs to see, even for a code this sender does not know.
    exc.code = code  # type: ignore[misc]
    exc.status = status  # type: ignore[misc]
    return exc


class _Connection:
    """One HTTP/1.1 connection to the agent: a TLS stream and its h11 state."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.where = where
        self.http = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        self._heard = False  # any byte of any answer
        self._eof = False

    async def send(self, event: h11.Event) -> None:
        """Send `event`, waiting while the socket's buffer is full."""
        data = self.http.send(event)
        if data:
            self.writer.write(data)
            with self._failures_typed():
                await self.writer.drain()

    async def next_event(self) -> h11.Event:
        """The next event of the response, reading the socket as needed."""
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:
                    raise TransportError(
                        f"{self.where} closed the connection before the end of its answer"
                    ) from exc
                raise TransportError(f"{self.where} answered with bad HTTP: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            with self._failures_typed():
                data = await self.reader.read(_READ_BYTES)
            if not data and self.http.their_state is h11.SEND_RESPONSE:
                raise TransportError(
                    f"{self.where} closed the connection without answering{self._hint()}"
                )
            self._eof = not data
            self._heard = self._heard or bool(data)
            self.http.receive_data(data)

    @contextlib.contextmanager
    def _failures_typed(self) -> Iterator[None]:
        """Failures of the socket as TransportError (TlsRefused for the agent's TLS alert)."""
        try:
            yield
        except ssl.SSLError as exc:
            raise _tls_or_transport(exc, self.where) from exc
        except OSError as exc:
            raise TransportError(
                f"the connection to {self.where} broke: {exc}{self._hint()}"
            ) from exc

    @property
    def unheard(self) -> bool:
        """Whether not a byte of any answer has come on this connection."""
        return not self._heard

    def _hint(self) -> str:
        # Under TLS 1.3 our side of the handshake is over before the agent checks our
        # certificate; an agent that refuses it just drops the connection.
        if self._heard:
            return ""
        return " (before a single byte came back: does the agent accept this sender's certificate?)"

    def reusable(self) -> bool:
        """Whether the exchange ended cleanly and the agent keeps the connection open."""
        if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
            return False
        try:
            self.http.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        self.idle_since = time.monotonic()
        return not self.reader.at_eof()

    def close(self) -> None:
        # abort(): a TLS close_notify exchange with an agent that may be gone would only
        # add a wait.
        self.writer.transport.abort()


def _tls_or_transport(exc: ssl.SSLError, where: str) -> TransportError:
    # A fatal alert from the agent is its refusal of our certificate (under TLS 1.3 it
    # comes after our side of the handshake is done); anything else may be the network.
    if "ALERT" in (exc.reason or "").upper():
        return TlsRefused(f"the TLS handshake with {where} failed: {exc}")
    return TransportError(f"the connection to {where} broke: {exc}")


class _Answer:
    """A response being read: its status, and its body to read in whole or in pieces."""

    def __init__(self, connection: _Connection, response: h11.Response) -> None:
        self.status = response.status_code
        self._connection = connection
        self._ended = False

    async def read_some(self) -> bytes:
        """The next piece of the body that has arrived; b"" once it is all read. Raises
        TransportError if the connection ends before the body does."""
        while not self._ended:
            event = await self._connection.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
            else:
                raise TransportError(
                    f"the answer of {self._connection.where} ended early ({type(event).__name__})"
                )
        return b""

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        pieces = []
        while piece := await self.read_some():
            pieces.append(piece)
        return b"".join(pieces)


class AgentClient:
    """An async context manager around the connections to one agent.

    `timeout` bounds connecting, each wait for the agent's answer, and any stall of a
    streamed request body (no chunk accepted for that long); a whole upload may take
    longer. Timeouts raise TimeoutError; failures of the connection TransportError
    (TlsRefused when a certificate is refused). Requests may run at the same time: each
    takes a connection of its own, and a connection is used again once its exchange has
    ended cleanly.
    """

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext,
        *,
        timeout: float = 300,
        pinned_sha256: bytes | None = None,
    ) -> None:
        """`pinned_sha256`: the SHA-256 of the agent's certificate (DER); when given, every
        connection whose certificate has another is closed before a byte is sent (TlsRefused),
        for a context that verifies nothing (`pinned_ssl_context`)."""
        self._pinned = pinned_sha256
        self.base_url = base_url.rstrip("/")
        url = urlsplit(self.base_url)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"not an https:// URL of an agent: {base_url}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl_context if url.scheme == "https" else None
        self._where = f"{self._host}:{self._port}"
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._open = False

    async def __aenter__(self) -> AgentClient:
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._open = False
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()

    async def info(self) -> Info:
        """`GET /v1/info`. Raises the ProtocolError of an error answer, BadDocument for an
        answer that is not an Info."""
        return Info.from_json(await self._get("/v1/info"))

    async def disks(self) -> list[Disk]:
        """`GET /v1/disks`: every target. Raises the ProtocolError of an error answer,
        BadDocument for an answer that is not a list of Disks."""
        return disks_from_json(await self._get("/v1/disks"))

    async def disk(self, disk_id: str) -> Disk:
        """`GET /v1/disks/{disk}`. Raises UnknownDisk for a disk the agent does not have,
        BadDocument for an answer that is not a Disk."""
        return Disk.from_json(await self._get(f"/v1/disks/{quote(disk_id, safe='')}"))

    async def recovery_points(self, group: str) -> list[Point]:
        """`GET /v1/groups/{group}/recovery-points`: the group's points, oldest first. Raises
        UnknownGroup for a group none of the agent's disks is in, BadDocument for an answer
        that is not a list of Points."""
        path = f"/v1/groups/{quote(group, safe='')}/recovery-points"
        return points_from_json(await self._get(path))

    async def failover(self, group: str, point: str) -> Failover:
        """`POST /v1/groups/{group}/failover`: fail the group over to `point` (`latest`,
        `latest-app`, `latest-crash`, an id or `time:...`); answered once its disks are released.
        Raises NoRecoveryPoint, FailoverRefused, UnknownGroup (their ProtocolErrors), BadDocument
        for an answer that is not a Failover."""
        path = f"/v1/groups/{quote(group, safe='')}/failover"
        body = json.dumps({"point": point}).encode()
        async with self._exchange("POST", path, "application/json", body) as answer:
            return Failover.from_json(await self._timed(_json_answer(answer)))

    async def reprotect(self, group: str) -> Failover:
        """`POST /v1/groups/{group}/reprotect`: take a failed-over group back into replication.
        Raises FailoverRefused, UnknownGroup, BadDocument."""
        path = f"/v1/groups/{quote(group, safe='')}/reprotect"
        async with self._exchange("POST", path, "application/json", b"{}") as answer:
            return Failover.from_json(await self._timed(_json_answer(answer)))

    async def enroll_challenge(self, enrollment: str) -> EnrollChallenge:
        """`POST /v1/enroll/challenge`: a nonce to prove passphrase `enrollment` over. Raises
        EnrollmentRefused, EnrollmentLocked, EnrollmentDisabled, BadDocument."""
        body = json.dumps({"enrollment": enrollment}).encode()
        async with self._exchange("POST", "/v1/enroll/challenge", "application/json", body) as a:
            return EnrollChallenge.from_json(await self._timed(_json_answer(a)))

    async def enroll(self, request: EnrollRequest) -> Enrolled:
        """`POST /v1/enroll`: the certificate for a proven passphrase. Raises EnrollmentRefused,
        EnrollmentUsed, EnrollmentExpired, EnrollmentLocked, SenderExists, BadDocument."""
        body = json.dumps(request.to_json()).encode()
        async with self._exchange("POST", "/v1/enroll", "application/json", body) as answer:
            return Enrolled.from_json(await self._timed(_json_answer(answer)))

    async def put_batch(
        self, disk_id: str, seq: int, body: bytes | AsyncIterable[bytes | memoryview]
    ) -> BatchResult:
        """`PUT /v1/disks/{disk}/batches/{seq}`: send one batch, return the agent's answer.

        A 200 means the batch is durable on the target. An iterable body is streamed
        (chunked), one request-body chunk per item; an exception it raises is raised here
        as is. An agent that answers before the body ends (an error) is heard at once and
        the rest of the body is not sent. An error answer raises the ProtocolError of its
        code (see `error_from_response`), an answer that is not a BatchResult BadDocument.
        """
        path = f"/v1/disks/{quote(disk_id, safe='')}/batches/{seq}"
        async with self._exchange("PUT", path, BATCH_CONTENT_TYPE, body) as answer:
            return BatchResult.from_json(await self._timed(_json_answer(answer)))

    async def hashes(
        self, disk_id: str, offset: int, length: int, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        """`POST /v1/disks/{disk}/hashes` (docs/protocol.md section 5): the 16-byte XXH3-128
        digest of each chunk of `[offset, offset + length)` of the target, in order, yielded
        one by one as the agent streams them (the last chunk may be short).

        An error answer raises its ProtocolError (BadRequest, OutOfRange, UnknownDisk,
        TargetUnavailable...) before the first digest. A stream that stops before its last
        digest raises TransportError: the digests yielded so far are good, so a caller can
        ask again from the first missing chunk.
        """
        path = f"/v1/disks/{quote(disk_id, safe='')}/hashes"
        request = {"offset": offset, "length": length, "chunk_bytes": chunk_bytes}
        body = json.dumps(request).encode()
        missing = -(-length // chunk_bytes) if length > 0 and chunk_bytes > 0 else 0
        async with self._exchange("POST", path, "application/json", body) as answer:
            if answer.status != 200:
                raise error_from_response(answer.status, await self._timed(answer.read()))
            carry = b""
            while missing:
                # Whatever has arrived, so that digests reach the caller as the agent
                # produces them rather than in fixed blocks.
                block = await self._timed(answer.read_some())
                if not block:
                    raise TransportError(
                        f"the digest stream of disk {disk_id} ended {missing} digests early"
                    )
                if carry:
                    block, carry = carry + block, b""
                whole = min(len(block) - len(block) % DIGEST_BYTES, missing * DIGEST_BYTES)
                for at in range(0, whole, DIGEST_BYTES):
                    yield block[at : at + DIGEST_BYTES]
                missing -= whole // DIGEST_BYTES
                carry = block[whole:]
            if carry or await self._timed(answer.read()):
                raise TransportError(f"the digest stream of disk {disk_id} is longer than asked")

    async def _get(self, path: str) -> object:
        async with self._exchange("GET", path, None, b"") as answer:
            return await self._timed(_json_answer(answer))

    async def _timed(self, waiting: Any) -> Any:
        async with asyncio.timeout(self._timeout):
            return await waiting

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        content_type: str | None,
        body: bytes | AsyncIterable[bytes | memoryview],
    ) -> AsyncIterator[_Answer]:
        """Send a request and give its answer once its head has come; the connection
        goes back to the pool if the whole exchange ends cleanly, and is closed if not."""
        connection = await self._connection()
        headers = [("Host", self._where), ("User-Agent", "mtagent")]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        streamed = not isinstance(body, bytes | bytearray | memoryview)
        if streamed:
            headers.append(("Transfer-Encoding", "chunked"))
        elif method != "GET":
            headers.append(("Content-Length", str(len(body))))  # type: ignore[arg-type]
        reusable = False
        try:
            request = h11.Request(method=method, target=path, headers=headers)
            async with asyncio.timeout(self._timeout):
                await connection.send(request)
            if streamed:
                response = await self._stream_body(connection, body)  # type: ignore[arg-type]
            else:
                async with asyncio.timeout(self._timeout):
                    if body:
                        await connection.send(h11.Data(data=_bytes_like(body)))
                    await connection.send(h11.EndOfMessage())
                    response = await self._response(connection)
            answer = _Answer(connection, response)
            yield answer
            reusable = connection.reusable()
        except TransportError as exc:
            if isinstance(exc, TlsRefused) or not connection.unheard:
                raise
            # Dropped before a single byte came back on a new connection: under TLS 1.3 that
            # is how an agent refuses this sender's certificate, or the agent went away.
            refusal = await self._certificate_refusal()
            if refusal is None:
                raise
            raise TlsRefused(f"the TLS handshake with {self._where} failed: {refusal}") from exc
        finally:
            self._busy.discard(connection)
            if reusable and self._open:
                self._idle.append(connection)
            else:
                connection.close()

    async def _stream_body(
        self, connection: _Connection, body: AsyncIterable[bytes | memoryview]
    ) -> h11.Response:
        """Send `body` chunk by chunk while listening for an early answer; the answer's
        head. The body's own exceptions are raised as they are."""
        loop = asyncio.get_running_loop()

        async def send_all() -> None:
            async with asyncio.timeout(self._timeout) as deadline:
                # Moving the deadline costs a timer; once a second is precise enough.
                moved = loop.time()
                async for chunk in body:
                    if chunk:
                        await connection.send(h11.Data(data=_bytes_like(chunk)))
                    now = loop.time()
                    if now - moved >= 1.0:
                        deadline.reschedule(now + self._timeout)
                        moved = now
                deadline.reschedule(loop.time() + self._timeout)
                await connection.send(h11.EndOfMessage())

        sending = asyncio.ensure_future(send_all())
        answering = asyncio.ensure_future(connection.next_event())
        try:
            await asyncio.wait([sending, answering], return_when=asyncio.FIRST_COMPLETED)
            if sending.done() and sending.exception() is not None:
                failure = sending.exception()
                if not isinstance(failure, TransportError) or answering.done():
                    raise failure  # type: ignore[misc]
                # The agent may have answered and closed (an error before the body's end):
                # that answer says more than the broken pipe.
                with contextlib.suppress(TransportError, TimeoutError):
                    async with asyncio.timeout(min(self._timeout, 5.0)):
                        await asyncio.wait([answering])
                if not answering.done() or answering.exception() is not None:
                    raise failure
            if not answering.done():
                await sending
                async with asyncio.timeout(self._timeout):
                    await answering
            # An answer before the body's end stops the body: the connection is not used
            # again (its request is unfinished), so it is closed with the exchange.
            return _expect_response(answering.result(), connection.where)
        finally:
            for task in (sending, answering):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _response(self, connection: _Connection) -> h11.Response:
        return _expect_response(await connection.next_event(), connection.where)

    async def _connection(self) -> _Connection:
        if not self._open:
            raise RuntimeError("AgentClient is used outside `async with`")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < _IDLE_SECONDS and not connection.reader.at_eof():
                self._busy.add(connection)
                return connection
            connection.close()
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                    limit=_READ_BYTES,
                )
        except (ssl.SSLError, ConnectionResetError, ConnectionAbortedError) as exc:
            # Connected, then the handshake failed: a refused certificate, one way or the other.
            refusal = await self._certificate_refusal()
            if refusal is not None or isinstance(exc, ssl.SSLError):
                # Our own verdict on the agent's certificate says it best.
                own = isinstance(exc, ssl.SSLCertVerificationError)
                reason = str(exc) if own or refusal is None else refusal
                raise TlsRefused(f"the TLS handshake with {self._where} failed: {reason}") from exc
            raise TransportError(f"the connection to {self._where} broke: {exc}") from exc
        except OSError as exc:
            # asyncio's own text for a refused connect repeats the address: the errno's is enough
            errno = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
            reason = (os.strerror(errno) if errno else exc.strerror) or str(exc)
            raise Unreachable(f"cannot connect to {self._where}: {reason}") from exc
        if self._pinned is not None:
            self._check_pin(writer)
        connection = _Connection(reader, writer, self._where)
        self._busy.add(connection)
        return connection

    def _check_pin(self, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        found = hashlib.sha256(der).hexdigest() if der else "none"
        if found != (self._pinned or b"").hex():
            writer.close()
            raise TlsRefused(
                f"the certificate of {self._where} has SHA-256 fingerprint {found}, not the "
                f"{(self._pinned or b'').hex()} it was given: not the agent it should be"
            )

    async def _certificate_refusal(self) -> str | None:
        if self._ssl is None:
            return None
        return await asyncio.to_thread(
            certificate_refusal, self._host, self._port, self._ssl, min(self._timeout, 10.0)
        )


def _bytes_like(data: object) -> bytes:
    # h11 sends any bytes-like object (memoryview included, without a copy); its type hints
    # say bytes.
    return cast(bytes, data)


def _expect_response(event: h11.Event, where: str) -> h11.Response:
    # 1xx answers (100 Continue) are not sent by the agent, which is the only server here.
    if not isinstance(event, h11.Response):
        raise TransportError(f"{where} sent {type(event).__name__} where an answer was due")
    return event


async def _json_answer(answer: _Answer) -> dict[str, Any]:
    body = await answer.read()
    if 200 <= answer.status < 300:
        result: dict[str, Any] = json.loads(body)
        return result
    raise error_from_response(answer.status, body)
