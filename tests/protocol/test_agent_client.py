"""`protocol.client.AgentClient` over real TLS on loopback: answers that come early, connections
used again, refused certificates and connections that break, against the real agent and,
where the agent cannot be made to misbehave, against a small TLS server of the test's own."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import protocol.client
from agent.certs import PkiPaths, init_pki, issue_client
from protocol.client import AgentClient, TlsRefused, TransportError, client_ssl_context
from protocol.documents import Disk, DiskState, Info, Point, PointKind
from protocol.encoder import BatchEncoder
from protocol.errors import BadDocument, ResyncRequired, UnknownGroup
from protocol.events import Begin, Data
from tests.support.agent_harness import AgentProcess, free_port
from tests.support.batches import resync_batch

KiB = 1 << 10
MiB = 1 << 20
DISK_BYTES = 1 * MiB
DISKS = ["early", "reuse", "digests", "refused", "listed", "fresh"]


@pytest.fixture
def client(shared_agent: AgentProcess) -> AgentClient:
    context = client_ssl_context(shared_agent.cert, shared_agent.key, shared_agent.ca)
    return AgentClient(shared_agent.url, context, timeout=20)


async def test_an_answer_before_the_body_ends_is_raised_and_the_rest_is_not_sent(
    shared_agent: AgentProcess, client: AgentClient
) -> None:
    # A new pair is resync_required: the agent refuses a batch not flagged resync at BEGIN,
    # while the body is still coming. The body never ends on its own.
    encoder = BatchEncoder(1, compress=False)
    unsent = asyncio.Event()

    async def endless_body() -> AsyncIterator[bytes]:
        yield encoder.encode(Begin("early", 1, 1_700_000_000 * 10**9, frozenset()))
        yield encoder.encode(Data(0, b"\x55" * 4 * KiB))
        await unsent.wait()  # set by nobody: only an early answer ends this request
        yield encoder.end()

    async with client, asyncio.timeout(10):
        with pytest.raises(ResyncRequired):
            await client.put_batch("early", 1, endless_body())
        after = await client.disk("early")

    assert after.last_seq == 0
    assert shared_agent.target_bytes("early") == bytes(DISK_BYTES)


async def test_requests_one_after_another_share_one_connection(
    shared_agent: AgentProcess, client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = count_connections(monkeypatch)
    content = b"\xa7" * 64 * KiB

    async with client:
        await client.info()
        await client.put_batch("reuse", 1, resync_batch("reuse", 1, [(0, content)]))
        digests = [d async for d in client.hashes("reuse", 0, 128 * KiB, 64 * KiB)]
        state = await client.disk("reuse")

    assert opened == [1]
    assert len(digests) == 2
    assert state.last_seq == 1 and state.state == "ok"
    assert shared_agent.target_bytes("reuse")[: 64 * KiB] == content


async def test_requests_at_the_same_time_each_take_a_connection(
    client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = count_connections(monkeypatch)

    async with client:
        stream = aiter(client.hashes("digests", 0, DISK_BYTES, 64 * KiB))
        first = await anext(stream)
        info = await client.info()  # while the stream is open
        rest = [d async for d in stream]

    assert opened == [2]
    assert len(first) == 16 and len(rest) == DISK_BYTES // (64 * KiB) - 1
    assert info.agent == "mtagent"


async def test_a_client_certificate_the_agent_refuses_is_named_as_the_likely_cause(
    shared_agent: AgentProcess, tmp_path: Path
) -> None:
    # Under TLS 1.3 the agent refuses the certificate after the client's handshake is done,
    # and drops the connection: the client asks again with a handshake of its own to be sure.
    other = init_pki(tmp_path / "other", ["127.0.0.1"])
    cert, key = issue_client(other.ca_cert.parent, "stranger")
    context = client_ssl_context(cert, key, shared_agent.ca)

    with pytest.raises(TransportError) as caught:
        async with AgentClient(shared_agent.url, context, timeout=20) as client:
            await client.info()

    assert isinstance(caught.value, TlsRefused)
    assert "TLS handshake with 127.0.0.1" in str(caught.value)
    assert "it refuses this sender's certificate" in str(caught.value)


async def test_an_agent_that_does_not_listen_is_a_transport_error_naming_it(
    shared_agent: AgentProcess,
) -> None:
    port = free_port()
    context = client_ssl_context(shared_agent.cert, shared_agent.key, shared_agent.ca)

    with pytest.raises(TransportError) as caught:
        async with AgentClient(f"https://127.0.0.1:{port}", context, timeout=20) as client:
            await client.info()

    assert str(caught.value).startswith(f"cannot connect to 127.0.0.1:{port}: ")


# -- a misbehaving server --------------------------------------------------------------------------


async def test_a_digest_stream_cut_short_raises_transport_error_after_the_good_digests(
    fake_agent: FakeAgent,
) -> None:
    digests = b"".join(bytes([n]) * 16 for n in range(3))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 160\r\n\r\n"
    got: list[bytes] = []

    async with fake_agent.serving(head + digests), fake_agent.client() as client:
        with pytest.raises(TransportError) as caught:
            async for digest in client.hashes("d", 0, 10 * 64 * KiB, 64 * KiB):
                got.append(digest)

    assert got == [digests[i : i + 16] for i in range(0, 48, 16)]
    assert "closed the connection before the end of its answer" in str(caught.value)


async def test_a_connection_closed_without_an_answer_is_a_transport_error(
    fake_agent: FakeAgent,
) -> None:
    async with fake_agent.serving(b""), fake_agent.client() as client:
        with pytest.raises(TransportError) as caught:
            await client.info()

    assert "closed the connection without answering" in str(caught.value)


async def test_an_answer_that_is_not_http_is_a_transport_error(fake_agent: FakeAgent) -> None:
    async with fake_agent.serving(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), fake_agent.client() as client:
        with pytest.raises(TransportError) as caught:
            await client.info()

    assert "answered with bad HTTP" in str(caught.value)


async def test_an_agent_that_does_not_answer_times_out(fake_agent: FakeAgent) -> None:
    async with fake_agent.serving(None), fake_agent.client(timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.info()

    assert time.monotonic() - started < 5


# -- the documents ---------------------------------------------------------------------------


async def test_the_agents_info_is_read_as_an_info(client: AgentClient) -> None:
    async with client:
        info = await client.info()

    assert isinstance(info, Info)
    assert (info.agent, info.protocol, info.max_frame_bytes) == ("mtagent", 1, 4 * MiB)


async def test_the_agents_disks_are_read_as_disks(client: AgentClient) -> None:
    async with client:
        disks = await client.disks()
        one = await client.disk("refused")

    assert {disk.id for disk in disks} == set(DISKS)
    assert all(isinstance(disk, Disk) and disk.group == "g1" for disk in disks)
    assert one in disks
    assert (one.size_bytes, one.sector_bytes) == (DISK_BYTES, 512)


async def test_a_new_pairs_disk_reads_as_resync_required(client: AgentClient) -> None:
    async with client:
        disk = await client.disk("fresh")

    assert (disk.state, disk.resync, disk.last_seq) == (DiskState.RESYNC_REQUIRED, True, 0)


async def test_the_agents_recovery_points_are_read_as_points(client: AgentClient) -> None:
    time_ns = 1_700_000_000 * 10**9
    async with client:
        await client.put_batch(
            "listed", 1, resync_batch("listed", 1, [(0, b"\x01" * 4096)], source_time_ns=time_ns)
        )
        points = await client.recovery_points("g1")

    assert Point("listed@1", PointKind.CRASH, "batch 1", time_ns, {"listed": 1}) in points


async def test_recovery_points_of_a_group_the_agent_lacks_raise_unknown_group(
    client: AgentClient,
) -> None:
    async with client:
        with pytest.raises(UnknownGroup):
            await client.recovery_points("nobody")


async def test_an_answer_that_is_not_a_disk_raises_bad_document(fake_agent: FakeAgent) -> None:
    body = b'{"id": "d0", "group": "g1", "state": "ok"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with fake_agent.serving(head + body), fake_agent.client() as client:
        with pytest.raises(BadDocument) as caught:
            await client.disk("d0")

    assert (caught.value.document, caught.value.field) == ("Disk", "size_bytes")


class FakeAgent:
    """A TLS server with the agent's certificate that reads one request head and answers
    with fixed bytes, then closes (None: never answers)."""

    def __init__(self, pki: PkiPaths, client_cert: Path, client_key: Path) -> None:
        self.pki = pki
        self.client_cert = client_cert
        self.client_key = client_key
        self.port = 0

    def serving(self, reply: bytes | None) -> _Serving:
        return _Serving(self, reply)

    def client(self, timeout: float = 20) -> AgentClient:
        context = client_ssl_context(self.client_cert, self.client_key, self.pki.ca_cert)
        return AgentClient(f"https://127.0.0.1:{self.port}", context, timeout=timeout)


class _Serving:
    def __init__(self, fake: FakeAgent, reply: bytes | None) -> None:
        self.fake = fake
        self.reply = reply
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.fake.pki.ca_cert)
        context.load_cert_chain(self.fake.pki.server_cert, self.fake.pki.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = await asyncio.start_server(self.answer, "127.0.0.1", 0, ssl=context)
        self.fake.port = self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for handler in self.handlers:
            handler.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.reply is None:
                await asyncio.sleep(60)
            writer.write(self.reply)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
def fake_agent(tmp_path: Path) -> FakeAgent:
    pki = init_pki(tmp_path / "pki", ["127.0.0.1"])
    cert, key = issue_client(tmp_path / "pki", "sender")
    return FakeAgent(pki, cert, key)


def count_connections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the connections AgentClient opens, in a one-item list."""
    opened = [0]
    real: Callable[..., Awaitable[object]] = asyncio.open_connection

    async def counted(*args: object, **kwargs: object) -> object:
        opened[0] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(protocol.client.asyncio, "open_connection", counted)
    return opened
