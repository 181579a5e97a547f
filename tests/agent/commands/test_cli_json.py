"""What a script reads from mtagent: `--version` from the package metadata, `"schema": 1` in
every `--json` document, and under `--json` a failure as a JSON error object on stdout besides
its line on stderr."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path

import pytest

from agent.server.app import AGENT_VERSION
from tests.support.agent_harness import REPO, AgentProcess, cli, run_mtagent

MiB = 1 << 20


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> AgentProcess:
    """An agent's config and the state and retention it wrote once, stopped since."""
    agent = AgentProcess.create(tmp_path_factory.mktemp("json"), {"d0": MiB})
    agent.start()
    agent.stop()
    return agent


def test_version_prints_the_package_version() -> None:
    result = run_mtagent("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"mtagent {importlib.metadata.version('mtagent')}\n"


def test_the_agent_reports_the_same_version_as_the_cli() -> None:
    assert importlib.metadata.version("mtagent") == AGENT_VERSION


def test_the_version_is_written_only_in_pyproject() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    written = [
        str(path.relative_to(REPO))
        for package in ("agent", "protocol", "blockio")
        for path in (REPO / package).rglob("*.py")
        if f'"{version}"' in path.read_text()
    ]
    assert written == []


@pytest.mark.parametrize(
    "command",
    [("status",), ("disks",), ("points", "--group", "g1"), ("check",), ("targets", "create")],
    ids=" ".join,
)
def test_every_json_document_carries_schema_1(
    configured: AgentProcess, command: tuple[str, ...]
) -> None:
    _, out, err = cli(*command, "--config", configured.config_path, "--json")

    document = json.loads(out)
    assert document["schema"] == 1 and "error" not in document, err


def test_a_failure_under_json_prints_an_error_object_on_stdout(tmp_path: Path) -> None:
    result = run_mtagent("status", "--config", tmp_path / "nope.toml", "--json")

    assert result.returncode == 1
    assert result.stderr.startswith("mtagent: ") and result.stderr.count("\n") == 1
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 1
    assert "nope.toml" in error["message"] and error["message"] in result.stderr


def test_a_usage_error_under_json_prints_an_error_object_with_code_2() -> None:
    result = run_mtagent("points", "--json")  # --group is required

    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 2 and "--group" in error["message"]


def test_without_json_a_failure_prints_nothing_on_stdout(tmp_path: Path) -> None:
    result = run_mtagent("status", "--config", tmp_path / "nope.toml")

    assert result.returncode == 1 and result.stdout == ""
