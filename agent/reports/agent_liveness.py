"""Whether the agent of a config is running and ready, as `mtagent status` tells it.

Two witnesses, neither of them the state store (which says what the agent last wrote, not
whether it is there): the state dir's `agent.lock`, held by a live `mtagent serve` (read from
the kernel's table of locks, never taken), and the metrics listener's `/healthz` on the
configured `metrics_listen`, which answers 200 once the agent is ready. The agent is serving
only when both say so.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import asdict, dataclass
from typing import Any

from agent.config import AgentConfig
from agent.replication.instance_lock import LOCK_NAME, lock_holder

# The agent's name in the lock file (agent.server.contexts); others hold it to keep it away.
SERVE_HOLDER = "mtagent serve"
HEALTH_TIMEOUT_SECONDS = 2.0
# A wildcard listener is reached on the loopback of its family.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class AgentLiveness:
    """`running`: a live `mtagent serve` holds the state dir's lock (`pid` is its pid);
    `ready`: its /healthz at `health_url` answered 200. `health` is the /healthz status
    (`starting`, `ready`, `stopping`), None when nothing answered. `message`: one line for a
    person, saying what was found and, when not serving, why."""

    running: bool
    ready: bool
    pid: int | None
    health_url: str | None
    health: str | None
    message: str

    @property
    def serving(self) -> bool:
        return self.running and self.ready

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Health:
    status: str | None  # None: nothing answered
    detail: str  # the reason not ready, or why nothing answered


def agent_liveness(config: AgentConfig) -> AgentLiveness:
    """What the lock and /healthz say of the agent of `config`, now. Never raises: what
    cannot be read is said in `message`."""
    lock_path = config.server.state_dir / LOCK_NAME
    url = health_url(config)
    health = _probe(url) if url else _Health(None, "metrics_listen has port 0: not probed")
    ready = health.status == "ready"
    try:
        holder = lock_holder(config.server.state_dir)
    except OSError as exc:
        # Without the lock's word, whoever answers on the configured port is taken for it.
        unknown = f"cannot tell who holds {lock_path}: {exc.strerror or exc}"
        running = health.status is not None
        message = f"{'running' if running else 'not running'} ({unknown}; {health.detail})"
        return AgentLiveness(running, ready, None, url, health.status, message)
    running = holder is not None and holder.name in (SERVE_HOLDER, "")
    if holder is None:
        free = f"nothing holds {lock_path}"
        message = (
            f"not running ({free}; {health.detail})"
            if health.status is None
            else f"not running with this state dir ({free}), yet {url} answers"
        )
    elif not running:
        message = f"not running: {lock_path} is held by pid {holder.pid} ({holder.name})"
    elif ready:
        message = f"running (pid {holder.pid}), ready ({url})"
    else:
        message = f"running (pid {holder.pid}) but not ready: {health.detail}"
    return AgentLiveness(
        running=running,
        ready=ready,
        pid=None if holder is None else holder.pid,
        health_url=url,
        health=health.status,
        message=message,
    )


def health_url(config: AgentConfig) -> str | None:
    """The agent's /healthz as reachable from this host; None when the port is chosen at
    start (0), since then only the agent's log says it."""
    server = config.server
    if server.metrics_port == 0:
        return None
    host = _LOOPBACK.get(server.metrics_host, server.metrics_host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{server.metrics_port}/healthz"


def _probe(url: str) -> _Health:
    host_port = url.removeprefix("http://").removesuffix("/healthz")
    host, _, port = host_port.rpartition(":")
    connection = http.client.HTTPConnection(
        host.strip("[]"), int(port), timeout=HEALTH_TIMEOUT_SECONDS
    )
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return _Health(None, f"nothing answers on {url}: {reason}")
    finally:
        connection.close()
    try:
        document = json.loads(body)
        status = str(document["status"])
    except (ValueError, KeyError, TypeError):
        return _Health(None, f"{url} answered {response.status} without the agent's health")
    return _Health(status, str(document.get("reason", "")) or f"{url} says {status}")
