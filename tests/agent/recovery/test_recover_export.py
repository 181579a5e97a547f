"""`mtagent recover --output` while the agent keeps replicating: the export is the disk as it
was at the point, whatever the batches applied during the copy wrote."""

from __future__ import annotations

import json
import os
import pty
import random
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.agent_harness import REPO, AgentProcess
from tests.support.retention_scenario import KiB, MiB, SourceDisk, send
from tests.support.waiting import wait_until

DISK = 16 * MiB


async def test_an_export_taken_while_batches_land_is_the_point_exactly(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK})
    agent.start()
    source = SourceDisk("d0", DISK)
    rng = random.Random(9)
    try:
        first = [(offset, rng.randbytes(4 * MiB)) for offset in range(0, DISK, 4 * MiB)]
        await send(agent, source, first, flags=("resync", "resync_done"))
        for _ in range(4):
            await send(agent, source, [(rng.randrange(0, DISK - MiB, 512), rng.randbytes(MiB))])
        # The newest point: everything the copy sees of later batches must be undone.
        point = source.last_seq

        export = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "recover", "--config", str(agent.config_path),
                "--group", "g1", "--point", f"d0@{point}", "--output", str(tmp_path / "out"),
                "--json",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        # Caught as its copy begins, the export waits while batches land all over the disk.
        partial = tmp_path / "out" / "d0.img.partial"
        wait_until(
            lambda: partial.exists() or export.poll() is not None,
            timeout=30,
            interval=0.001,
            what="the export to begin its copy",
        )
        export.send_signal(signal.SIGSTOP)
        try:
            for _ in range(4):
                writes = [
                    (rng.randrange(0, DISK - 256 * KiB, 512), rng.randbytes(256 * KiB))
                    for _ in range(6)
                ]
                await send(agent, source, writes)
        finally:
            export.send_signal(signal.SIGCONT)
        out, err = export.communicate(timeout=60)
        assert export.returncode == 0, err
        assert json.loads(out)["disks"][0]["undo_records"] >= 4 * 6
        assert (tmp_path / "out" / "d0.img").read_bytes() == source.at(point)
        assert agent.target_bytes("d0") == source.at(source.last_seq)

        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", f"d0@{point}", "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 1 and "d0.img exists" in err
        code, _, err = agent.cli(
            "recover", "--group", "g1",
            "--point", "latest-app", "--output", str(tmp_path / "none"),
        )  # fmt: skip
        assert code == 1 and "no application-consistent recovery point" in err

        shown = on_a_terminal(
            "recover", "--config", str(agent.config_path), "--group", "g1",
            "--point", f"d0@{point}", "--output", str(tmp_path / "tty"),
        )  # fmt: skip
        for phase in ("copy", "verify copy", "undo", "verify undo"):
            assert f"d0 {phase} [" in shown
        assert "100%" in shown
        assert (tmp_path / "tty" / "d0.img").read_bytes() == source.at(point)
    finally:
        agent.stop()


def on_a_terminal(*argv: str) -> str:
    """Run `mtagent ARGV` with its stderr on a pseudo-terminal; returns what it drew there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert process.wait(60) == 0, drawn.decode(errors="replace")
    return drawn.decode(errors="replace")
