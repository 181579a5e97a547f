"""The code base stays clean: ruff (lint and format), mypy (strict for protocol/ and blockio/) and
shellcheck on every script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing() -> None:
    result = run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted() -> None:
    result = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    # pyproject.toml's [tool.mypy] names the packages and holds protocol/ and blockio/ to the
    # flags of --strict.
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protocol_and_blockio_pass_mypy_strict() -> None:
    result = run(sys.executable, "-m", "mypy", "--strict", "protocol", "blockio")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="scripts/test.sh installs it")
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(p.relative_to(REPO)) for p in REPO.glob("scripts/*.sh"))
    scripts.append(".ci/run")
    result = run("shellcheck", "-x", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr
