"""`mtagent status --config F [--json]`: replication progress, lag (RPO) and recovery window of
every disk, and whether the agent is running.

Exit codes (docs/cli.md): 0 the agent serves and every disk is `ok`; 3 the agent is not serving
(not running, or not ready); 4 it serves but a disk is not `ok`; 1 and 2 as every command.
"""

from __future__ import annotations

import argparse

from agent.commands.json_output import print_json
from agent.commands.table import add_config_argument, print_table
from agent.config import load_config
from agent.reports.agent_liveness import AgentLiveness, agent_liveness
from agent.reports.disk_report import (
    DiskReport,
    RecoveryWindow,
    disk_reports,
    recovery_windows,
)
from agent.reports.sources import require_retention_dir, require_state_store
from agent.units import human_bytes, human_duration
from protocol.documents import DiskState

EXIT_NOT_SERVING = 3
EXIT_DISK_NOT_OK = 4


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="replication progress per disk: last batch, lag (RPO), undo kept, recovery "
        "window, resync progress",
        description="Show per disk the last acknowledged batch, the lag behind the source "
        "(RPO), the undo data kept on the retention drive, how far back the disk can be "
        "restored (WINDOW: from its oldest to its newest recovery point) and how far a resync "
        "has come, then whether the agent is running (its lock in the state dir and its "
        "/healthz on metrics_listen). Exits 0 when the agent is ready and every disk is ok, 3 "
        "when the agent is not running or not ready, 4 when a disk is not ok.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    require_state_store(config)
    require_retention_dir(config)
    reports = disk_reports(config)
    windows = recovery_windows(config)
    liveness = agent_liveness(config)
    if args.json:
        disks = [{**r.to_json(), **windows[r.id].to_json()} for r in reports]
        print_json({"agent": liveness.to_json(), "disks": disks})
        return exit_code(liveness, reports)
    print_table(
        ["DISK", "GROUP", "STATE", "LAST SEQ", "RPO", "UNDO", "WINDOW", "RESYNC"],
        [
            [
                r.id,
                r.group,
                r.state,
                str(r.last_seq),
                "-"
                if r.state == DiskState.FAILED_OVER
                else human_duration(r.rpo_seconds, days=False),
                human_bytes(r.undo_bytes),
                window_column(windows[r.id]),
                resync_column(r),
            ]
            for r in reports
        ],
    )
    print(f"agent: {liveness.message}")
    return exit_code(liveness, reports)


def exit_code(liveness: AgentLiveness, reports: list[DiskReport]) -> int:
    """0 when the agent serves and every disk is `ok`; EXIT_NOT_SERVING when the agent is not
    running or not ready (whatever the disks); EXIT_DISK_NOT_OK otherwise."""
    if not liveness.serving:
        return EXIT_NOT_SERVING
    if any(r.state != DiskState.OK for r in reports):
        return EXIT_DISK_NOT_OK
    return 0


def window_column(window: RecoveryWindow) -> str:
    """How far back the disk can be restored, as an age ('23h58m'; '0s' with a single point),
    '-' when it has no recovery point."""
    if window.window_seconds is None:
        return "-"
    return human_duration(window.window_seconds, days=False)


def resync_column(report: DiskReport) -> str:
    """'42% of 2.0 GiB' while resyncing ('1.0 GiB done' when the size is not known), '-'
    otherwise."""
    if report.state != DiskState.RESYNCING:
        return "-"
    if report.resync_progress is None or report.size_bytes is None:
        return f"{human_bytes(report.resync_offset)} done"
    # Rounded down: 100% only once the resync reached the end.
    return f"{int(report.resync_progress * 100)}% of {human_bytes(report.size_bytes)}"
