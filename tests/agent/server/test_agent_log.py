"""What a real `mtagent serve` logs of its life: one started line (version, config, ports), each
disk's state and its changes, ready, stopped; as native journal entries with their fields under
systemd (the test plays journald), as `key=value` lines elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.version import agent_version
from tests.support.agent_harness import AgentProcess, free_port
from tests.support.batches import resync_batch
from tests.support.journald import Entry, FakeJournald
from tests.support.waiting import wait_until

MiB = 1 << 20


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[FakeJournald]:
    with FakeJournald(tmp_path / "journal.socket") as journald:
        journald.collect()
        yield journald


@pytest.fixture
def journaled_agent(tmp_path: Path, journald: FakeJournald) -> Iterator[AgentProcess]:
    """An agent whose stderr is the journal: its log file stands for journald's stream."""
    agent = AgentProcess.create(tmp_path / "agent", {"d0": MiB})
    # Ports chosen here: the agent's ready line, where the harness learns them, goes to journald.
    agent.port, agent.metrics_port = free_port(), free_port()
    agent.write_config()
    agent.log_path.touch()
    agent.env = journald.environment(stderr=agent.log_path)
    agent.start()
    yield agent
    agent.stop()


def entry(journald: FakeJournald, **wanted: bytes) -> Entry:
    return wait_until(
        lambda: journald.find(**wanted),
        timeout=15,
        what=lambda: f"an entry with {wanted}; got {journald.entries}",
    )


def test_the_started_entry_names_version_config_and_ports(
    journaled_agent: AgentProcess, journald: FakeJournald
) -> None:
    started = entry(journald, VERSION=agent_version().encode())
    assert (
        started["MESSAGE"]
        == (
            f"started: mtagent {agent_version()}, config {journaled_agent.config_path}, "
            f"data port 127.0.0.1:{journaled_agent.port}, "
            f"metrics port 127.0.0.1:{journaled_agent.metrics_port}"
        ).encode()
    )
    assert started["CONFIG"] == str(journaled_agent.config_path).encode()
    assert started["LISTEN"] == f"127.0.0.1:{journaled_agent.port}".encode()
    assert started["METRICS_LISTEN"] == f"127.0.0.1:{journaled_agent.metrics_port}".encode()
    assert started["PRIORITY"] == b"6"
    assert started["SYSLOG_IDENTIFIER"] == b"mtagent"


def test_each_disks_state_is_journaled_then_ready(
    journaled_agent: AgentProcess, journald: FakeJournald
) -> None:
    first = entry(journald, DISK=b"d0", STATE=b"resync_required")
    assert first["MESSAGE"] == b"disk d0: state resync_required"
    assert "PREVIOUS" not in first  # the state the agent found, not a change
    ready = entry(journald, DISKS=b"1")
    assert ready["MESSAGE"].startswith(b"ready: 1 disks, data on https://127.0.0.1:")
    order = [journald.entries.index(e) for e in (started(journald), first, ready)]
    assert order == sorted(order)
    # Nothing went to the stream as well.
    assert journaled_agent.log() == ""


async def test_a_disk_that_completes_its_resync_is_journaled_ok_with_its_previous_state(
    journaled_agent: AgentProcess, journald: FakeJournald
) -> None:
    status, answer = await journaled_agent.put_batch(
        "d0", 1, resync_batch("d0", 1, [(0, b"\x01" * 4096)])
    )
    assert status == 200, answer
    change = entry(journald, DISK=b"d0", STATE=b"ok")
    assert change["MESSAGE"] == b"disk d0: state ok (was resync_required)"
    assert change["PREVIOUS"] == b"resync_required"
    assert change["LOGGER"] == b"agent.replication.replica"


def test_stopping_is_journaled(journaled_agent: AgentProcess, journald: FakeJournald) -> None:
    entry(journald, DISKS=b"1")
    assert journaled_agent.stop() == 0
    entry(journald, MESSAGE=b"stopped")


def test_outside_systemd_the_lines_end_with_their_fields(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": MiB})
    agent.start()
    try:
        log = agent.log()
    finally:
        agent.stop()
    lines = log.splitlines()
    started = next(line for line in lines if " mtagent: started: mtagent " in line)
    assert f" version={agent_version()} config={agent.config_path} " in started
    disk = next(line for line in lines if "disk d0: state" in line)
    assert disk.endswith(
        " INFO agent.replication.replica: disk d0: state resync_required"
        " disk=d0 state=resync_required"
    )


def started(journald: FakeJournald) -> Entry:
    return entry(journald, VERSION=agent_version().encode())
