"""`mtagent serve --config F`: run the daemon (what systemd starts)."""

from __future__ import annotations

import argparse
import asyncio

from agent.commands.table import add_config_argument
from agent.config import load_config
from agent.server.daemon import run_daemon
from agent.server.early_reloads import EARLY_RELOADS
from agent.server.log_handlers import configure_logging


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the agent daemon",
        description="Run the master target agent: the TLS data port and the metrics listener.",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="the least important messages logged (default info)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(args.log_level)
    try:
        asyncio.run(run_daemon(config))
    finally:
        # Closing the loop gave SIGHUP back its default action, which would end an agent on its
        # way out with a signal instead of its exit code.
        EARLY_RELOADS.hold()
    return 0
