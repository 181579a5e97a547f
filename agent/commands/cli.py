"""The `mtagent` command line: one entry point, a subcommand per job.

Exit codes (docs/cli.md): 0 on success, 2 on usage errors, 1 on failure with a one-line reason
on stderr; a command may document others (`status`, `push --mode verify`). Under `--json` a
failure also prints `{"schema": 1, "error": {"message": ..., "exit_code": ...}}` on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from agent.commands.json_output import error_document
from agent.errors import AgentError
from agent.server.early_reloads import EARLY_RELOADS
from agent.version import agent_version

# Each names a module of agent/commands with `register(subparsers)`.
COMMANDS = (
    "serve",
    "certs",
    "targets",
    "push",
    "disks",
    "status",
    "points",
    "recover",
    "check",
    "failover",
    "reprotect",
    "enroll",
)
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _JsonErrorsParser(argparse.ArgumentParser):
    """The parser of a run with `--json`: a usage error also prints the JSON error document
    on stdout (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        print(json.dumps(error_document(message, EXIT_USAGE)))
        super().error(message)  # exits 2


def build_parser(only: str | None = None, *, json_errors: bool = False) -> argparse.ArgumentParser:
    """The argument parser with every subcommand, or with just `only`.

    Importing a command pulls in what it needs (aiohttp, cryptography, ...): a run
    of one command imports only that one, which saves most of a second per run.
    """
    parser_class = _JsonErrorsParser if json_errors else argparse.ArgumentParser
    parser = parser_class(
        prog="mtagent",
        description="Master target for block-level disaster recovery.",
    )
    parser.add_argument("--version", action="version", version=f"mtagent {agent_version()}")
    subparsers = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=parser_class,
    )
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"agent.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    if chosen == "serve" and threading.current_thread() is threading.main_thread():
        # Before the daemon's imports (most of a second): a SIGHUP from here on is a reload
        # asked for early, not the end of the agent (agent.server.early_reloads).
        EARLY_RELOADS.hold()
    wants_json = "--json" in argv
    parser = build_parser(only=chosen, json_errors=wants_json)
    args = parser.parse_args(argv)
    # `serve` logs as a daemon does; the other commands' warnings (a push retrying) are lines
    # of their own on stderr.
    warnings = None if args.command == "serve" else _StderrLines()
    if warnings is not None:
        logging.getLogger("agent").addHandler(warnings)
    try:
        return int(args.run(args) or 0)
    except AgentError as exc:
        return _failed(str(exc), exc.exit_code, wants_json)
    except KeyboardInterrupt:
        return _failed("interrupted", EXIT_FAILURE, wants_json)
    finally:
        if warnings is not None:
            logging.getLogger("agent").removeHandler(warnings)


def _failed(message: str, exit_code: int, wants_json: bool) -> int:
    """Say why on stderr in one line (and on stdout as JSON under `--json`); return the code."""
    print(f"mtagent: {message}", file=sys.stderr)
    if wants_json:
        print(json.dumps(error_document(message, exit_code)))
    return exit_code


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
