"""Killed with SIGKILL while pruning, while exporting a recovery point and while rolling back in
place: start-up finds a consistent journal, `mtagent check` passes, and recovery is exact."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.replication.state import StateStore
from protocol.documents import DiskState
from tests.support.agent_harness import REPO, AgentProcess
from tests.support.batches import batch
from tests.support.retention_scenario import (
    KiB,
    MiB,
    SourceDisk,
    send,
)
from tests.support.waiting import wait_until


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new Python process (PYTHONPATH: the repository)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )


async def replicated_agent(
    tmp_path: Path, size: int, batches: int, seed: int
) -> tuple[AgentProcess, SourceDisk]:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": size})
    agent.retention_options = {"segment_bytes": "64KiB"}
    agent.write_config()
    agent.start()
    source = SourceDisk("d0", size)
    rng = random.Random(seed)
    chunk = min(size, 4 * MiB)
    first = [(offset, rng.randbytes(chunk)) for offset in range(0, min(size, 32 * MiB), chunk)]
    await send(agent, source, first, flags=("resync", "resync_done"))
    for _ in range(batches):
        offset = rng.randrange(0, 2 * MiB - 32 * KiB, 512)
        await send(agent, source, [(offset, rng.randbytes(32 * KiB))])
    return agent, source


def check_passes(agent: AgentProcess) -> None:
    code, out, _ = agent.cli("check")
    assert code == 0, out
    assert "no problem" in out


async def test_sigkill_in_the_middle_of_pruning_leaves_a_consistent_journal(
    tmp_path: Path,
) -> None:
    agent, source = await replicated_agent(tmp_path, 2 * MiB, batches=20, seed=1)
    agent.stop()
    journal = agent.workdir / "retention" / "d0"
    segments = sorted(journal.glob("seg-*.undo"))
    assert len(segments) >= 6
    died = python(
        """
        import os, signal, sys
        from pathlib import Path
        from blockio.journal.undo_journal import UndoJournal

        journal = UndoJournal.open(Path(sys.argv[1]), "d0", segment_bytes=64 * 1024)
        unlink, deleted = os.unlink, []

        def unlink_then_die(path, *args, **kwargs):
            unlink(path, *args, **kwargs)
            deleted.append(path)
            if len(deleted) == 3:
                os.kill(os.getpid(), signal.SIGKILL)

        os.unlink = unlink_then_die
        journal.prune([s.number for s in journal.summaries()[:-2]])
        """,
        str(journal),
    )
    assert died.returncode == -9, died.stderr
    left = sorted(journal.glob("seg-*.undo"))
    assert left == segments[3:]

    check_passes(agent)
    agent.start()
    try:
        assert "DAMAGED" not in agent.log()
        points = await agent.points()
        seqs = [p["disks"]["d0"] for p in points]
        assert seqs == list(range(seqs[0], source.last_seq + 1)) and seqs[0] > 1
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{seqs[0]}", "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "out" / "d0.img").read_bytes() == source.at(seqs[0])
        await send(agent, source, [(0, os.urandom(4 * KiB))])
    finally:
        agent.stop()


async def test_sigkill_in_the_middle_of_an_export_leaves_the_agent_and_journal_whole(
    tmp_path: Path,
) -> None:
    agent, source = await replicated_agent(tmp_path, 64 * MiB, batches=6, seed=2)
    out = tmp_path / "out"
    try:
        point = agent.cli_points()[2]["id"]
        export = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "recover", "--config", str(agent.config_path),
                "--group", "g1", "--point", point, "--output", str(out),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        partial = out / "d0.img.partial"
        # Polled often: the export is to be killed as soon as its copy begins.
        wait_until(
            lambda: partial.exists() or export.poll() is not None,
            timeout=30,
            interval=0.001,
            what="the export to begin its copy",
        )
        export.kill()
        export.wait()
        assert partial.exists() and not (out / "d0.img").exists()

        # The dead export's hold on the journal is gone: a failing batch is rolled back (its
        # records truncated) and answered at once, and replication goes on.
        seq = source.last_seq + 1
        bad = bytearray(batch("d0", seq, [(0, os.urandom(64 * KiB))], compress=False))
        bad[-200] ^= 0x01
        status, _ = await asyncio.wait_for(agent.put_batch("d0", seq, bytes(bad)), timeout=10)
        assert status in (400, 422)
        await send(agent, source, [(MiB, os.urandom(64 * KiB))])
        agent.kill()
        agent.start()
        check_passes(agent)
        code, _, err = agent.cli(
            "recover", "--group", "g1", "--point", point,
            "--output", str(tmp_path / "again"),
        )  # fmt: skip
        assert code == 0, err
        seq = int(point.split("@")[1])
        assert (tmp_path / "again" / "d0.img").read_bytes() == source.at(seq)
    finally:
        agent.stop()


async def test_an_in_place_recovery_cut_off_is_finished_by_running_it_again(
    tmp_path: Path,
) -> None:
    agent, source = await replicated_agent(tmp_path, 2 * MiB, batches=8, seed=3)
    agent.stop()
    died = python(
        """
        import os, signal, sys
        from agent.commands.cli import main

        pwrite, written = os.pwrite, []

        def pwrite_then_die(fd, data, offset):
            written.append(offset)
            if len(written) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return pwrite(fd, data, offset)

        os.pwrite = pwrite_then_die
        main(["recover", "--config", sys.argv[1], "--group", "g1", "--point", "d0@2",
              "--in-place"])
        """,
        str(agent.config_path),
    )
    assert died.returncode == -9, died.stderr
    store = StateStore.open_readonly(agent.workdir / "state")
    assert store.progress("d0").state == DiskState.RECOVERED  # recorded before any byte was written
    store.close()
    assert agent.target_bytes("d0") != source.at(2)

    agent.start()
    try:
        seq = source.last_seq + 1
        status, answer = await agent.put_batch("d0", seq, batch("d0", seq, [(0, bytes(512))]))
        assert status == 409 and answer["error"]["code"] == "RESYNC_REQUIRED"
        code, _, err = agent.cli(
            "recover", "--group", "g1", "--point", "d0@2",
            "--in-place",
        )  # fmt: skip
        assert code == 1 and "stop the agent first" in err
    finally:
        agent.stop()
    code, _, err = agent.cli(
        "recover", "--group", "g1", "--point", "d0@4",
        "--in-place",
    )  # fmt: skip
    assert code == 1 and "--point d0@2 to finish" in err
    code, _, err = agent.cli(
        "recover", "--group", "g1", "--point", "d0@2",
        "--in-place",
    )  # fmt: skip
    assert code == 0, err
    assert agent.target_bytes("d0") == source.at(2)
    check_passes(agent)
