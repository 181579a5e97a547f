"""`mtagent check --config F`: verify every segment and record of the retention journals."""

from __future__ import annotations

import argparse
from functools import partial

from agent.commands.json_output import print_json
from agent.commands.table import add_config_argument
from agent.config import load_config
from agent.errors import CommandFailed
from agent.replication.state import StateStore
from agent.reports.sources import require_retention_dir, require_state_store
from agent.units import human_bytes
from blockio.journal.check import JournalCheck, check_journal
from blockio.journal.segments import shared_lock


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="verify the undo journals on the retention drive",
        description="Walk every segment and record of every disk's undo journal: framing, "
        "digests, sequence continuity, commit records, and agreement with the state store. "
        "Prints each problem on a line and exits 1 if there is any. Safe beside a running "
        "agent (it holds each journal shared while it reads it: pruning waits).",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(run=run)


def _committed(store: StateStore, disk: str) -> tuple[int, int | None]:
    last_seq = store.progress(disk).last_seq
    rows = store.batch_rows(disk, last_seq, last_seq)
    return last_seq, rows[0].data_bytes if rows else None


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    require_state_store(config)
    require_retention_dir(config)
    store = StateStore.open_readonly(config.server.state_dir)
    checks: list[JournalCheck] = []
    try:
        for disk in config.disks:
            directory = config.retention.path / disk.id
            committed = partial(_committed, store, disk.id)
            try:
                with shared_lock(directory):
                    checks.append(check_journal(directory, disk.id, committed))
            except OSError as exc:
                raise CommandFailed(f"disk {disk.id}: cannot read {directory}: {exc}") from exc
    finally:
        store.close()
    problems = [f"{c.disk}: {p}" for c in checks for p in c.problems]
    if args.json:
        print_json(
            {
                "ok": not problems,
                "disks": [
                    {
                        "disk": c.disk,
                        "segments": c.segments,
                        "records": c.records,
                        "undo_bytes": c.undo_bytes,
                        "commits": c.commits,
                        "problems": [str(p) for p in c.problems],
                        "notes": list(c.notes),
                    }
                    for c in checks
                ],
            }
        )
    else:
        for check in checks:
            for note in check.notes:
                print(f"{check.disk}: note: {note}")
        for problem in problems:
            print(problem)
        segments = sum(c.segments for c in checks)
        records = sum(c.records for c in checks)
        undo = human_bytes(sum(c.undo_bytes for c in checks))
        verdict = f"{len(problems)} problems" if problems else "no problem"
        print(
            f"checked {len(checks)} journals: {segments} segments, {records} undo records "
            f"({undo}): {verdict}"
        )
    return 1 if problems else 0
