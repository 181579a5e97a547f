"""The `mtagent` command line: one entry point, a subcommand per job.

Exit codes (DESIGN.md "Command line"): 0 on success, 2 on usage errors
(argparse's own), 1 on failure with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.commands import certs, check, disks, points, push, recover, serve, status
from agent.failure import CommandFailed

COMMAND_MODULES = (serve, certs, push, disks, status, points, recover, check)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="mtagent",
        description="Master target for block-level disaster recovery.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandFailed as exc:
        print(f"mtagent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mtagent: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
