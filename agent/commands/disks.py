"""`mtagent disks --config F [--json]`: the replication targets and whether they can be used.

For each configured disk: id, group, canonical SCSI id, device node, size, logical sector size,
state, and why it is protected or missing, or needs a resync after a gap. Then the host's disks
that no `[[disks]]` entry names, with their SCSI ids (to copy into the config) or the reason they
have none.
"""

from __future__ import annotations

import argparse

from agent.commands.json_output import print_json
from agent.commands.table import add_config_argument, print_table
from agent.config import load_config
from agent.reports.disk_report import disk_reports, host_disks, unconfigured_disks
from agent.reports.sources import require_state_dir
from agent.units import human_bytes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "disks",
        help="list the target disks: SCSI id, device, size, state, why unusable",
        description="List the configured target disks with their SCSI id, device, size, "
        "sector size and state (and why a disk is protected or missing, or why it needs a "
        "resync), then the host's disks that no [[disks]] entry names, with the SCSI id to put "
        "in the config.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    require_state_dir(config)
    on_host = host_disks()
    reports = disk_reports(config, disks_on_host=on_host)
    others = unconfigured_disks(config, on_host or [])
    if args.json:
        print_json(
            {
                "disks": [r.to_json() for r in reports],
                "unconfigured": [d.to_json() for d in others],
            }
        )
        return 0
    print_table(
        ["DISK", "GROUP", "SCSI ID", "DEVICE", "SIZE", "SECTOR", "STATE", "REASON"],
        [
            [
                r.id,
                r.group,
                r.scsi_id or "-",
                r.device or "-",
                human_bytes(r.size_bytes),
                str(r.sector_bytes or "-"),
                r.state,
                r.reason,
            ]
            for r in reports
        ],
    )
    if others:
        print()
        print("Disks not in the config (put the SCSI ID in a [[disks]] entry as scsi_uuid):")
        print_table(
            ["DEVICE", "SCSI ID", "SIZE", "SECTOR", "VENDOR/MODEL", "NOTE"],
            [
                [
                    str(d.disk.node),
                    d.disk.scsi_id or "-",
                    human_bytes(d.disk.size_bytes),
                    str(d.disk.sector_bytes),
                    " ".join(part for part in (d.disk.vendor, d.disk.model) if part) or "-",
                    d.note,
                ]
                for d in others
            ],
        )
    return 0
