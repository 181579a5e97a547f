"""Block devices as targets: exclusive opens, O_DIRECT through aligned buffers, revocation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from blockio.disks.target import TargetBusy, TargetDisk, TargetError, TargetUnusable
from tests.conftest import LoopDeviceFactory
from tests.support.agent_harness import AgentProcess
from tests.support.batches import apply_in_memory, resync_batch

MiB = 1 << 20


def test_a_block_device_open_for_writing_is_held_exclusively(
    loop_device: LoopDeviceFactory,
) -> None:
    device = loop_device(4 * MiB)
    with TargetDisk.open(device) as held:
        assert held.devnum == os.stat(device).st_rdev
        with pytest.raises(TargetBusy, match="is in use on this host"):
            TargetDisk.open(device)
        with TargetDisk.open(device, writable=False) as reader:
            assert reader.read(0, 512) == bytes(512)
    with TargetDisk.open(device):
        pass  # released with the first handle


def test_a_device_in_use_as_swap_refuses_the_exclusive_open(
    loop_device: LoopDeviceFactory,
) -> None:
    device = loop_device(4 * MiB)
    subprocess.run(["mkswap", str(device)], check=True, capture_output=True)
    subprocess.run(["swapon", str(device)], check=True, capture_output=True)
    try:
        with pytest.raises(TargetBusy):
            TargetDisk.open(device)
    finally:
        subprocess.run(["swapoff", str(device)], check=False)


@pytest.mark.parametrize("sector_bytes", [512, 4096])
def test_direct_io_reads_and_writes_land_exactly(
    loop_device: LoopDeviceFactory, tmp_path: Path, sector_bytes: int
) -> None:
    backing = tmp_path / "backing.img"
    device = loop_device(4 * MiB, sector_bytes, backing=backing)
    new = os.urandom(3 * MiB)  # more than the aligned buffer holds at once
    with TargetDisk.open(device, direct_io=True) as disk:
        assert disk.direct_io and disk.sector_bytes == sector_bytes
        disk.write(sector_bytes, memoryview(new)[: 2 * MiB + sector_bytes])
        disk.write_zeros(MiB, 2 * sector_bytes)
        disk.sync()
        expected = bytearray(4 * MiB)
        expected[sector_bytes : sector_bytes + 2 * MiB + sector_bytes] = new[
            : 2 * MiB + sector_bytes
        ]
        expected[MiB : MiB + 2 * sector_bytes] = bytes(2 * sector_bytes)
        # Reads need not be aligned: the sectors around the extent are read, then cut.
        assert (
            disk.read(sector_bytes + 100, 5000)
            == expected[sector_bytes + 100 : sector_bytes + 5100]
        )
        assert disk.read(0, 4 * MiB) == expected
    assert backing.read_bytes() == expected


def test_direct_io_refuses_a_write_that_is_not_whole_sectors(
    loop_device: LoopDeviceFactory,
) -> None:
    device = loop_device(MiB, 4096)
    with TargetDisk.open(device, direct_io=True) as disk:
        with pytest.raises(TargetError, match="not aligned to the 4096-byte sectors"):
            disk.write(512, bytes(4096))
        with pytest.raises(TargetError, match="not aligned"):
            disk.write_zeros(0, 512)
    assert device.read_bytes() == bytes(MiB)


def test_direct_io_on_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "target.img"
    path.write_bytes(bytes(MiB))
    data = os.urandom(8192)
    with TargetDisk.open(path, direct_io=True) as disk:
        disk.write(4096, data)
        disk.sync()
        assert disk.read(4096, 8192) == data
    assert path.read_bytes() == bytes(4096) + data + bytes(MiB - 12288)


def test_a_revoked_target_refuses_all_io_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "target.img"
    path.write_bytes(bytes(MiB))
    with TargetDisk.open(path) as disk:
        disk.revoke("device /dev/sdb was removed")
        for attempt in (
            lambda: disk.write(0, b"x" * 512),
            lambda: disk.write_zeros(0, 512),
            lambda: disk.read(0, 512),
            disk.sync,
        ):
            with pytest.raises(TargetUnusable) as caught:
                attempt()
            assert str(caught.value) == f"target {path}: device /dev/sdb was removed"
    assert path.read_bytes() == bytes(MiB)


async def test_the_agent_writes_a_direct_io_target_and_reports_its_sector_size(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(8 * MiB, 4096)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": device})
    agent.config_path.write_text(agent.config_path.read_text() + "direct_io = true\n")
    writes = [(0, os.urandom(MiB)), (5 * MiB, os.urandom(4096)), (6 * MiB, 8192)]
    agent.start()
    try:
        async with agent.client() as session:
            async with session.get("/v1/disks/d0") as response:
                disk = await response.json()
            assert (disk["size_bytes"], disk["sector_bytes"]) == (8 * MiB, 4096)
            body = resync_batch("d0", 1, writes)
            async with session.put("/v1/disks/d0/batches/1", data=body) as response:
                assert response.status == 200, await response.text()
    finally:
        agent.stop()
    expected = bytearray(8 * MiB)
    apply_in_memory(expected, writes)
    assert device.read_bytes() == expected
