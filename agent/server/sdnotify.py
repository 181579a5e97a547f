"""systemd's notify protocol (sd_notify(3)) in a few lines, without a dependency.

systemd hands a `Type=notify` service the address of a Unix datagram socket in
`$NOTIFY_SOCKET`; each datagram is newline-separated `KEY=value` assignments:
`READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`. Outside systemd (no
`$NOTIFY_SOCKET`) every call is a no-op, so the daemon needs no special case.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)

# Each WATCHDOG=1 is sent at this fraction of systemd's timeout, as sd_watchdog_enabled(3)
# recommends: one lost or late keep-alive does not get the service killed.
WATCHDOG_FRACTION = 0.5


class SystemdNotifier:
    """Sends notifications to the service manager at `address` (None: nowhere)."""

    def __init__(self, address: str | None) -> None:
        self.address = _socket_address(address) if address else None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier:
        """The notifier for `$NOTIFY_SOCKET` (a no-op one when it is not set)."""
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `assignments` (like "READY=1", "STATUS=2/2 disks ok") in one datagram.

        Never blocks and never raises: a service manager that cannot take the message
        must not stop the agent. Returns whether the datagram was sent.
        """
        if self.address is None or not assignments:
            return False
        if any("\n" in item for item in assignments):
            raise ValueError(f"a notification holds one line per assignment: {assignments!r}")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            # A full queue or a manager that went away: systemd notices missing
            # keep-alives by itself, so one warning is enough.
            if not self._warned:
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def close(self) -> None:
        """Close the socket (a later notify opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(address: str) -> str | bytes:
    # "@name" is an abstract socket: the kernel wants a leading NUL byte instead.
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Seconds between two WATCHDOG=1: half of `$WATCHDOG_USEC`, or None without a watchdog.

    `$WATCHDOG_PID`, when set, names the process the watchdog is meant for; any other
    process (a child that inherited the environment) gets None.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6 * WATCHDOG_FRACTION


async def notify_while_running(
    notifier: SystemdNotifier,
    *,
    interval: float,
    watchdog: bool,
    healthy: Callable[[], Awaitable[bool]],
    status: Callable[[], str],
) -> None:
    """Every `interval` seconds: `STATUS=status()`, and `WATCHDOG=1` if `watchdog` and `healthy()`.

    Runs on the event loop until cancelled, so a blocked loop sends no keep-alive and
    systemd restarts the agent; an unhealthy agent sends none either, and says why in
    the log once.
    """
    was_healthy = True
    while True:
        await asyncio.sleep(interval)
        assignments = [f"STATUS={status()}"]
        if watchdog:
            is_healthy = await healthy()
            if is_healthy:
                assignments.append("WATCHDOG=1")
            elif was_healthy:
                log.error("unhealthy: withholding the systemd watchdog keep-alive")
            was_healthy = is_healthy
        notifier.notify(*assignments)
