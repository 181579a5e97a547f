"""The `mtagent` command line: one entry point, a subcommand per job.

Exit codes (README "Quick start"): 0 on success, 2 on usage errors
(argparse's own), 1 on failure with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from agent.errors import AgentError

# Each names a module of agent/commands with `register(subparsers)`.
COMMANDS = ("serve", "certs", "push", "disks", "status", "points", "recover", "check")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand, or with just `only`.

    Importing a command pulls in what it needs (aiohttp, cryptography, ...): a run
    of one command imports only that one, which saves most of a second per run.
    """
    parser = argparse.ArgumentParser(
        prog="mtagent",
        description="Master target for block-level disaster recovery.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"agent.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    # `serve` logs as a daemon does; the other commands' warnings (a push retrying) are lines
    # of their own on stderr.
    warnings = None if args.command == "serve" else _StderrLines()
    if warnings is not None:
        logging.getLogger("agent").addHandler(warnings)
    try:
        return int(args.run(args) or 0)
    except AgentError as exc:
        print(f"mtagent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mtagent: interrupted", file=sys.stderr)
        return 1
    finally:
        if warnings is not None:
            logging.getLogger("agent").removeHandler(warnings)


class _StderrLines(logging.Handler):
    """Warnings as `mtagent: ...` lines on whatever sys.stderr is when they are logged (a line
    drawn over by a progress bar is erased first)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            erase = "\r\x1b[2K" if sys.stderr.isatty() else ""
            sys.stderr.write(f"{erase}mtagent: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


if __name__ == "__main__":
    sys.exit(main())
