"""Failures an operator can cause end in one line on stderr and exit code 1, never a
traceback: a port in use, a state_dir that is a file, a missing TLS file of `push`, an
unreadable configuration."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_harness import AgentProcess, run_mtagent


@pytest.fixture
def agent(tmp_path: Path) -> AgentProcess:
    """An agent's files (not started)."""
    return AgentProcess.create(tmp_path / "agent", {"d0": 1 << 20})


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def one_line(done: object) -> str:
    """The single stderr line of a run that exited 1."""
    assert done.returncode == 1, done.stderr  # type: ignore[attr-defined]
    lines = done.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, done.stderr  # type: ignore[attr-defined]
    assert lines[0].startswith("mtagent: ")
    return str(lines[0])


def test_serve_on_a_data_port_in_use_says_so_before_opening_anything(
    agent: AgentProcess, taken_port: int
) -> None:
    agent.port = taken_port
    agent.write_config()

    line = one_line(run_mtagent("serve", "--config", agent.config_path, timeout=60))

    assert f"127.0.0.1:{taken_port}" in line and "server.listen" in line and "in use" in line
    assert not (agent.workdir / "state" / "state.db").exists(), "the state opened before the bind"


def test_serve_on_a_metrics_port_in_use_says_so(agent: AgentProcess, taken_port: int) -> None:
    agent.metrics_port = taken_port
    agent.write_config()

    line = one_line(run_mtagent("serve", "--config", agent.config_path, timeout=60))

    assert f"127.0.0.1:{taken_port}" in line and "server.metrics_listen" in line
    assert not (agent.workdir / "state" / "state.db").exists()


@pytest.mark.parametrize("command", ["serve", "status"])
def test_a_state_dir_that_is_a_file_is_named(agent: AgentProcess, command: str) -> None:
    (agent.workdir / "state").write_text("not a directory\n")

    line = one_line(run_mtagent(command, "--config", agent.config_path, timeout=60))

    assert "server.state_dir" in line and "a directory" in line and "a file" in line


@pytest.mark.parametrize("option", ["--cert", "--key", "--ca"])
def test_push_names_a_missing_tls_file(agent: AgentProcess, tmp_path: Path, option: str) -> None:
    files = {"--cert": agent.cert, "--key": agent.key, "--ca": agent.ca}
    files[option] = tmp_path / "missing.pem"
    source = tmp_path / "source.img"
    source.write_bytes(bytes(4096))
    tls = [str(arg) for pair in files.items() for arg in pair]

    done = run_mtagent(
        "push", "--server", "https://127.0.0.1:1", *tls, "--disk", "d0", "--source", source,
        "--mode", "full",
        timeout=60,
    )  # fmt: skip

    line = one_line(done)
    assert f"{option} {files[option]}" in line and "No such file" in line


def test_a_configuration_that_is_not_a_file_is_named(tmp_path: Path) -> None:
    line = one_line(run_mtagent("serve", "--config", tmp_path, timeout=60))

    assert str(tmp_path) in line and "a readable configuration file" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_configuration_is_named(agent: AgentProcess) -> None:
    agent.config_path.chmod(0)

    line = one_line(run_mtagent("serve", "--config", agent.config_path, timeout=60))

    assert str(agent.config_path) in line and "Permission denied" in line
