"""The data port's TLS handshakes, bounded in number and in time.

A listener that asyncio gives an SSLContext does each connection's handshake itself and hands
the connection to the application only once it is over: until then no cap of the agent sees it
(agent.server.connection_limits admits a connection when its handshake ends), and asyncio waits
60 s for it. A peer that opens connections and never sends a ClientHello held a descriptor per
connection for a minute, as many as it liked, until the agent had none left to accept a sender.

So the data port listens in plain TCP, and `HandshakeGate` does the TLS of each connection with
`loop.start_tls()`, the same handshake on the same context (its SNI callback still picks the
context of the latest reload, and failed handshakes are still counted). The handshakes in
progress are a `ConnectionTable`: at most `max_total` in all and `max_per_peer` from one address.
A new connection over a cap takes the place of the oldest handshake in progress in that scope,
which is reset, as an idle connection gives way at the connection caps: a sender's handshake
takes milliseconds, so connections that never finish theirs cannot keep it out, and the cap per
address makes a flood from one address push out its own connections first. A handshake not over
within `timeout_seconds` is reset. A connection whose handshake is over goes to the protocol of
the aiohttp server, as asyncio's TLS listener would have handed it over.

`start_tls()` gives the server's protocol the connection only after the handshake, and the TLS
layer may already have data for it by then (a client's request can come with its last handshake
message): `_Handover` keeps what arrives in between and passes it on in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.server.connection_limits import ConnectionLimits, ConnectionTable, Refusal

TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class HandshakeLimits:
    """The bounds of the data port's handshakes in progress (`[server] max_handshakes`,
    `max_handshakes_per_peer`, `handshake_timeout`)."""

    max_total: int
    max_per_peer: int
    timeout_seconds: float


class HandshakeMetrics:
    """What the bounds on handshakes did."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cut = Counter(
            "mtagent_tls_handshakes_cut",
            "Data-port connections closed before their TLS handshake was over, by reason: "
            "timeout (server.handshake_timeout), or per_peer and total (it gave way to a newer "
            "connection at that cap on handshakes in progress).",
            ["reason"],
            registry=registry,
        )
        for reason in (TIMEOUT, *Refusal):
            self.cut.labels(reason)
        self.in_progress = Gauge(
            "mtagent_tls_handshakes_in_progress",
            "Data-port connections whose TLS handshake is in progress.",
            registry=registry,
        )


class HandshakeGate:
    """Does the TLS handshakes of the data port's connections under `limits` (see the module
    docstring), on `context`."""

    def __init__(
        self, context: ssl.SSLContext, limits: HandshakeLimits, metrics: HandshakeMetrics
    ) -> None:
        self.context = context
        self._limits = limits
        self._metrics = metrics
        self._table: ConnectionTable[asyncio.Transport] = ConnectionTable(
            ConnectionLimits(limits.max_total, limits.max_per_peer)
        )
        metrics.in_progress.set_function(lambda: len(self._table))
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def protocol_factory(
        self, serve: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of a plain TCP listener whose connections get their handshake
        here, then go to a protocol from `serve`."""
        return lambda: _Accepted(self, serve)

    def close(self) -> None:
        """The listener stops: the handshakes in progress are closed, and none is handed on."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    def _begin(self, raw: asyncio.Transport, serve: Callable[[], asyncio.Protocol]) -> None:
        if self._closed:
            raw.abort()
            return
        peer = raw.get_extra_info("peername")
        admission = self._table.admit(raw, str(peer[0]) if peer else "?")
        for victim, cap in zip(admission.evicted, admission.caps, strict=True):
            self._metrics.cut.labels(cap.value).inc()
            _reset(victim)  # its handshake ends with the connection
        task = asyncio.get_running_loop().create_task(self._handshake(raw, serve))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handshake(
        self, raw: asyncio.Transport, serve: Callable[[], asyncio.Protocol]
    ) -> None:
        handover = _Handover()
        try:
            if raw.is_closing():
                return  # gave way before its handshake began
            try:
                async with asyncio.timeout(self._limits.timeout_seconds):
                    tls = await asyncio.get_running_loop().start_tls(
                        raw, handover, self.context, server_side=True
                    )
            except TimeoutError:
                self._metrics.cut.labels(TIMEOUT).inc()
                _reset(raw)  # start_tls() closes it; the socket itself goes after this
                return
            except OSError:
                # A failed handshake (counted by agent.server.tls_handshakes) or a connection
                # lost: asyncio's own listener drops those without a word too.
                return
        finally:
            self._table.remove(raw)
        if tls is None or tls.is_closing():
            return  # closed during its handshake: by its peer, or to make room for another
        if self._closed:
            tls.abort()
            return
        handover.hand_to(serve(), tls)


def _reset(transport: asyncio.Transport) -> None:
    """Close `transport` with a TCP reset. A client then sees its connection reset, which it
    retries, and not a TLS handshake cut short, which it could take for the refusal of its
    certificate. Only for handshakes the gate cuts: a failed one must get its alert out."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Accepted(asyncio.Protocol):
    """A connection just accepted, until its handshake begins."""

    def __init__(self, gate: HandshakeGate, serve: Callable[[], asyncio.Protocol]) -> None:
        self._gate = gate
        self._serve = serve

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # The first bytes are the ClientHello, for the TLS layer that start_tls() puts in place.
        transport.pause_reading()
        self._gate._begin(transport, self._serve)


class _Handover(asyncio.Protocol):
    """The TLS connection's protocol from the end of its handshake until the server's protocol
    takes over (`hand_to`): what arrives in between is kept and passed on in order."""

    def __init__(self) -> None:
        self._received: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None
        self._protocol: asyncio.Protocol | None = None

    def hand_to(self, protocol: asyncio.Protocol, transport: asyncio.Transport) -> None:
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self._protocol = protocol
        for data in self._received:
            protocol.data_received(data)
        self._received.clear()
        if self._eof:
            protocol.eof_received()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])

    def data_received(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.data_received(data)
        else:
            self._received.append(data)

    def eof_received(self) -> bool | None:
        if self._protocol is not None:
            return self._protocol.eof_received()
        self._eof = True
        return None  # the TLS layer closes the connection; the server's protocol is told so

    def connection_lost(self, exc: Exception | None) -> None:
        # The TLS layer may have scheduled this call on this protocol before the hand-over.
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
        else:
            self._lost = (exc,)


class HandshakeGatedSite(web.SockSite):
    """aiohttp's site on a listening socket, plain TCP, whose connections get their TLS from
    `gate`; the runner's server gets them once their handshake is over."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, gate: HandshakeGate) -> None:
        super().__init__(runner, sock, ssl_context=gate.context)  # for its https:// name
        self._gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site (SockSite's would listen in TLS)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._gate.protocol_factory(server), sock=self._sock, backlog=self._backlog
        )

    async def stop(self) -> None:
        self._gate.close()
        await super().stop()
