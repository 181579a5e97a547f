"""`mtagent targets create --config F [--json]`: every missing file target of the config created
at its `source_size`, sparse, mode 0600; the targets that are there left alone.

All or nothing: every target is looked at first, and when any cannot be made ready (a file of
another size, a missing directory or block device, no source_size) the command names each in one
line and creates none, so a mistyped path does not leave half a setup behind.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.commands.json_output import print_json
from agent.commands.table import add_config_argument, print_table
from agent.config import DiskConfig, load_config
from agent.errors import CommandFailed
from agent.units import human_bytes
from blockio.disks.file_target import (
    FileTargetAction,
    FileTargetPlan,
    FileTargetRefused,
    create_file_target,
    plan_file_target,
)

# How the table names what became of each target.
_RESULT_TEXT = {
    FileTargetAction.CREATE: "created",
    FileTargetAction.EXISTS: "exists, left alone",
    FileTargetAction.BLOCK_DEVICE: "block device, left alone",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `targets` command, with its `create` subcommand, to `subparsers`."""
    parser = subparsers.add_parser(
        "targets",
        help="prepare the target disks of the config (create missing file targets)",
        description="Prepare the target disks that the configuration names.",
    )
    actions = parser.add_subparsers(dest="targets_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="create every missing file target at its source_size (sparse, mode 0600)",
        description="Create every file target of the config that does not exist: a sparse "
        "file of its disk's source_size, mode 0600, in a directory that must exist. A target "
        "that exists is left alone (refused if its size is not source_size); block devices "
        "are never created or touched (one that is missing is an error). When any target "
        "cannot be made ready, nothing is created.",
    )
    add_config_argument(create)
    create.add_argument("--json", action="store_true", help="print JSON instead of a table")
    create.set_defaults(run=run_create)


def run_create(args: argparse.Namespace) -> int:
    """Plan every target, refuse them all if one is wrong, else create the missing ones."""
    config = load_config(args.config)
    plans: list[FileTargetPlan] = []
    refusals: list[str] = []
    for disk in config.disks:
        if disk.path is None:
            continue  # found by its SCSI id: a block device, nothing to create
        try:
            plans.append(plan_file_target(disk.id, disk.path, disk.source_size_bytes))
        except FileTargetRefused as exc:
            refusals.append(str(exc))
    if refusals:
        raise CommandFailed(f"{'; '.join(refusals)} (nothing was created)")
    created: list[str] = []
    for plan in plans:
        try:
            create_file_target(plan)
        except FileTargetRefused as exc:
            before = f" (created before it: {', '.join(created)})" if created else ""
            raise CommandFailed(f"{exc}{before}") from exc
        if plan.action is FileTargetAction.CREATE:
            created.append(plan.disk)
    rows = _rows(config.disks, plans)
    if args.json:
        print_json({"targets": [row.to_json() for row in rows]})
        return 0
    print_table(
        ["DISK", "TARGET", "SIZE", "RESULT"],
        [
            [
                row.disk,
                str(row.path) if row.path is not None else f"scsi_uuid {row.scsi_uuid}",
                human_bytes(row.size_bytes),
                _RESULT_TEXT[row.action],
            ]
            for row in rows
        ],
    )
    return 0


@dataclass(frozen=True, slots=True)
class _Row:
    """One configured disk's target and what became of it."""

    disk: str
    path: Path | None
    scsi_uuid: str | None
    size_bytes: int | None
    action: FileTargetAction

    def to_json(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "path": None if self.path is None else str(self.path),
            "scsi_uuid": self.scsi_uuid,
            "size_bytes": self.size_bytes,
            "result": self.action.value,
        }


def _rows(disks: Sequence[DiskConfig], plans: Sequence[FileTargetPlan]) -> list[_Row]:
    """Every disk in the config's order: those named by path as planned, the others by SCSI id."""
    by_disk = {plan.disk: plan for plan in plans}
    rows = []
    for disk in disks:
        plan = by_disk.get(disk.id)
        if plan is None:
            rows.append(_Row(disk.id, None, disk.scsi_uuid, None, FileTargetAction.BLOCK_DEVICE))
        else:
            rows.append(_Row(disk.id, plan.path, None, plan.size_bytes, plan.action))
    return rows
