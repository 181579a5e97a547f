"""How many connections a listener keeps open, and which one gives way when it is full.

A listener holds at most `max_total` connections, and at most `max_per_peer` from one address.
A new connection over either cap first takes the place of the oldest idle connection (no request
in progress) of the same scope, connections that never sent a request first: idle connections
cost a file descriptor and nothing else, and a client that opens a thousand of them must not keep
a scrape or a sender out. Only when every connection of the scope is busy is the new one
refused (the server answers 503 TOO_MANY_CONNECTIONS and closes it).

Pure bookkeeping: the caller (agent.server.http_layer) does the closing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)


class Refusal(StrEnum):
    """Why a connection was refused (the `reason` label of the refusal counter)."""

    PER_PEER = "per_peer"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The caps of one listener; `max_per_peer` None: no cap per address."""

    max_total: int
    max_per_peer: int | None = None


@dataclass(frozen=True, slots=True)
class Admission(Generic[C]):
    """What to do with a new connection: admit it (refused None) after closing `evicted`, or
    refuse it. `caps[i]`: the cap `evicted[i]` gave way at."""

    evicted: tuple[C, ...] = ()
    refused: Refusal | None = None
    caps: tuple[Refusal, ...] = ()


@dataclass(slots=True)
class _Entry:
    peer: str
    served: bool = False  # has had a request
    busy: bool = False  # a request is in progress


class ConnectionTable(Generic[C]):
    """The open connections of one listener, oldest first."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._entries: dict[C, _Entry] = {}  # insertion order: oldest first
        self._per_peer: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, connection: C, peer: str) -> Admission[C]:
        """Decide on the new `connection` from address `peer`; an admitted one is in the table
        (and those evicted for it are not) when this returns."""
        evicted: list[C] = []
        caps: list[Refusal] = []
        cap = self.limits.max_per_peer
        if cap is not None and self._per_peer[peer] >= cap:
            victim = self._idle(lambda entry: entry.peer == peer)
            if victim is None:
                return Admission(refused=Refusal.PER_PEER)
            evicted.append(victim)
            caps.append(Refusal.PER_PEER)
            self.remove(victim)
        if len(self._entries) >= self.limits.max_total:
            victim = self._idle(lambda entry: True)
            if victim is None:
                return Admission(tuple(evicted), Refusal.TOTAL, tuple(caps))
            evicted.append(victim)
            caps.append(Refusal.TOTAL)
            self.remove(victim)
        self._entries[connection] = _Entry(peer)
        self._per_peer[peer] += 1
        return Admission(tuple(evicted), caps=tuple(caps))

    def set_busy(self, connection: C, busy: bool) -> None:
        """A request of `connection` starts (True) or ends (False)."""
        entry = self._entries.get(connection)
        if entry is not None:
            entry.busy = busy
            entry.served = True

    def remove(self, connection: C) -> None:
        """`connection` is closed (a connection not in the table is ignored)."""
        entry = self._entries.pop(connection, None)
        if entry is not None:
            self._per_peer[entry.peer] -= 1
            if not self._per_peer[entry.peer]:
                del self._per_peer[entry.peer]

    def _idle(self, wanted: Callable[[_Entry], bool]) -> C | None:
        """The oldest idle connection that never had a request, else the oldest idle one."""
        oldest_idle = None
        for connection, entry in self._entries.items():
            if entry.busy or not wanted(entry):
                continue
            if not entry.served:
                return connection
            if oldest_idle is None:
                oldest_idle = connection
        return oldest_idle
