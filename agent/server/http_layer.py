"""What happens below the application, on each connection of a listener: aiohttp's own answers
and the caps on open connections.

aiohttp's own answers are those to a request that is not valid HTTP/1.1 (a bad request line, an
over-long header, a bad chunk) and to a failure that escaped every middleware.

aiohttp answers those in plain text and logs each with a traceback ("Error handling request"),
so a client that sends garbage fills the log with tracebacks of the agent's own code. Here they
are answered with docs/protocol.md's JSON error body (`BAD_HTTP_REQUEST`, `INTERNAL`, ...) and
logged in one line with their code; only a failure of the agent itself keeps its traceback.

Each connection is admitted by the listener's `ConnectionTable` (agent.server.connection_limits):
one over the caps takes the place of an idle one, or is answered 503 TOO_MANY_CONNECTIONS and
closed. A connection that does not send (the rest of) a request's headers within `idle_timeout`
is closed (aiohttp's keep-alive timer, which also runs before the first request).

aiohttp has no public hook for either: `RequestHandler.handle_error` is the method that builds
its answers and `connection_made` is where a connection starts, and the runner's `Server` makes
one `RequestHandler` per connection. `AgentAppRunner` makes the server use a subclass
(tests/agent/server/test_http_layer.py and test_connections.py pin the behaviour, so an aiohttp
that changes it fails there first).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter

from agent.log_fields import log_fields
from agent.server.connection_limits import ConnectionLimits, ConnectionTable, Refusal
from protocol.errors import BadHttpRequest, ErrorBody, InternalError, TooManyConnections

log = logging.getLogger(__name__)

BAD_HTTP_REQUEST = BadHttpRequest.code
INTERNAL = InternalError.code


def layer_code(status: int) -> str:
    """The code of an answer of the HTTP layer with `status`."""
    if status == HTTPStatus.BAD_REQUEST:
        return BAD_HTTP_REQUEST
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return INTERNAL
    try:
        return HTTPStatus(status).name
    except ValueError:
        return f"HTTP_{status}"


class ConnectionMetrics:
    """What the listeners' caps did, by listener (`data`, `metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "mtagent_refused_connections",
            "Connections refused because a listener's cap was reached and every connection "
            "under it was busy, by listener and cap (total, per_peer).",
            ["listener", "reason"],
            registry=registry,
        )
        self.evicted = Counter(
            "mtagent_idle_connections_closed",
            "Idle connections closed to make room for a new one at a listener's cap.",
            ["listener"],
            registry=registry,
        )
        self.accept_failures = Counter(
            "mtagent_accept_failures",
            "Times a listener could not accept a connection for want of a file descriptor or "
            "memory (EMFILE, ENFILE, ENOBUFS, ENOMEM); each pauses accepting for a second.",
            registry=registry,
        )


class ListenerGuard:
    """The connection caps of one listener (`name`: data or metrics) and their counters."""

    def __init__(self, name: str, limits: ConnectionLimits, metrics: ConnectionMetrics) -> None:
        self.name = name
        self.table: ConnectionTable[web.RequestHandler] = ConnectionTable(limits)
        self._metrics = metrics
        for reason in Refusal:
            metrics.refused.labels(name, reason.value)
        metrics.evicted.labels(name)

    def refused(self, reason: Refusal) -> None:
        self._metrics.refused.labels(self.name, reason.value).inc()

    def evicted(self, count: int) -> None:
        self._metrics.evicted.labels(self.name).inc(count)


class AgentRequestHandler(web.RequestHandler):
    """One connection's protocol: admitted by its listener's `guard` (None: no caps), its own
    error answers JSON and logged in one line."""

    def __init__(self, manager: web.Server, *, guard: ListenerGuard | None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guard = self.guard
        if guard is None:
            return
        peer = transport.get_extra_info("peername")
        admission = guard.table.admit(self, str(peer[0]) if peer else "?")
        for victim in admission.evicted:
            victim.force_close()
        if admission.evicted:
            guard.evicted(len(admission.evicted))
        if admission.refused is not None:
            guard.refused(admission.refused)
            _refuse(transport, guard, admission.refused)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.guard is not None:
            self.guard.table.remove(self)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code = layer_code(status)
        if status >= 500:
            log.error(
                "%s %s from %s failed inside the agent",
                request.method,
                request.path,
                request.remote,
                exc_info=exc,
                extra=log_fields(code=code, remote=request.remote),
            )
            text = "the agent failed to handle this request; it is logged"
        else:
            text = _first_line(exc, message) or HTTPStatus(status).phrase
            log.warning(
                "refused a request from %s that is not valid HTTP/1.1 (%d %s): %s",
                request.remote,
                status,
                code,
                text,
                extra=log_fields(code=code, status=status, remote=request.remote),
            )
        if request.writer.output_size > 0:
            # Part of an answer is out already: nothing more can be said (as aiohttp does).
            raise ConnectionError("an answer was already being sent; the connection is closed")
        response = web.json_response(ErrorBody(code, text).to_json(), status=status)
        response.force_close()
        return response


def _refuse(transport: asyncio.BaseTransport, guard: ListenerGuard, reason: Refusal) -> None:
    """Answer 503 TOO_MANY_CONNECTIONS before any request, and close: a client that reads
    before it writes sees why; one that writes first may see a reset."""
    scope = "from your address" if reason is Refusal.PER_PEER else "in all"
    body = json.dumps(
        TooManyConnections(
            f"the {guard.name} port has as many busy connections {scope} as it takes; "
            "try again later",
            limit=reason.value,
        ).to_json()
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(head + body)
    transport.close()


class AgentServer(web.Server):
    """A low-level server whose connections are AgentRequestHandler, counted by `guard`."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        guard: ListenerGuard | None,
        **kwargs: Any,
    ) -> None:
        async def counted(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if guard is not None and isinstance(protocol, web.RequestHandler):
                guard.table.set_busy(protocol, True)
            try:
                return await handler(request)
            finally:
                if guard is not None and isinstance(protocol, web.RequestHandler):
                    guard.table.set_busy(protocol, False)

        super().__init__(counted, **kwargs)
        self.guard = guard

    def __call__(self) -> web.RequestHandler:
        return AgentRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)


class AgentAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections are capped by `guard` (None: not capped), time out after
    `idle_timeout` seconds without a request, and whose HTTP layer answers in JSON (see the
    module docstring)."""

    def __init__(
        self,
        app: web.Application,
        *,
        guard: ListenerGuard | None = None,
        idle_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if idle_timeout is not None:
            kwargs["keepalive_timeout"] = idle_timeout
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return AgentServer(
            made.request_handler,
            guard=self._guard,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


def _first_line(exc: BaseException | None, message: str | None) -> str:
    # aiohttp's parser errors carry a `message`; their str() adds a status and repeats it.
    text = getattr(exc, "message", None) or message or (str(exc) if exc else "")
    return str(text).strip().splitlines()[0] if str(text).strip() else ""
