"""`mtagent push --mode verify` tells a script the outcome by its exit code: 0 identical, 1
different (tests/agent/sender/test_verify.py), 2 usage, 3 could not compare, so that a
failure to compare is never read as "different"."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

import pytest

from agent.commands import cli, push
from agent.commands.push import EXIT_CANNOT_COMPARE
from tests.support.agent_harness import AgentProcess, free_port, run_mtagent

MiB = 1 << 20
DISKS = ["d0"]
DISK_BYTES = MiB


def verify(
    agent: AgentProcess, source: Path, *args: str, server: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_mtagent(
        "push",
        "--mode",
        "verify",
        "--server",
        server or agent.url,
        "--cert",
        agent.cert,
        "--key",
        agent.key,
        "--ca",
        agent.ca,
        "--disk",
        "d0",
        "--source",
        source,
        "--retries",
        "0",
        *args,
        timeout=60,
    )


def assert_cannot_compare(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == EXIT_CANNOT_COMPARE, result.stderr
    stderr = result.stderr
    assert stderr.startswith("mtagent: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def test_verify_exits_3_when_the_source_cannot_be_read(
    shared_agent: AgentProcess, tmp_path: Path
) -> None:
    result = verify(shared_agent, tmp_path / "absent.img")

    assert_cannot_compare(result, "absent.img")


def test_verify_exits_3_when_the_agent_cannot_be_reached(
    shared_agent: AgentProcess, tmp_path: Path
) -> None:
    source = tmp_path / "source.img"
    source.write_bytes(bytes(MiB))

    result = verify(shared_agent, source, server=f"https://127.0.0.1:{free_port()}")

    assert_cannot_compare(result)


def test_verify_under_json_prints_the_error_object_with_code_3(
    shared_agent: AgentProcess, tmp_path: Path
) -> None:
    result = verify(shared_agent, tmp_path / "absent.img", "--json")

    assert_cannot_compare(result)
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == EXIT_CANNOT_COMPARE and "absent.img" in error["message"]


def test_verify_of_an_identical_source_prints_schema_1_and_exits_0(
    shared_agent: AgentProcess, tmp_path: Path
) -> None:
    source = tmp_path / "source.img"
    source.write_bytes(shared_agent.disks["d0"].read_bytes())

    result = verify(shared_agent, source, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == 1 and document["identical"] is True


@pytest.mark.parametrize("option", [("--chunk-bytes", "1000"), ("--tag", "x")])
def test_a_usage_error_of_verify_exits_2(
    shared_agent: AgentProcess, tmp_path: Path, option: tuple[str, str]
) -> None:
    result = verify(shared_agent, tmp_path / "absent.img", *option)

    assert result.returncode == 2


def test_an_interrupted_verify_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def interrupted(work: Coroutine[Any, Any, Any], display: object) -> NoReturn:
        work.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(push, "_tls_context", lambda args: None)
    monkeypatch.setattr(push, "_run_shown", interrupted)
    argv = ["push", "--server", "https://127.0.0.1:1", "--cert", "c", "--key", "k", "--ca", "ca"]
    argv += ["--disk", "d0", "--source", str(tmp_path / "x.img"), "--mode", "verify"]

    assert cli.main(argv) == EXIT_CANNOT_COMPARE
    assert capsys.readouterr().err == "mtagent: interrupted\n"
