"""Disk faults under a real agent: EIO and ENOSPC injected by the power-loss file system
(`tests.support.powerfs`) into the target or the retention of disk d0, at a seeded operation,
while batches go to d0 and d1. Each failed batch must be refused with a documented code and
status; d1 must go on; once the fault is cleared, d0 must take the batch again and hold exactly
the model at its `last_seq` (an acknowledged boundary: nothing half-written), or say
`resync_required`.

Used by scripts/torture.py (`disk`).
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import ERRORS_BY_CODE
from tests.support.agent_harness import AgentProcess
from tests.support.batches import Write, batch, resync_batch
from tests.support.powerfs import PowerFS
from tests.support.retention_scenario import MiB, SourceDisk, random_writes
from tests.support.waiting import wait_until_async

DISK_BYTES = 4 * MiB
PLACES = ("/targets/d0.img", "/retention/d0")
ERRORS = (errno.EIO, errno.ENOSPC)


@dataclass
class DiskFaultReport:
    faults: int = 0
    batches_refused: dict[str, int] = field(default_factory=dict)
    other_disk_batches: int = 0
    resyncs_required: int = 0
    failures: list[str] = field(default_factory=list)


async def disk_faults(base: Path, faults: int, seed: int) -> DiskFaultReport:
    """Inject `faults` faults, one at a time, each cleared before the next."""
    rng = random.Random(seed)
    report = DiskFaultReport()
    with PowerFS.mounted(base / "fs", model="lenient") as fs:
        root = fs.mountpoint
        (root / "targets").mkdir()
        targets: dict[str, int | Path] = {}
        for disk in ("d0", "d1"):
            (root / "targets" / f"{disk}.img").write_bytes(bytes(DISK_BYTES))
            targets[disk] = root / "targets" / f"{disk}.img"
        agent = AgentProcess.create(base / "agent", targets, retention_path=root / "retention")
        agent.state_dir = root / "state"
        agent.write_config()
        agent.start()
        sources = {disk: SourceDisk(disk, DISK_BYTES) for disk in ("d0", "d1")}
        try:
            for disk, source in sources.items():
                first: list[Write] = [(0, rng.randbytes(4096))]
                status, answer = await agent.put_batch(disk, 1, resync_batch(disk, 1, first))
                assert status == 200, answer
                source.history.append(first)
            while report.faults < faults and not report.failures:
                await _one_fault(agent, fs, sources, rng, report)
        finally:
            fs.clear()
            agent.stop()
    return report


async def _send(
    agent: AgentProcess, source: SourceDisk, writes: list[Write]
) -> tuple[int, dict[str, Any]]:
    seq = source.last_seq + 1
    status, answer = await agent.put_batch(source.id, seq, batch(source.id, seq, writes))
    if status == 200:
        source.history.append(writes)
    return status, answer


async def _one_fault(
    agent: AgentProcess,
    fs: PowerFS,
    sources: dict[str, SourceDisk],
    rng: random.Random,
    report: DiskFaultReport,
) -> None:
    place, error = rng.choice(PLACES), rng.choice(ERRORS)
    fs.fail(place, error, after=rng.randint(0, 30))
    report.faults += 1
    for _ in range(40):
        writes = random_writes(rng, DISK_BYTES)
        status, answer = await _send(agent, sources["d0"], writes)
        if status != 200:
            code = answer.get("error", {}).get("code", "")
            known = ERRORS_BY_CODE.get(code)
            if known is None or known.status != status:
                report.failures.append(f"fault {error} on {place}: {status} {answer}")
                return
            what = f"{errno.errorcode[error]} on {place.split('/')[1]}: {code}"
            report.batches_refused[what] = report.batches_refused.get(what, 0) + 1
            break
        status, answer = await _send(agent, sources["d1"], random_writes(rng, DISK_BYTES))
        if status != 200:
            report.failures.append(f"d1 refused a batch while d0 failed: {status} {answer}")
            return
        report.other_disk_batches += 1
    fs.clear()
    source = sources["d0"]

    answers: list[tuple[int, dict[str, Any]]] = []

    async def takes_a_batch() -> bool:
        answers.append(await _send(agent, source, random_writes(rng, DISK_BYTES)))
        return answers[-1][0] == 200 or (await agent.disk("d0"))["state"] == "resync_required"

    await wait_until_async(
        takes_a_batch, timeout=30, interval=0.2, what=lambda: f"d0 to take batches: {answers[-1]}"
    )
    described = await agent.disk("d0")
    if described["state"] == "resync_required":
        report.resyncs_required += 1
        image = source.at(source.last_seq)
        seq = described["last_seq"] + 1
        status, answer = await agent.put_batch("d0", seq, resync_batch("d0", seq, [(0, image)]))
        if status != 200:
            report.failures.append(f"resync after a fault answered {status}: {answer}")
            return
        # The resync writes the whole disk: the model at its seq is the image, whatever came before.
        last = described["last_seq"]
        source.history = [*(source.history + [[]] * last)[:last], [(0, image)]]
    elif described["last_seq"] != source.last_seq:
        report.failures.append(
            f"last_seq {described['last_seq']}, the sender saw {source.last_seq}"
        )
        return
    if agent.target_bytes("d0") != source.at(source.last_seq):
        report.failures.append(f"d0 differs from the model at batch {source.last_seq}")
