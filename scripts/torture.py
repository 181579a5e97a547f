#!/usr/bin/env python3
"""mtagent torture run: power cuts, fuzzed decoder inputs and mangled live batches, in one
process tree; one JSON summary on the last line of stdout (progress on stderr), exit 1 on any
failure.

    scripts/torture.py [--long] [--seed N] [--only power|kill|net|disk|decoder|live]
                       [--keep DIR] [--cuts N] [--states N] [--kills N] [--pushes N]
                       [--disk-faults N] [--decoder-inputs N] [--live-batches N]

power     a real agent whose state directory, retention and target live on a power-loss file
          system (tests/support/powerfs.py), under the strict POSIX model (half of the pending
          pages kept) and the ext4-like lenient one (only what was synced). End to end: the
          power is cut at seeded moments and the agent restarted on what survived. Derived
          states, many more: one run, never cut, imaged at seeded operations (during batches,
          after a 200, pruning, resyncs, an in-place recovery or a failover), each image
          checked by the agent's start-up recovery in this process
          (tests/support/crash_states.py). Either way the disk must be at an
          acknowledged batch boundary equal to the model, or say resync_required; a recovery
          point restores exactly. Each start after an end-to-end cut is imaged too: crash
          states during start-up recovery, checked the same way.
kill      the same scenario with SIGKILL instead of a power cut: the agent is stopped at a
          seeded file operation (during a batch, after a 200, pruning, start-up recovery, a
          resync), every write it made kept, and killed; the same checks.
net       `mtagent push` (full, then delta and resync) through a proxy that cuts connections
          after a random byte count in either direction, stalls or throttles them: every push
          finishes and the target equals the source.
disk      EIO and ENOSPC injected into the target or the retention of one disk at a seeded
          operation: the batch is refused with a documented code, the other disk goes on, and
          once the fault is cleared the disk takes batches again at an acknowledged boundary.
decoder   mangled batches (tests/support/fuzzing.py) fed to the decoder in random pieces:
          only its typed errors, each with a documented code.
live      invalid batches (mangled, or valid under a wrong seq) sent to a running agent: each
          refused with its documented code and status; target, last_seq and points unchanged.

The default budget is what the suite runs (tests/test_torture.py); --long is the issue's goals:
1000 crash states per model (1000 derived states and 50 end-to-end cuts), 500 kills, 150 pushes
(about 200 faults), 200 disk faults, 1,000,000 decoder inputs, 10,000 live batches. Needs FUSE
(/dev/fuse and fusermount3) for `power`, `kill` and `disk`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from tests.support.agent_harness import AgentProcess  # noqa: E402
from tests.support.batches import resync_batch  # noqa: E402
from tests.support.crash_states import crash_states  # noqa: E402
from tests.support.disk_faults import disk_faults  # noqa: E402
from tests.support.fuzzing import fuzz_decoder, fuzz_live, live_agent_files  # noqa: E402
from tests.support.netfaults import network_faults  # noqa: E402
from tests.support.power_scenario import power_cuts  # noqa: E402

BUDGETS = {
    "default": {
        "cuts": 1,
        "states": 40,
        "kills": 1,
        "pushes": 2,
        "disk": 6,
        "decoder": 5_000,
        "live": 150,
    },
    "long": {
        "cuts": 50,
        "states": 1_000,
        "kills": 500,
        "pushes": 150,
        "disk": 200,
        "decoder": 1_000_000,
        "live": 10_000,
    },
}
LIVE_DISK_BYTES = 1 << 20
POWER_CASES = (("strict", 0.5), ("lenient", 0.0))
# Crash images taken during each start of the agent after an end-to-end cut (start-up recovery).
IMAGES_PER_START = 4


def say(message: str) -> None:
    print(f"torture: {message}", file=sys.stderr, flush=True)


def power(base: Path, cuts: int, states: int, seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for i, (model, keep) in enumerate(POWER_CASES):
        say(f"power: {cuts} cuts end to end under the {model} model (keep {keep})")
        cut = asyncio.run(
            power_cuts(
                base / model,
                model=model,
                cuts=cuts,
                seed=seed + i,
                keep=keep,
                images_per_start=IMAGES_PER_START,
            )
        )
        say(f"power: {states} derived crash states under the {model} model (keep {keep})")
        derived = asyncio.run(
            crash_states(
                base / f"{model}-states", model=model, states=states, seed=seed + i, keep=keep
            )
        )
        results[model] = {
            "states_checked": cut.states_checked + cut.start_up_images + derived.states_checked,
            "failures": cut.failures + derived.failures,
            "end_to_end": dataclasses.asdict(cut),
            "derived": dataclasses.asdict(derived),
        }
    return results


def kill(base: Path, kills: int, seed: int) -> dict[str, Any]:
    say(f"kill: {kills} SIGKILLs")
    # Keeping every pending write makes the cut a SIGKILL at that operation.
    report = asyncio.run(power_cuts(base, model="strict", cuts=kills, seed=seed, keep=1.0))
    return dataclasses.asdict(report)


def net(base: Path, pushes: int, seed: int) -> dict[str, Any]:
    say(f"net: {pushes} pushes through a faulty proxy")
    return asyncio.run(network_faults(base, pushes, seed)).to_json()


def disk(base: Path, faults: int, seed: int) -> dict[str, Any]:
    say(f"disk: {faults} injected disk faults")
    return dataclasses.asdict(asyncio.run(disk_faults(base, faults, seed)))


def decoder(inputs: int, seed: int) -> dict[str, Any]:
    say(f"decoder: {inputs} mangled inputs")
    report = fuzz_decoder(inputs, seed)
    return {**report.to_json(), "failure_list": report.failures[:20]}


def live(base: Path, batches: int, seed: int) -> dict[str, Any]:
    say(f"live: {batches} invalid batches to a running agent")
    agent = AgentProcess.create(base / "agent", live_agent_files(base, LIVE_DISK_BYTES))
    agent.start()
    try:
        first = resync_batch("d0", 1, [(0, bytes(range(256)) * 16)])
        status, answer = asyncio.run(agent.put_batch("d0", 1, first))
        if status != 200:
            return {"inputs": 0, "failures": 1, "failure_list": [f"batch 1: {status} {answer}"]}
        report = asyncio.run(fuzz_live(agent, batches, seed, LIVE_DISK_BYTES))
    finally:
        agent.stop()
    return {**report.to_json(), "failure_list": report.failures[:20]}


def failures_of(summary: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for model, report in summary.get("power", {}).items():
        found += [f"power {model}: {failure}" for failure in report["failures"]]
    for section in ("kill", "net", "disk"):
        found += [f"{section}: {f}" for f in summary.get(section, {}).get("failures", [])]
    for section in ("decoder", "live"):
        if section in summary:
            found += [f"{section}: {failure}" for failure in summary[section]["failure_list"]]
            if summary[section]["failures"] and not summary[section]["failure_list"]:
                found.append(f"{section}: {summary[section]['failures']} failures")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="the full counts (hours)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--only", choices=("power", "kill", "net", "disk", "decoder", "live"), action="append"
    )
    parser.add_argument("--keep", type=Path, help="work in DIR and leave it (default: a temp dir)")
    parser.add_argument("--cuts", type=int, help="power cuts per model (overrides the budget)")
    parser.add_argument(
        "--states", type=int, help="derived crash states per model (overrides the budget)"
    )
    parser.add_argument("--kills", type=int, help="SIGKILLs (overrides the budget)")
    parser.add_argument("--pushes", type=int, help="pushes through faults (overrides the budget)")
    parser.add_argument("--disk-faults", type=int, help="disk faults (overrides the budget)")
    parser.add_argument("--decoder-inputs", type=int, help="decoder inputs (overrides the budget)")
    parser.add_argument("--live-batches", type=int, help="live batches (overrides the budget)")
    args = parser.parse_args(argv)
    budget = dict(BUDGETS["long" if args.long else "default"])
    for key, value in (
        ("cuts", args.cuts),
        ("states", args.states),
        ("kills", args.kills),
        ("pushes", args.pushes),
        ("disk", args.disk_faults),
        ("decoder", args.decoder_inputs),
        ("live", args.live_batches),
    ):
        if value is not None:
            budget[key] = value
    sections = args.only or ["power", "kill", "net", "disk", "decoder", "live"]
    started = time.monotonic()
    summary: dict[str, Any] = {"long": args.long, "seed": args.seed, "budget": budget}
    with tempfile.TemporaryDirectory(prefix="mtagent-torture-") as scratch:
        base = args.keep or Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        if "power" in sections:
            summary["power"] = power(base / "power", budget["cuts"], budget["states"], args.seed)
        if "kill" in sections:
            summary["kill"] = kill(base / "kill", budget["kills"], args.seed + 100)
        if "net" in sections:
            summary["net"] = net(base / "net", budget["pushes"], args.seed)
        if "disk" in sections:
            summary["disk"] = disk(base / "disk", budget["disk"], args.seed)
        if "decoder" in sections:
            summary["decoder"] = decoder(budget["decoder"], args.seed)
        if "live" in sections:
            summary["live"] = live(base / "live", budget["live"], args.seed)
    failures = failures_of(summary)
    summary["failures"] = len(failures)
    summary["seconds"] = round(time.monotonic() - started, 1)
    for failure in failures:
        say(f"FAILURE: {failure}")
    print(json.dumps(summary, sort_keys=True))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
