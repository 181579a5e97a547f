"""Every error a person can cause ends a command with one line on stderr and exit code 1: the
agent's errors (configuration, PKI, a held lock, TLS files, recovery) reach the CLI as
`AgentError`s, never as tracebacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.replication.instance_lock import acquire_agent_lock
from tests.support.agent_harness import AgentProcess, run_mtagent

MiB = 1 << 20


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> AgentProcess:
    """A configuration (not started) with one disk in group g1."""
    return AgentProcess.create(tmp_path_factory.mktemp("errors") / "agent", {"d0": 1 * MiB})


def in_dir(command: list[str], directory: Path) -> list[str]:
    """`command` with its OUT placeholder in `directory`, so that no run writes elsewhere."""
    return [str(directory / "out") if arg == "OUT" else arg for arg in command]


def assert_one_line_failure(result: object, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr  # type: ignore[attr-defined]
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert stderr.startswith("mtagent: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["status"],
        ["disks"],
        ["check"],
        ["points", "--group", "g1"],
        ["recover", "--group", "g1", "--point", "latest", "--output", "OUT"],
    ],
    ids=lambda command: command[0],
)
def test_a_config_error_fails_every_command_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[server]\nwindw = 1\n")

    result = run_mtagent(*in_dir(command, tmp_path), "--config", config)

    assert_one_line_failure(result, str(config), "server.windw")


@pytest.mark.parametrize(
    "command",
    [
        ["points", "--group", "g9"],
        ["recover", "--group", "g9", "--point", "latest", "--output", "OUT"],
    ],
    ids=lambda command: command[0],
)
def test_an_unknown_group_fails_with_one_line(configured: AgentProcess, command: list[str]) -> None:
    result = run_mtagent(*command, "--config", configured.config_path)

    assert_one_line_failure(result, "no disk is in group 'g9'")


def test_a_point_not_listed_fails_recover_with_one_line(
    configured: AgentProcess, tmp_path: Path
) -> None:
    result = run_mtagent(
        "recover", "--config", configured.config_path, "--group", "g1", "--point", "d0@7",
        "--output", tmp_path / "out",
    )  # fmt: skip

    assert_one_line_failure(result, "group g1 has no recovery point 'd0@7'")


def test_a_point_time_that_cannot_be_read_fails_recover_with_one_line(
    configured: AgentProcess, tmp_path: Path
) -> None:
    result = run_mtagent(
        "recover", "--config", configured.config_path, "--group", "g1", "--point",
        "time:yesterday", "--output", tmp_path / "out",
    )  # fmt: skip

    assert_one_line_failure(result, "yesterday")


@pytest.fixture
def agent_lock(configured: AgentProcess) -> Iterator[None]:
    """The state dir's lock, held as a running agent holds it."""
    state_dir = configured.workdir / "state"
    state_dir.mkdir(exist_ok=True)
    fd = acquire_agent_lock(state_dir, holder="a test", refusal="held by the test")
    yield
    os.close(fd)


@pytest.mark.usefixtures("agent_lock")
def test_recover_in_place_beside_a_running_agent_fails_with_one_line(
    configured: AgentProcess,
) -> None:
    result = run_mtagent(
        "recover",
        "--config",
        configured.config_path,
        "--group",
        "g1",
        "--point",
        "latest",
        "--in-place",
    )

    assert_one_line_failure(result, "agent.lock", "stop the agent first")


def test_serve_without_its_certificate_fails_with_one_line(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 1 * MiB})
    (agent.pki / "server.crt").unlink()

    result = run_mtagent("serve", "--config", agent.config_path)

    assert_one_line_failure(result, "server.crt")


def test_issuing_without_a_ca_fails_with_one_line(tmp_path: Path) -> None:
    result = run_mtagent("certs", "issue", "--dir", tmp_path, "--name", "ps1")

    assert_one_line_failure(result, str(tmp_path))
