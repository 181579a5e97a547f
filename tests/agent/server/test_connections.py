"""Both listeners cap their open connections: idle ones give way to new ones, a peer whose
connections are all busy is refused with 503 TOO_MANY_CONNECTIONS, and a connection that sends
no request (or trickles its headers) is closed after the idle timeout. On the data port the TLS
handshakes in progress are capped too (the oldest gives way) and timed out, so connections that
never send a ClientHello neither keep a sender out nor stay. The metrics port answers a
scrape while a thousand idle connections are thrown at it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.server.connection_limits import ConnectionLimits, ConnectionTable, Refusal
from agent.server.listeners import AcceptFailureLog
from protocol.encoder import BatchEncoder
from protocol.events import Begin
from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch
from tests.support.waiting import wait_until, wait_until_async

MiB = 1 << 20


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(
        tmp_path_factory.mktemp("connections"),
        {"d0": 4 * MiB},
        max_connections_per_peer=2,
        idle_timeout="2s",
        metrics_max_connections=8,
    )
    agent.start()
    yield agent
    agent.stop()


def tls_connection(agent: AgentProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
    return agent.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")


def read_all(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def closed_by_agent(sock: socket.socket) -> bool:
    """Whether the agent has closed `sock` (nothing more to read)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def test_the_metrics_port_answers_a_scrape_among_a_thousand_idle_connections(
    agent: AgentProcess,
) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", agent.metrics_port), timeout=10))

        text = agent.metrics_text()

        assert "mtagent_build_info" in text
        closed = agent.metric("mtagent_idle_connections_closed_total", listener="metrics")
        assert closed >= 1000 - 8
    finally:
        for sock in idle:
            sock.close()
    assert "Traceback" not in agent.log()


async def test_a_peer_whose_connections_are_all_busy_is_refused_with_503(
    agent: AgentProcess,
) -> None:
    release = asyncio.Event()
    begun = 0

    async def held() -> AsyncIterator[bytes]:
        nonlocal begun
        begun += 1
        yield BatchEncoder(1).encode(Begin("d0", 1, 1, frozenset({"resync"})))
        await release.wait()  # then the body ends short of END: TRUNCATED

    busy = [asyncio.create_task(agent.put_batch("d0", 1, held())) for _ in range(2)]
    try:
        await wait_until_async(
            lambda: begun == 2 and agent.metric("mtagent_open_connections") >= 2,
            timeout=10,
            what="two batches in flight",
        )

        with tls_connection(agent) as third:
            answer = await asyncio.to_thread(read_all, third)

        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert json.loads(body)["error"]["code"] == "TOO_MANY_CONNECTIONS"
        assert agent.metric("mtagent_refused_connections_total", listener="data", reason="per_peer")
    finally:
        release.set()
        await asyncio.gather(*busy, return_exceptions=True)


async def test_idle_connections_give_way_to_a_new_one(agent: AgentProcess) -> None:
    first, second = tls_connection(agent), tls_connection(agent)
    try:
        status, info = await agent.get_json("/v1/info")

        assert status == 200, info
        wait_until(lambda: closed_by_agent(first), timeout=5, what="the oldest idle to close")
    finally:
        first.close()
        second.close()


def closed_while_trickling(sock: socket.socket, line: bytes) -> bool:
    """Send `line` (a header line, or nothing), then whether the agent has closed `sock`."""
    try:
        sock.send(line)
    except (OSError, ssl.SSLError):
        return True
    return closed_by_agent(sock)


@pytest.mark.parametrize(
    ("start", "trickle"),
    [(b"", b""), (b"GET /v1/info HTTP/1.1\r\nHost: x\r\n", b"X-Slow: y\r\n")],
    ids=["silent", "slow-headers"],
)
def test_a_connection_without_a_whole_request_is_closed_after_the_idle_timeout(
    agent: AgentProcess, start: bytes, trickle: bytes
) -> None:
    with tls_connection(agent) as sock:
        sock.sendall(start)

        wait_until(
            lambda: closed_while_trickling(sock, trickle),
            timeout=15,
            interval=0.5,
            what="the agent to close the connection",
        )


