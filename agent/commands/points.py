"""`mtagent points --config F --group G [--json]`: the recovery points of a consistency group."""

from __future__ import annotations

import argparse

from agent.commands.json_output import print_json
from agent.commands.table import add_config_argument, print_table
from agent.config import load_config
from agent.errors import CommandFailed
from agent.recovery.points import format_time, require_group, stored_points
from agent.replication.state import StateStore
from agent.reports.sources import require_retention_dir, require_state_store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "points",
        help="list the recovery points of a consistency group",
        description="List the recovery points of a consistency group, oldest first: one per "
        "acknowledged batch of each disk (<disk>@<seq>) and one per TAG every disk of the group "
        "acknowledged (tag:<tag_id>), as long as the retention drive holds the undo data to "
        "reach them. Reads the state store and the journals; safe beside a running agent.",
    )
    add_config_argument(parser)
    parser.add_argument("--group", required=True, help="the consistency group")
    parser.add_argument("--json", action="store_true", help='print {"points": [...]} as the API')
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    require_group(config, args.group)
    require_state_store(config)
    require_retention_dir(config)
    store = StateStore.open_readonly(config.server.state_dir)
    try:
        points = stored_points(config, store, args.group)
    except OSError as exc:
        raise CommandFailed(f"cannot read the retention journals: {exc}") from exc
    finally:
        store.close()
    if args.json:
        print_json({"points": [point.to_json() for point in points]})
        return 0
    print_table(
        ["ID", "KIND", "TIME (UTC)", "DISKS", "NAME"],
        [
            [
                point.id,
                point.kind,
                format_time(point.time_ns),
                ",".join(f"{disk}@{seq}" for disk, seq in point.disks.items()),
                point.name,
            ]
            for point in points
        ],
    )
    if not points:
        print(f"(group {args.group} has no recovery point on the retention drive)")
    return 0
