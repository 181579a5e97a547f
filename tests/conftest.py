"""Shared fixtures: real loop devices and file targets."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.agent_harness import AgentProcess


class LoopDeviceFactory(Protocol):
    def __call__(
        self, size_bytes: int, sector_bytes: int = 512, *, backing: Path | None = None
    ) -> Path: ...


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[LoopDeviceFactory]:
    """Factory: `loop_device(size_bytes, sector_bytes=512, *, backing=None) -> /dev/loopN`.

    Attaches a loop device (direct I/O, the given logical sector size) over a zero-filled
    backing file of `size_bytes` (`backing`, or a new file in tmp_path), and detaches every
    device it made at teardown, whatever the test's outcome.
    """
    devices: list[Path] = []
    names = itertools.count()

    def make(size_bytes: int, sector_bytes: int = 512, *, backing: Path | None = None) -> Path:
        if backing is None:
            backing = tmp_path / f"loop-backing-{next(names)}.img"
        with open(backing, "wb") as f:
            f.truncate(size_bytes)
        attached = subprocess.run(
            [
                "losetup",
                "--find",
                "--show",
                "--direct-io=on",
                "--sector-size",
                str(sector_bytes),
                str(backing),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        device = Path(attached.stdout.strip())
        devices.append(device)
        return device

    yield make
    failures = []
    for device in devices:
        detached = subprocess.run(["losetup", "-d", str(device)], capture_output=True, text=True)
        if detached.returncode != 0:
            failures.append(f"{device}: {detached.stderr.strip()}")
    if failures:
        pytest.fail("could not detach loop devices: " + "; ".join(failures))


@pytest.fixture
def file_target(tmp_path: Path) -> Callable[[bytes], Path]:
    """Factory: `file_target(content) -> path` of a new regular file holding `content`."""
    names = itertools.count()

    def make(content: bytes) -> Path:
        path = tmp_path / f"target-{next(names)}.img"
        path.write_bytes(content)
        return path

    return make


@pytest.fixture(scope="module")
def shared_agent(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """One agent for a whole test module, with a disk of `DISK_BYTES` for each name in the
    module's `DISKS`: starting an agent takes most of a second, a disk per test is cheap."""
    disks = dict.fromkeys(request.module.DISKS, request.module.DISK_BYTES)
    agent = AgentProcess.create(tmp_path_factory.mktemp("agent"), disks)
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def unused_disks(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's `DISKS`, each handed out once (take one with `next`)."""
    return iter(request.module.DISKS)
