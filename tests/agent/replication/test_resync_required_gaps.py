"""A gap the agent detects between what it acknowledged and what a target holds makes the disk
`resync_required`, for real: a batch whose rollback meets a damaged undo record, a batch cut off by
a crash whose undo records are damaged, a state.db that went back behind the undo journal. Each
time the state survives a restart, the reason is in the Disk JSON and `mtagent disks`, a warning
is logged, `mtagent_resync_required_total` counts it, ordinary batches get 409 RESYNC_REQUIRED,
and `mtagent push --mode resync` makes the disk `ok` again with the target equal to the source."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data
from tests.support.agent_harness import AgentProcess, run_mtagent, until_on_target
from tests.support.batches import batch, resync_batch

KiB = 1 << 10
MiB = 1 << 20
DISK = 16 * MiB
FRAME = 4 * MiB
CAUSES = ("rollback_failed", "crash_recovery_failed", "state_behind_journal")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent whose disk d0 holds random data (so undo records carry it, uncompressed) and is
    `ok` after batch 1."""
    target = tmp_path / "d0.img"
    target.write_bytes(random.Random(5).randbytes(DISK))
    agent = AgentProcess.create(tmp_path / "agent", {"d0": target})
    agent.start()
    status, answer = asyncio.run(
        agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"1" * 4096)]))
    )
    assert status == 200 and answer["state"] == "ok", answer
    yield agent
    agent.stop()


def gap_counts(agent: AgentProcess) -> dict[str, float]:
    text = agent.metrics_text()
    counts = {}
    for cause in CAUSES:
        found = re.search(
            rf'^mtagent_resync_required_total\{{disk="d0",reason="{cause}"\}} (\S+)$', text, re.M
        )
        assert found, f"no mtagent_resync_required_total for {cause}"
        counts[cause] = float(found.group(1))
    return counts


def big_batch(seq: int) -> tuple[list[bytes], list[bytes], BatchEncoder]:
    """Batch `seq` writing 4 random MiB at 0, 4, 8 and 12 MiB: two sync groups of the agent's
    8 MiB. Returns the data of each frame, BEGIN and the DATA frames, and the encoder (for more)."""
    rng = random.Random(seq)
    data = [rng.randbytes(FRAME) for _ in range(4)]
    encoder = BatchEncoder(seq, compress=False)
    frames = [encoder.encode(Begin("d0", seq, 2_000_000_000, frozenset()))]
    frames += [encoder.encode(Data(i * FRAME, chunk)) for i, chunk in enumerate(data)]
    return data, frames, encoder


def damage_first_undo_record(agent: AgentProcess, seq: int) -> None:
    """Flip a byte in the old data of the first undo record of batch `seq` (its first sync
    group, synced before a later group: no reader may take it for an unsynced tail)."""
    from blockio.journal.reader import scan_headers
    from blockio.journal.records import RecordKind

    for segment in sorted((agent.workdir / "retention" / "d0").glob("seg-*.undo")):
        with open(segment, "rb") as f:
            headers, _ = scan_headers(f, segment)
        for header in headers:
            if header.seq == seq and header.kind == RecordKind.UNDO:
                with open(segment, "r+b") as f:
                    f.seek(header.payload_position + 1000)
                    byte = f.read(1)[0]
                    f.seek(header.payload_position + 1000)
                    f.write(bytes([byte ^ 0xFF]))
                return
    pytest.fail(f"no undo record of batch {seq}")


