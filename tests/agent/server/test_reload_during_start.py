"""A SIGHUP while the agent starts (a `systemctl reload` or `kill -HUP` racing its start) neither
kills it nor is lost: the agent becomes ready, applies one reload for all of them before it
serves, and serves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from tests.support.agent_harness import AgentProcess, free_port
from tests.support.batches import resync_batch
from tests.support.waiting import wait_until

MiB = 1 << 20


def writer_once_read(fifo: Path) -> int | None:
    """A write end of `fifo` once a reader has opened it (the agent reading its configuration),
    else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads it yet
        return None


def sighup_pending(pid: int) -> bool:
    """Whether a SIGHUP sent to `pid` is not delivered yet (a dead process has none)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, mask = line.partition(":")
            if name in ("SigPnd", "ShdPnd") and int(mask, 16) & (1 << (signal.SIGHUP - 1)):
                return True
    return False


def test_sighups_during_the_start_are_one_reload_once_the_agent_can_reload(
    tmp_path: Path,
) -> None:
    agent = AgentProcess.create(tmp_path, {"d0": 4 * MiB})
    # Fixed ports: the harness rewrites the configuration after a start on port 0.
    agent.port, agent.metrics_port = free_port(), free_port()
    agent.write_config()
    at_start = agent.config_path.read_text()  # no [[senders]]: everything open
    agent.senders = [{"name": "sender", "groups": ["g1"], "role": "admin"}]
    agent.write_config()
    reloaded = tmp_path / "reloaded.toml"
    reloaded.write_text(agent.config_path.read_text())
    # The start waits on its configuration, a FIFO the test feeds when it chooses: SIGHUP then
    # reaches the agent past its first line and before its event loop runs.
    agent.config_path.unlink()
    os.mkfifo(agent.config_path)
    log_start = agent.spawn()
    assert agent.process is not None
    try:
        writer = wait_until(
            lambda: writer_once_read(agent.config_path),
            timeout=30,
            what=lambda: f"the agent to read its configuration:\n{agent.log()}",
        )
        for _ in range(3):
            agent.process.send_signal(signal.SIGHUP)
        process = agent.process
        wait_until(
            lambda: process.poll() is not None or not sighup_pending(process.pid),
            timeout=10,
            what="the SIGHUPs to be delivered",
        )
        assert process.poll() is None, f"the agent died of SIGHUP:\n{agent.log()}"
        os.write(writer, at_start.encode())
        # Changed during the start: the reload reads the regular file that takes the FIFO's place
        # before the agent sees the end of what it reads.
        os.replace(reloaded, agent.config_path)
        os.close(writer)

        agent.wait_ready(log_start)

        assert agent.metric("mtagent_config_reloads_total", result="applied") == 1
        assert agent.metric("mtagent_authorization_open") == 0
        body = resync_batch("d0", 1, [(0, b"h" * 4096)])
        status, answer = asyncio.run(agent.put_batch("d0", 1, body))
        assert status == 200, answer
    finally:
        agent.stop()
