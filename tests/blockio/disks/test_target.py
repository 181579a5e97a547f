"""TargetDisk: sizes from the file or the device, bytes where they belong, clear refusals."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blockio.disks.target import TargetDisk, TargetError, TargetUnusable
from tests.conftest import LoopDeviceFactory

MiB = 1 << 20


def test_file_target_has_the_file_size_and_512_byte_sectors(
    file_target: Callable[[bytes], Path],
) -> None:
    path = file_target(bytes(3 * MiB + 4096))
    with TargetDisk.open(path) as disk:
        assert (disk.size_bytes, disk.sector_bytes, disk.is_block_device) == (
            3 * MiB + 4096,
            512,
            False,
        )


@pytest.mark.parametrize("sector_bytes", [512, 4096])
def test_loop_device_has_the_device_size_and_logical_sector(
    loop_device: LoopDeviceFactory, sector_bytes: int
) -> None:
    device = loop_device(8 * MiB, sector_bytes)
    with TargetDisk.open(device) as disk:
        assert (disk.size_bytes, disk.sector_bytes, disk.is_block_device) == (
            8 * MiB,
            sector_bytes,
            True,
        )


def test_read_returns_the_bytes_at_the_offset(file_target: Callable[[bytes], Path]) -> None:
    content = os.urandom(MiB)
    with TargetDisk.open(file_target(content)) as disk:
        assert disk.read(4096, 8192) == content[4096 : 4096 + 8192]


def test_write_lands_at_the_offset_and_nowhere_else(
    file_target: Callable[[bytes], Path],
) -> None:
    content = os.urandom(MiB)
    path = file_target(content)
    new = os.urandom(3 * 512)
    with TargetDisk.open(path) as disk:
        disk.write(5120, new)
        disk.sync()
    assert path.read_bytes() == content[:5120] + new + content[5120 + len(new) :]


def test_write_takes_a_memoryview_slice(file_target: Callable[[bytes], Path]) -> None:
    path = file_target(bytes(8192))
    source = os.urandom(4096)
    with TargetDisk.open(path) as disk:
        disk.write(512, memoryview(source)[1024:2048])
    assert path.read_bytes()[512:1536] == source[1024:2048]


def test_write_zeros_clears_exactly_the_extent_across_many_chunks(
    file_target: Callable[[bytes], Path],
) -> None:
    content = os.urandom(4 * MiB)
    path = file_target(content)
    start, length = 512, 2 * MiB + 512 * 3  # longer than the shared zero buffer
    with TargetDisk.open(path) as disk:
        disk.write_zeros(start, length)
        disk.sync()
    assert path.read_bytes() == content[:start] + bytes(length) + content[start + length :]


@pytest.mark.parametrize("sector_bytes", [512, 4096])
def test_writes_through_a_loop_device_land_in_its_backing_file(
    loop_device: LoopDeviceFactory, tmp_path: Path, sector_bytes: int
) -> None:
    backing = tmp_path / "backing.img"
    device = loop_device(4 * MiB, sector_bytes, backing=backing)
    new = os.urandom(3 * 4096)
    with TargetDisk.open(device) as disk:
        disk.write(MiB, new)
        disk.write_zeros(MiB + 4096, 4096)
        disk.sync()
        assert disk.read(MiB, len(new)) == new[:4096] + bytes(4096) + new[8192:]
    expected = bytearray(4 * MiB)
    expected[MiB : MiB + len(new)] = new
    expected[MiB + 4096 : MiB + 8192] = bytes(4096)
    assert backing.read_bytes() == expected


def test_missing_path_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "absent.img"
    with pytest.raises(TargetUnusable) as caught:
        TargetDisk.open(path)
    assert caught.value.path == path
    assert str(caught.value) == f"target {path}: does not exist"


@pytest.mark.parametrize("writable", [True, False])
def test_directory_is_unavailable(tmp_path: Path, writable: bool) -> None:
    with pytest.raises(TargetUnusable, match="is a directory, not a regular file or block"):
        TargetDisk.open(tmp_path, writable=writable)


def test_character_device_is_unavailable() -> None:
    with pytest.raises(TargetUnusable, match="/dev/null: is a special file"):
        TargetDisk.open("/dev/null")


def test_extent_past_the_end_is_refused_and_the_file_does_not_grow(
    file_target: Callable[[bytes], Path],
) -> None:
    path = file_target(bytes(MiB))
    with TargetDisk.open(path) as disk:
        with pytest.raises(TargetError, match=r"extent \[1048064, 1049088\) lies outside"):
            disk.write(MiB - 512, bytes(1024))
        with pytest.raises(TargetError, match="outside the disk of 1048576 bytes"):
            disk.read(MiB, 512)
        with pytest.raises(TargetError, match="outside"):
            disk.write_zeros(-512, 1024)
    assert path.stat().st_size == MiB


def test_read_only_target_refuses_writes_with_the_path_in_the_message(
    file_target: Callable[[bytes], Path],
) -> None:
    path = file_target(bytes(4096))
    with TargetDisk.open(path, writable=False) as disk:
        assert disk.read(0, 512) == bytes(512)
        with pytest.raises(TargetError) as caught:
            disk.write(0, b"x" * 512)
    message = str(caught.value)
    assert message.startswith(f"target {path}: write of 512 bytes at offset 0 failed")
    assert "\n" not in message
    assert path.read_bytes() == bytes(4096)


def test_close_twice_is_harmless(file_target: Callable[[bytes], Path]) -> None:
    disk = TargetDisk.open(file_target(bytes(512)))
    disk.close()
    disk.close()
