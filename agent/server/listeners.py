"""The daemon's listening sockets, bound before anything else is opened.

A port that is taken is the most common reason an agent cannot start; binding first makes it
fail in one line before a disk or the state store is touched, rather than with a traceback
after. Each address of the host gets a socket, as asyncio's own `create_server` does.
"""

from __future__ import annotations

import contextlib
import socket

from agent.errors import AgentError

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
