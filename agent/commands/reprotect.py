"""`mtagent reprotect --config F --group G`: take a failed-over group back into replication; its
disks are opened again and become `resync_required` (see agent/recovery/failover.py). Asks the
running agent, or with none running records it for the agent's next start."""

from __future__ import annotations

import argparse

from agent.commands.failover import add_agent_arguments, ask_running_agent, show
from agent.commands.table import add_config_argument
from agent.config import load_config
from agent.recovery.failover import as_document, reprotect_in_process


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reprotect",
        help="take a failed-over group back into replication (its disks need a resync)",
        description="End the failover of a group: its disks are opened again and become "
        "resync_required, so that a resync in either direction starts from a known state.",
    )
    add_config_argument(parser)
    parser.add_argument("--group", required=True, help="the consistency group")
    add_agent_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    asked = ask_running_agent(config, args, lambda client: client.reprotect(args.group))
    if asked is not None:
        show(asked, "agent", args.json)
    else:
        show(as_document(reprotect_in_process(config, args.group)), "in_process", args.json)
    return 0