async def test_connections_that_never_finish_their_handshake_keep_no_sender_out_and_are_closed(
    tmp_path: Path,
) -> None:
    agent = AgentProcess.create(
        tmp_path,
        {"d0": MiB},
        max_handshakes=8,
        max_handshakes_per_peer=4,
        handshake_timeout="2s",
    )
    # Fewer descriptors than the silent connections (and room for one accept burst of 128):
    # were they held, the sender's connection could not be accepted.
    agent.wrapper = ["prlimit", "--nofile=192:192", "--"]
    agent.start()
    silent: list[socket.socket] = []
    try:
        for at in range(300):  # most from one address, over its cap; the rest over the total
            source = (f"127.0.0.{(3, 4, 2, 2, 2)[at % 5]}", 0)
            silent.append(
                socket.create_connection(("127.0.0.1", agent.port), 10, source_address=source)
            )
        body = resync_batch("d0", 1, [(0, b"k" * 4096)])

        status, answer = await asyncio.wait_for(agent.put_batch("d0", 1, body), 30)

        assert status == 200, answer
        await wait_until_async(
            lambda: all(closed_by_agent(sock) for sock in silent),
            timeout=15,
            what="the agent to close every connection without a handshake",
        )
        cut = {
            reason: agent.metric("mtagent_tls_handshakes_cut_total", reason=reason)
            for reason in ("per_peer", "total", "timeout")
        }
        assert all(cut.values()) and sum(cut.values()) == len(silent), cut
        assert agent.metric("mtagent_tls_handshakes_in_progress") == 0
    finally:
        for sock in silent:
            sock.close()
        agent.stop()


def test_failed_accepts_are_logged_once_per_interval_not_once_per_attempt(tmp_path: Path) -> None:
    agent = AgentProcess.create(
        tmp_path, {"d0": MiB}, metrics_max_connections=1000, metrics_idle_timeout="1s"
    )
    agent.wrapper = ["prlimit", "--nofile=48:48", "--"]  # about 30 descriptors to spare
    agent.start()
    held: list[socket.socket] = []
    try:
        for _ in range(120):
            held.append(socket.create_connection(("127.0.0.1", agent.metrics_port), timeout=10))

        def failed_a_few_times() -> bool:
            try:
                return agent.metric("mtagent_accept_failures_total") >= 3
            except OSError:  # this scrape waits behind the flood, and may time out
                return False

        wait_until(failed_a_few_times, timeout=60, interval=0.5, what="accepts to fail 3 times")
    finally:
        for sock in held:
            sock.close()
        agent.stop()
    log = agent.log()
    assert len([line for line in log.splitlines() if "cannot accept connections" in line]) == 1
    assert "Traceback" not in log


# -- the policy alone -------------------------------------------------------------------------


def test_a_full_table_evicts_a_connection_that_never_sent_a_request_first() -> None:
    table: ConnectionTable[str] = ConnectionTable(ConnectionLimits(max_total=2))
    table.admit("scraper", "10.0.0.1")
    table.set_busy("scraper", True)
    table.set_busy("scraper", False)
    table.admit("silent", "10.0.0.2")

    admission = table.admit("new", "10.0.0.3")

    assert (admission.evicted, admission.refused) == (("silent",), None)


def test_a_full_table_of_busy_connections_refuses() -> None:
    table: ConnectionTable[str] = ConnectionTable(ConnectionLimits(max_total=3, max_per_peer=1))
    table.admit("a", "10.0.0.1")
    table.set_busy("a", True)

    assert table.admit("b", "10.0.0.1").refused is Refusal.PER_PEER
    assert table.admit("c", "10.0.0.2").refused is None
    assert len(table) == 2


async def test_a_paused_listener_resuming_after_shutdown_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What asyncio does a second after a failed accept, when the agent closed the listener
    # within that second: resume serving a socket that is already closed.
    loop = asyncio.get_running_loop()
    counted: list[None] = []
    loop.set_exception_handler(AcceptFailureLog(lambda: counted.append(None)))
    closed = socket.socket()
    closed.close()
    try:
        loop.call_soon(loop._start_serving, asyncio.Protocol, closed)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert counted == []


async def test_other_loop_errors_still_reach_the_default_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptFailureLog(lambda: None))

    def broken() -> None:
        raise ValueError("a real bug")

    try:
        loop.call_soon(broken)
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert any("a real bug" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
