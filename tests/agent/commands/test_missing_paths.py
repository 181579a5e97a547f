"""A mistyped `state_dir` or retention path never reads as an empty, healthy setup: `status`,
`points` and `check` exit 1 with one line naming the missing path, and create nothing; `disks`
needs the state directory only, and an empty one is a fresh install, not an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agent_harness import AgentProcess, run_mtagent

READERS = [("status",), ("points", "--group", "g1"), ("check",)]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> AgentProcess:
    """An agent that ran once (state.db and the retention directory exist), stopped."""
    agent = AgentProcess.create(tmp_path_factory.mktemp("ran"), {"d0": 1 << 20})
    agent.start()
    agent.stop()
    return agent


def config_with(agent: AgentProcess, tmp_path: Path, old: Path, new: Path) -> Path:
    """The agent's config with path `old` replaced by `new`, written under `tmp_path`."""
    text = agent.config_path.read_text()
    assert f'"{old}"' in text
    config = tmp_path / "agent.toml"
    config.write_text(text.replace(f'"{old}"', f'"{new}"'))
    return config


def refused(*args: str | Path) -> str:
    """Run the CLI; assert exit 1 with one line on stderr and nothing on stdout; return it."""
    result = run_mtagent(*args)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mtagent: ")
    return result.stderr


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_a_mistyped_state_dir_fails_naming_it_and_creates_nothing(
    ran: AgentProcess, tmp_path: Path, command: tuple[str, ...]
) -> None:
    typo = tmp_path / "statte"
    config = config_with(ran, tmp_path, ran.workdir / "state", typo)
    line = refused(*command, "--config", config)
    assert f"state_dir {typo} does not exist" in line
    assert not typo.exists()


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_a_mistyped_retention_path_fails_naming_it_and_creates_nothing(
    ran: AgentProcess, tmp_path: Path, command: tuple[str, ...]
) -> None:
    typo = tmp_path / "retentoin"
    config = config_with(ran, tmp_path, ran.workdir / "retention", typo)
    line = refused(*command, "--config", config)
    assert f"retention path {typo} does not exist" in line
    assert not typo.exists()


def test_status_of_a_state_dir_no_agent_ran_with_fails_naming_the_state_store(
    ran: AgentProcess, tmp_path: Path
) -> None:
    empty = tmp_path / "state"
    empty.mkdir()
    config = config_with(ran, tmp_path, ran.workdir / "state", empty)
    line = refused("status", "--config", config)
    assert f"no state store {empty / 'state.db'}" in line
    assert list(empty.iterdir()) == []


def test_disks_with_a_missing_state_dir_fails_naming_it(ran: AgentProcess, tmp_path: Path) -> None:
    typo = tmp_path / "statte"
    config = config_with(ran, tmp_path, ran.workdir / "state", typo)
    assert f"state_dir {typo} does not exist" in refused("disks", "--config", config)


def test_disks_on_a_fresh_install_lists_every_disk_as_needing_a_first_copy(
    ran: AgentProcess, tmp_path: Path
) -> None:
    empty = tmp_path / "state"
    empty.mkdir()
    config = config_with(ran, tmp_path, ran.workdir / "state", empty)
    result = run_mtagent("disks", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "resync_required" in result.stdout.splitlines()[1]


def test_the_readers_still_work_on_the_paths_the_agent_used(ran: AgentProcess) -> None:
    for command in READERS:
        result = run_mtagent(*command, "--config", ran.config_path)
        # The agent is stopped: status reports that with its own code, after the disks.
        expected = 3 if command == ("status",) else 0
        assert result.returncode == expected, result.stderr
        assert "does not exist" not in result.stderr
