"""`mtagent disks --config F [--json]`: the replication targets and whether they can be used."""

from __future__ import annotations

import argparse
import json

from agent.commands.table import add_config_argument, print_table
from agent.config import load_config
from agent.disk_report import disk_reports, human_bytes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "disks",
        help="list the target disks: device, size, state, why unusable",
        description="List the configured target disks with their device, size and state.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    reports = disk_reports(load_config(args.config))
    if args.json:
        print(json.dumps({"disks": [r.to_json() for r in reports]}, indent=2))
        return 0
    print_table(
        ["DISK", "GROUP", "TARGET", "SIZE", "SECTOR", "STATE", "REASON"],
        [
            [
                r.id,
                r.group,
                r.target,
                human_bytes(r.size_bytes),
                str(r.sector_bytes or "-"),
                r.state,
                r.reason,
            ]
            for r in reports
        ],
    )
    return 0
