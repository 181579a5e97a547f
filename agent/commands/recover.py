"""`mtagent recover --config F --group G --point ID (--output DIR | --in-place)`: restore a
consistency group to a recovery point (see agent/recovery/restore.py)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from agent.commands.json_output import print_json
from agent.commands.progress import ProgressBar
from agent.commands.table import add_config_argument
from agent.config import load_config
from agent.recovery.restore import (
    RestoreReport,
    export_point,
    export_to_devices,
    restore_in_place,
)
from agent.units import human_bytes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "recover",
        help="restore a consistency group to a recovery point",
        description="Restore the disks of a consistency group as they were at a recovery point. "
        "--output writes one <disk-id>.img per disk into a directory and leaves the targets "
        "alone (a test failover: replication goes on meanwhile). --in-place rolls the targets "
        "back (the agent must be stopped); the disks are then 'recovered' and take batches "
        "again only after a resync. Every byte written is read back and verified.",
    )
    add_config_argument(parser)
    parser.add_argument("--group", required=True, help="the consistency group")
    add_point_argument(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--output",
        action="append",
        metavar="DIR | DISK=DEVICE",
        help="write <disk-id>.img files into DIR; or, given once per disk of the point, write "
        "each disk onto a block device (refused when it is mounted or in use, or smaller)",
    )
    where.add_argument("--in-place", action="store_true", help="roll the targets themselves back")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=functools.partial(run, parser))


def add_point_argument(parser: argparse.ArgumentParser) -> None:
    """`--point`, as `recover` and `failover` take it."""
    parser.add_argument(
        "--point",
        required=True,
        help="a point id (mtagent points lists them), 'latest' (the newest point of every disk "
        "of the group), 'latest-app', 'latest-crash', or 'time:2026-11-26T10:00:00Z' (the "
        "newest point at or before that time)",
    )


class PhaseBars:
    """One progress bar per disk and phase, drawn in turn on a terminal."""

    def __init__(self) -> None:
        self._key: tuple[str, str] | None = None
        self._bar: ProgressBar | None = None

    def __call__(self, disk: str, phase: str, done: int, total: int) -> None:
        if self._key != (disk, phase):
            self.close()
            self._key = (disk, phase)
            self._bar = ProgressBar(sys.stderr, label=f"{disk} {phase}")
        assert self._bar is not None
        self._bar(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    devices = None
    if args.output is not None:
        try:
            devices = output_devices(args.output)
        except ValueError as exc:
            parser.error(str(exc))  # exits 2
    config = load_config(args.config)
    bars = PhaseBars() if sys.stderr.isatty() else None
    progress = bars if bars is not None else (lambda disk, phase, done, total: None)
    try:
        if args.in_place:
            report = restore_in_place(config, args.group, args.point, progress)
        elif devices is not None:
            report = export_to_devices(config, args.group, args.point, devices, progress)
        else:
            report = export_point(config, args.group, args.point, Path(args.output[0]), progress)
    finally:
        if bars is not None:
            bars.close()
    if args.json:
        print_json(report.to_json())
    else:
        print_report(report)
    return 0


def output_devices(outputs: list[str]) -> dict[str, Path] | None:
    """The devices of `--output DISK=DEVICE ...` by disk; None for one `--output DIR`. Raises
    ValueError when the two forms are mixed, a directory is given twice, or a disk twice."""
    pairs = [value.partition("=") for value in outputs]
    if all(not sep for _, sep, _ in pairs):
        if len(outputs) > 1:
            raise ValueError("--output DIR is given once (or --output DISK=DEVICE per disk)")
        return None
    if not all(sep and disk and device for disk, sep, device in pairs):
        raise ValueError("--output is either one DIR or DISK=DEVICE for each disk, not both")
    devices = {disk: Path(device) for disk, _, device in pairs}
    if len(devices) != len(pairs):
        raise ValueError("--output names a disk twice")
    return devices


def print_report(report: RestoreReport) -> None:
    point = report.point
    print(f"group {report.group}: point {point.id} ({point.kind}, {point.name})")
    for disk in report.disks:
        undo = f"{disk.records} undo records read, {human_bytes(disk.undo_bytes)} restored"
        if report.mode in ("output", "devices"):
            print(f"  {disk.disk}: wrote {disk.output} as of batch {disk.seq} ({undo}); verified")
        else:
            print(f"  {disk.disk}: rolled back to batch {disk.seq} ({undo}); verified")
    if report.mode == "in_place":
        disks = ", ".join(d.disk for d in report.disks)
        print(f"  {disks}: now 'recovered': replication must resync them before new batches")
