"""`mtagent failover --config F --group G --point P`: fail one consistency group over while the
agent goes on replicating the others (see agent/recovery/failover.py).

With the agent running it asks the agent (`POST /v1/groups/{group}/failover`, mutual TLS with
`--cert`/`--key`, a certificate with the admin role); with none running it does the same work
itself, holding the agent's lock, as `recover --in-place` does. Run again after being cut off, it
finishes the same failover to the same point.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.commands.json_output import print_json
from agent.commands.recover import PhaseBars, add_point_argument
from agent.commands.table import add_config_argument
from agent.config import AgentConfig, load_config
from agent.errors import CommandFailed
from agent.recovery.failover import as_document, fail_over_in_process
from agent.reports.agent_liveness import agent_liveness
from protocol.client import AgentClient, TransportError, client_ssl_context
from protocol.documents import Failover
from protocol.errors import ProtocolError

# A failover rolls whole disks back before it answers.
ANSWER_TIMEOUT_SECONDS = 3600.0
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "failover",
        help="fail one consistency group over while the others keep replicating",
        description="Roll every disk of a consistency group back to a recovery point in place, "
        "verify it, and release the disks (every descriptor closed) so that they can be attached "
        "to the recovered machine; the other groups keep replicating. With the agent running it "
        "asks the agent (give --cert and --key of an admin client certificate); otherwise it "
        "does the work itself. Run again after being cut off, it finishes the same failover. "
        "`mtagent reprotect` takes the group back into replication.",
    )
    add_config_argument(parser)
    parser.add_argument("--group", required=True, help="the consistency group")
    add_point_argument(parser)
    add_agent_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """The options with which a command asks the running agent."""
    parser.add_argument(
        "--cert", type=Path, help="client certificate with the admin role (when the agent runs)"
    )
    parser.add_argument("--key", type=Path, help="its private key")
    parser.add_argument(
        "--ca", type=Path, help="CA of the agent's certificate (default: [tls] client_ca)"
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    asked = ask_running_agent(config, args, lambda client: client.failover(args.group, args.point))
    if asked is not None:
        document, via = asked, "agent"
    else:
        bars = PhaseBars() if sys.stderr.isatty() else None
        progress = bars if bars is not None else (lambda disk, phase, done, total: None)
        try:
            document = as_document(fail_over_in_process(config, args.group, args.point, progress))
        finally:
            if bars is not None:
                bars.close()
        via = "in_process"
    show(document, via, args.json)
    return 0


def ask_running_agent(
    config: AgentConfig,
    args: argparse.Namespace,
    call: Callable[[AgentClient], Awaitable[Failover]],
) -> Failover | None:
    """`call` on the running agent of `config`, or None when no agent runs (the caller then does
    the work itself). Raises CommandFailed (no certificate given, the agent unreachable or
    refusing)."""
    liveness = agent_liveness(config)
    if not liveness.running:
        return None
    if args.cert is None or args.key is None:
        raise CommandFailed(
            f"the agent is running ({liveness.message}): give --cert and --key of a client "
            "certificate with the admin role to ask it"
        )
    context = _tls_context(args.cert, args.key, args.ca or config.tls.client_ca)
    host = _LOOPBACK.get(config.server.listen_host, config.server.listen_host)
    url = f"https://{host}:{config.server.listen_port}"

    async def asking() -> Failover:
        async with AgentClient(url, context, timeout=ANSWER_TIMEOUT_SECONDS) as client:
            return await call(client)

    try:
        return asyncio.run(asking())
    except ProtocolError as exc:
        raise CommandFailed(f"the agent refused: {exc}") from exc
    except (TransportError, TimeoutError) as exc:
        raise CommandFailed(f"cannot ask the agent at {url}: {exc}") from exc


def _tls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    try:
        return client_ssl_context(cert, key, ca)
    except OSError as exc:  # ssl.SSLError included
        raise CommandFailed(f"cannot load the TLS certificate, key or CA: {exc}") from exc


def show(document: Failover, via: str, as_json: bool) -> None:
    """Print the failover: its JSON document (docs/cli.md) or a few lines for a person."""
    if as_json:
        described: dict[str, Any] = {**document.to_json(), "via": via}
        print_json(described)
        return
    point = document.point
    if point is None:
        print(f"group {document.group}: {document.phase} (point {document.requested!r})")
        return
    when = datetime.fromtimestamp(point.time_ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    age = document.point_age_seconds or 0.0
    print(
        f"group {document.group}: point {point.id} ({point.kind}, {point.name}, {when}, "
        f"{age:.0f} s old when chosen)"
    )
    for disk, seq in point.disks.items():
        print(f"  {disk}: batch {seq}, {document.phase}")
