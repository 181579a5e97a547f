"""The daemon's listening sockets, bound before anything else is opened, and what is said when
they cannot accept.

A port that is taken is the most common reason an agent cannot start; binding first makes it
fail in one line before a disk or the state store is touched, rather than with a traceback
after. Each address of the host gets a socket, as asyncio's own `create_server` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError
from agent.log_fields import log_fields

log = logging.getLogger(__name__)

BACKLOG = 128


class ListenError(AgentError):
    """A listener cannot be bound; the message names it, the address and the reason."""


def bind_listeners(host: str, port: int, what: str) -> list[socket.socket]:
    """Listening, non-blocking sockets on every address of `host` at `port` (0: a free port,
    the same on each address when it can be). `what` names the listener for a person
    (`data port (server.listen)`).

    Raises ListenError when the host does not resolve or an address cannot be bound (in use,
    not ours, no permission); no socket stays open then.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where} for the {what}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # As asyncio does: "::" serves IPv6 only; "0.0.0.0" is a listener of its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {where} for the {what}: {reason}") from exc
    return sockets


# What asyncio's accept loop reports when it cannot accept for want of a descriptor or memory;
# it then pauses that listener for a second and tries again, reporting each time.
ACCEPT_FAILURE_MESSAGE = "socket.accept() out of system resource"
ACCEPT_FAILURE_LOG_INTERVAL_SECONDS = 60.0


class AcceptFailureLog:
    """An event-loop exception handler that logs failed accepts (EMFILE, ENFILE, ...) once per
    interval, with how many there were, instead of once per attempt with a traceback; every
    other report goes to asyncio's default handler.

    `counted()` is called for each failure (the metric).
    """

    def __init__(
        self,
        counted: Callable[[], None],
        *,
        interval: float = ACCEPT_FAILURE_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counted = counted
        self._interval = interval
        self._clock = clock
        self._next_log = float("-inf")
        self._unlogged = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_retry_after_close(context):
            return
        if context.get("message") != ACCEPT_FAILURE_MESSAGE:
            loop.default_exception_handler(context)
            return
        self._counted()
        self._unlogged += 1
        now = self._clock()
        if now < self._next_log:
            return
        exc = context.get("exception")
        reason = getattr(exc, "strerror", None) or str(exc)
        log.error(
            "cannot accept connections: %s (%d times since the last report; open connections "
            "hold the descriptors: see the connection caps and LimitNOFILE=)",
            reason,
            self._unlogged,
            extra=log_fields(errno=getattr(exc, "errno", None), count=self._unlogged),
        )
        self._unlogged = 0
        self._next_log = now + self._interval


def _is_retry_after_close(context: dict[str, Any]) -> bool:
    """Whether this report is asyncio's paused listener resuming after the listener was closed.

    After a failed accept asyncio schedules the listener's resumption a second later; a
    shutdown inside that second closes the socket first, and the resumption then fails on
    descriptor -1 with a traceback. Nothing is lost (the listener was meant to be closed), so
    it is not an error to report.
    """
    callback = getattr(context.get("handle"), "_callback", None)
    return (
        isinstance(context.get("exception"), ValueError)
        and getattr(callback, "__name__", "") == "_start_serving"
    )


def raise_open_file_limit() -> None:
    """Raise this process's soft limit on open descriptors to its hard limit: every connection
    costs one, and the soft default (1024) is below what the connection caps allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
