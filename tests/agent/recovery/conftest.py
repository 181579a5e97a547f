"""Fixtures of the recovery tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.failover_scenario import DISK


@pytest.fixture(params=["file", "loop device"])
def make_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Path]:
    """Factory: a zero-filled target of DISK bytes, a regular file or a loop device."""

    def make(name: str) -> Path:
        if request.param == "file":
            path = tmp_path / f"{name}.img"
            with open(path, "wb") as f:
                f.truncate(DISK)
            return path
        loop: Callable[[int], Path] = request.getfixturevalue("loop_device")
        return loop(DISK)

    return make
