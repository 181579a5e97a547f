"""`mtagent serve --config F`: run the daemon (what systemd starts)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import ClassVar

from agent.commands.table import add_config_argument
from agent.config import load_config
from agent.server.daemon import run_daemon


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
    asyncio.run(run_daemon(config))
    return 0


def configure_logging(level: str) -> None:
    """Log to stderr; with `<N>` priority prefixes when journald reads it."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class JournaldFormatter(logging.Formatter):
    """Prefix each line with its syslog priority, which journald turns into PRIORITY=."""

    PRIORITIES: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 2)
        # journald makes an entry of each line: a traceback keeps its record's priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())