def resync(agent: AgentProcess, source: Path) -> None:
    """`mtagent push --mode resync` of `source` to d0, as an operator runs it."""
    result = run_mtagent(
        "push", "--server", agent.url, "--cert", agent.cert, "--key", agent.key,
        "--ca", agent.ca, "--disk", "d0", "--source", source, "--mode", "resync", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


async def assert_resync_required(agent: AgentProcess, cause: str, reason: str) -> dict[str, Any]:
    """The disk is resync_required for `reason` (a regex) everywhere an operator looks, and
    refuses an ordinary batch with 409 without touching the target. Returns the Disk JSON."""
    described = await agent.disk()
    assert described["state"] == "resync_required" and described["resync"] is True
    assert re.search(reason, described["resync_reason"]), described["resync_reason"]
    assert re.search(rf"WARNING .*disk d0: RESYNC REQUIRED \({cause}\): {reason}", agent.log()), (
        agent.log()
    )
    assert gap_counts(agent) == {c: 1.0 if c == cause else 0.0 for c in CAUSES}
    listed = run_mtagent("disks", "--config", agent.config_path, "--json")
    assert listed.returncode == 0, listed.stderr
    [report] = json.loads(listed.stdout)["disks"]
    assert report["state"] == "resync_required"
    assert re.search(reason, report["reason"])

    before = agent.target_bytes("d0")
    seq = described["last_seq"] + 1
    status, answer = await agent.put_batch("d0", seq, batch("d0", seq, [(0, b"n" * 4096)]))
    assert (status, answer["error"]["code"]) == (409, "RESYNC_REQUIRED"), answer
    assert agent.target_bytes("d0") == before
    return described


async def assert_resync_closes_the_gap(agent: AgentProcess, tmp_path: Path) -> None:
    """A resync makes the target equal to its source and the disk `ok`, and then ordinary
    batches apply again."""
    source = tmp_path / "source.img"
    image = bytearray(agent.target_bytes("d0"))
    image[0 : 6 * MiB] = random.Random(99).randbytes(6 * MiB)
    source.write_bytes(image)
    resync(agent, source)
    assert agent.target_bytes("d0") == image
    described = await agent.disk()
    assert described["state"] == "ok" and "resync_reason" not in described
    seq = described["last_seq"] + 1
    status, answer = await agent.put_batch("d0", seq, batch("d0", seq, [(MiB, b"after" * 1024)]))
    assert status == 200, answer
    assert agent.target_bytes("d0")[MiB : MiB + 5 * KiB] == b"after" * 1024


async def test_a_rollback_that_meets_a_damaged_undo_record_requires_a_resync(
    agent: AgentProcess, tmp_path: Path
) -> None:
    acknowledged = agent.target_bytes("d0")
    data, frames, encoder = big_batch(2)
    bad = bytearray(encoder.encode(Data(0, b"x" * 4096)))
    bad[-1] ^= 0xFF  # its payload digest no longer matches: the batch fails and is rolled back
    damaged = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame
        await damaged.wait()
        yield bytes(bad)

    sending = asyncio.create_task(agent.put_batch("d0", 2, body()))
    await until_on_target(
        agent.disks["d0"], 3 * FRAME, data[3][: 64 * KiB]
    )  # both groups are written
    damage_first_undo_record(agent, 2)
    damaged.set()
    status, answer = await sending
    assert (status, answer["error"]["code"]) == (422, "CHECKSUM_MISMATCH"), answer

    # The record of the first 4 MiB could not be read back: that part of batch 2 stayed.
    target = agent.target_bytes("d0")
    assert target[:FRAME] == data[0] and target[FRAME:] == acknowledged[FRAME:]
    reason = r"batch 2 cannot be rolled back: segment .*seg-00000001.undo at byte \d+: old data"
    described = await assert_resync_required(agent, "rollback_failed", reason)
    assert described["last_seq"] == 1

    agent.stop()
    agent.start()
    described = await agent.disk()
    assert described["state"] == "resync_required" and re.search(reason, described["resync_reason"])
    assert "DAMAGED" not in agent.log()  # the unusable records were dropped, not left behind
    await assert_resync_closes_the_gap(agent, tmp_path)


async def test_a_batch_cut_off_by_a_crash_with_damaged_undo_requires_a_resync(
    agent: AgentProcess, tmp_path: Path
) -> None:
    acknowledged = agent.target_bytes("d0")
    data, frames, _ = big_batch(2)

    async def body() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame
        await asyncio.sleep(60)  # silent until the agent is killed under it

    sending = asyncio.create_task(agent.put_batch("d0", 2, body()))
    await until_on_target(agent.disks["d0"], 3 * FRAME, data[3][: 64 * KiB])
    agent.kill()
    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the agent
        await sending
    damage_first_undo_record(agent, 2)
    agent.start()

    target = agent.target_bytes("d0")
    assert target[:FRAME] == data[0] and target[FRAME:] == acknowledged[FRAME:]
    reason = r"batch 2 cannot be rolled back: .*old data digest mismatch.*cut off by a crash"
    described = await assert_resync_required(agent, "crash_recovery_failed", reason)
    assert described["last_seq"] == 1
    await assert_resync_closes_the_gap(agent, tmp_path)


async def put_behind_a_backup(agent: AgentProcess, backup: Path) -> bytes:
    """Batches 2 and 3, a copy of the state directory into `backup`, batches 4 and 5; the agent
    stopped and its state directory removed. Returns the target's acknowledged bytes."""
    state_dir = agent.workdir / "state"
    for seq in (2, 3):
        status, _ = await agent.put_batch(
            "d0", seq, batch("d0", seq, [(seq * MiB, bytes([seq]) * 8192)])
        )
        assert status == 200
    agent.stop()
    shutil.copytree(state_dir, backup)
    agent.start()
    for seq in (4, 5):
        status, _ = await agent.put_batch(
            "d0", seq, batch("d0", seq, [(seq * MiB, bytes([seq]) * 8192)])
        )
        assert status == 200
    agent.stop()
    shutil.rmtree(state_dir)
    return agent.target_bytes("d0")


@pytest.mark.parametrize("state_db", ["restored from an older copy", "lost"])
async def test_a_state_db_behind_the_journal_requires_a_resync_and_rolls_nothing_back(
    agent: AgentProcess, tmp_path: Path, state_db: str
) -> None:
    state_dir = agent.workdir / "state"
    acknowledged = await put_behind_a_backup(agent, tmp_path / "backup")
    if state_db == "restored from an older copy":
        shutil.copytree(tmp_path / "backup", state_dir)
    agent.start()

    # Batches 4 and 5 are on the target; they are not rolled back from their undo records.
    assert agent.target_bytes("d0") == acknowledged
    known = 3 if state_db == "restored from an older copy" else 0
    reason = f"the undo journal committed batches up to 5 but state.db knows only up to {known}"
    described = await assert_resync_required(agent, "state_behind_journal", reason)
    assert described["last_seq"] == 5  # batch numbers go on after what the journal holds
    await assert_resync_closes_the_gap(agent, tmp_path)

    # The journal and the store agree again: a restart finds no gap and rolls nothing back.
    settled = agent.target_bytes("d0")
    agent.stop()
    agent.start()
    assert agent.target_bytes("d0") == settled
    assert (await agent.disk())["state"] == "ok"
    assert gap_counts(agent) == dict.fromkeys(CAUSES, 0.0)
    assert os.path.exists(state_dir / "state.db")


async def test_an_in_place_recovery_refuses_a_state_db_behind_the_journal(
    agent: AgentProcess, tmp_path: Path
) -> None:
    state_dir = agent.workdir / "state"
    acknowledged = await put_behind_a_backup(agent, tmp_path / "backup")
    shutil.copytree(tmp_path / "backup", state_dir)

    done = run_mtagent(
        "recover", "--config", agent.config_path, "--group", "g1", "--point", "latest",
        "--in-place",
    )  # fmt: skip

    assert done.returncode == 1
    assert "committed batches up to 5 but state.db knows only up to 3" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert agent.target_bytes("d0") == acknowledged  # batches 4 and 5 were not rolled back
