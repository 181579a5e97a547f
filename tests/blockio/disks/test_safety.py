"""A device in use on this host is `protected` and never written: tables, then real loop devices
that are mounted, used as swap, partitioned, or smaller than the source."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from blockio.disks.safety import (
    BlockNode,
    DeviceProtected,
    DiskLayout,
    ExpectedSize,
    HostUse,
    Mount,
    check_target,
    expected_size,
    open_for_replication,
    parse_mountinfo,
    parse_swaps,
    protection_reasons,
    read_disk_layout,
    read_host_use,
    size_reason,
)
from blockio.disks.target import TargetDisk
from tests.conftest import LoopDeviceFactory
from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch

MiB = 1 << 20
SWAP_AREA_BYTES = 64 * 1024
SDB, SDB1, SDB2 = os.makedev(8, 16), os.makedev(8, 17), os.makedev(8, 18)

MOUNTINFO = r"""22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
28 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
29 28 8:17 / /mnt/old\040backup rw,relatime shared:7 master:1 - xfs /dev/sdb1 rw
30 28 0:45 /@home /home rw,relatime shared:9 - btrfs /dev/sdc2 rw,ssd
garbage line
"""

SWAPS = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/sdb2                               partition\t1048572\t\t0\t\t-2
/var/swap\\040file                       file\t\t524284\t\t0\t\t-3
"""


def test_mountinfo_gives_device_numbers_mount_points_and_sources() -> None:
    assert parse_mountinfo(MOUNTINFO) == (
        Mount(os.makedev(0, 21), "/proc", "proc"),
        Mount(os.makedev(254, 0), "/", "/dev/vda"),
        Mount(SDB1, "/mnt/old backup", "/dev/sdb1"),
        Mount(os.makedev(0, 45), "/home", "/dev/sdc2"),
    )


def test_swaps_gives_the_swap_file_names() -> None:
    assert parse_swaps(SWAPS) == ("/dev/sdb2", "/var/swap file")


SDB_LAYOUT = DiskLayout(BlockNode("sdb", SDB), (BlockNode("sdb1", SDB1), BlockNode("sdb2", SDB2)))


@pytest.mark.parametrize(
    ("layout", "host", "reasons"),
    [
        (SDB_LAYOUT, HostUse(), ()),
        (
            SDB_LAYOUT,
            HostUse(mounts=(Mount(SDB, "/srv", "/dev/sdb"),)),
            ("sdb is mounted at /srv",),
        ),
        (
            SDB_LAYOUT,
            HostUse(mounts=(Mount(SDB1, "/boot", "/dev/sdb1"), Mount(SDB1, "/mnt", "/dev/sdb1"))),
            ("partition sdb1 is mounted at /boot", "partition sdb1 is mounted at /mnt"),
        ),
        (SDB_LAYOUT, HostUse(swap_devnums=frozenset({SDB})), ("sdb is in use as swap",)),
        (
            SDB_LAYOUT,
            HostUse(swap_devnums=frozenset({SDB2})),
            ("partition sdb2 is in use as swap",),
        ),
        (
            DiskLayout(BlockNode("sdb", SDB, ("md0",))),
            HostUse(),
            ("sdb is held by md0 (a member of LVM, MD RAID or device-mapper)",),
        ),
        (
            DiskLayout(BlockNode("sdb", SDB), (BlockNode("sdb1", SDB1, ("dm-0", "dm-1")),)),
            HostUse(),
            ("partition sdb1 is held by dm-0, dm-1 (a member of LVM, MD RAID or device-mapper)",),
        ),
        # Root on LVM on sdb1: the disk carries it though nothing mounts sdb itself.
        (
            SDB_LAYOUT,
            HostUse(root_devnums=frozenset({os.makedev(253, 0), SDB1, SDB})),
            ("sdb carries the root file system",),
        ),
        # Mounted at / directly: said once.
        (
            SDB_LAYOUT,
            HostUse(mounts=(Mount(SDB1, "/", "/dev/sdb1"),), root_devnums=frozenset({SDB1, SDB})),
            ("partition sdb1 is mounted at /",),
        ),
        # Someone else's devices.
        (
            SDB_LAYOUT,
            HostUse(
                mounts=(Mount(os.makedev(8, 33), "/data", "/dev/sdc1"),),
                swap_devnums=frozenset({os.makedev(8, 34)}),
                root_devnums=frozenset({os.makedev(254, 0)}),
            ),
            (),
        ),
    ],
)
def test_protection_reasons(layout: DiskLayout, host: HostUse, reasons: tuple[str, ...]) -> None:
    assert protection_reasons(layout, host) == reasons


@pytest.mark.parametrize(
    ("size", "expected", "reason"),
    [
        (8 * MiB, None, None),
        (8 * MiB, ExpectedSize(8 * MiB, "of the source disk"), None),
        (16 * MiB, ExpectedSize(8 * MiB, "of the source disk"), None),
        (
            4 * MiB,
            ExpectedSize(8 * MiB, "of the source disk"),
            "it holds 4194304 bytes, less than the 8388608 bytes of the source disk",
        ),
    ],
)
def test_size_reason(size: int, expected: ExpectedSize | None, reason: str | None) -> None:
    assert size_reason(size, expected) == reason


def test_expected_size_is_the_larger_of_the_configured_and_the_seen_size() -> None:
    assert expected_size(None, 0, 0) is None
    assert expected_size(8 * MiB, 0, 0) == ExpectedSize(
        8 * MiB, "of the source disk (source_size in the config)"
    )
    seen = expected_size(8 * MiB, 16 * MiB, 1_700_000_000_000_000_000)
    assert seen is not None and seen.size_bytes == 16 * MiB
    assert seen.source.startswith("it had when it was last opened (2023-11-")


def write_tree(root: Path, files: dict[str, str], links: dict[str, str]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)


def test_sysfs_gives_partitions_and_holders_and_root_on_lvm_reaches_its_disk(
    tmp_path: Path,
) -> None:
    # A host whose root is an LVM volume (dm-0) on vda2; vdb is unused.
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    write_tree(
        sysfs,
        {
            "devices/vblk/vda/dev": "252:0\n",
            "devices/vblk/vda/size": "8192\n",
            "devices/vblk/vda/vda1/dev": "252:1\n",
            "devices/vblk/vda/vda1/partition": "1\n",
            "devices/vblk/vda/vda2/dev": "252:2\n",
            "devices/vblk/vda/vda2/partition": "2\n",
            "devices/vblk/vdb/dev": "252:16\n",
            "devices/virtual/block/dm-0/dev": "253:0\n",
        },
        {
            "devices/vblk/vda/vda2/holders/dm-0": "../../../../virtual/block/dm-0",
            "devices/virtual/block/dm-0/slaves/vda2": "../../../../vblk/vda/vda2",
            "dev/block/252:0": "../../devices/vblk/vda",
            "dev/block/252:1": "../../devices/vblk/vda/vda1",
            "dev/block/252:2": "../../devices/vblk/vda/vda2",
            "dev/block/252:16": "../../devices/vblk/vdb",
            "dev/block/253:0": "../../devices/virtual/block/dm-0",
        },
    )
    write_tree(
        proc,
        {
            "self/mountinfo": "1 0 253:0 / / rw - ext4 /dev/mapper/vg-root rw\n"
            "2 1 252:1 / /boot rw - ext4 /dev/vda1 rw\n",
            "swaps": "Filename Type Size Used Priority\n",
        },
        {},
    )

    host = read_host_use(proc, sysfs)
    vda = read_disk_layout(sysfs / "devices/vblk/vda")

    assert host.root_devnums == {os.makedev(253, 0), os.makedev(252, 2), os.makedev(252, 0)}
    assert vda == DiskLayout(
        BlockNode("vda", os.makedev(252, 0)),
        (
            BlockNode("vda1", os.makedev(252, 1)),
            BlockNode("vda2", os.makedev(252, 2), ("dm-0",)),
        ),
    )
    assert protection_reasons(vda, host) == (
        "partition vda1 is mounted at /boot",
        "partition vda2 is held by dm-0 (a member of LVM, MD RAID or device-mapper)",
        "vda carries the root file system",
    )
    assert protection_reasons(read_disk_layout(sysfs / "devices/vblk/vdb"), host) == ()


def test_the_disk_of_the_root_file_system_is_protected() -> None:
    root = next(m for m in read_host_use().mounts if m.mount_point == "/")
    if not Path(root.source).is_block_device():
        pytest.skip(f"/ is on {root.source}, not a block device, on this machine")
    reasons = check_target(Path(root.source))
    assert any("mounted at /" in r or "carries the root file system" in r for r in reasons)
    with pytest.raises(DeviceProtected):
        open_for_replication(Path(root.source))


def run(*command: str | Path) -> None:
    subprocess.run([str(part) for part in command], check=True, capture_output=True)


@contextmanager
def mounted(device: Path, mount_point: Path) -> Iterator[Path]:
    """`device` with a fresh ext4 mounted at `mount_point`; unmounted whatever happens."""
    # No lazy init: the kernel would otherwise keep writing inode tables after the mount.
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device)
    mount_point.mkdir()
    run("mount", device, mount_point)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@contextmanager
def swapping_on(device: Path) -> Iterator[Path]:
    # A swap area of its first SWAP_AREA_BYTES only: the kernel may page out to it whenever
    # the host is short of memory, and must not be mistaken for the agent writing.
    run("mkswap", device, str(SWAP_AREA_BYTES // 1024))
    run("swapon", device)
    try:
        yield device
    finally:
        subprocess.run(["swapoff", str(device)], check=False)


def mbr(partitions: list[tuple[int, int]]) -> bytes:
    """A DOS partition table of Linux partitions given as (first sector, sectors)."""
    table = bytearray(512)
    for i, (first, count) in enumerate(partitions):
        entry = 446 + 16 * i
        table[entry + 4] = 0x83
        table[entry + 8 : entry + 16] = struct.pack("<II", first, count)
    table[510:512] = b"\x55\xaa"
    return bytes(table)


@contextmanager
def partitioned_loop(backing: Path) -> Iterator[Path]:
    """A 16 MiB loop device with two partitions, scanned by the kernel; detached afterwards."""
    with open(backing, "wb") as f:
        f.write(mbr([(2048, 12288), (14336, 18432)]))
        f.truncate(16 * MiB)
    attached = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(backing)],
        check=True,
        capture_output=True,
        text=True,
    )
    device = Path(attached.stdout.strip())
    try:
        # partx adds the partitions through BLKPG, also where the kernel's own scan finds none.
        if not Path(f"{device}p1").exists():
            run("partx", "--add", device)
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


async def put_first_batch(agent: AgentProcess) -> tuple[int, dict[str, Any]]:
    body = resync_batch("d0", 1, [(0, b"\xa5" * MiB), (4 * MiB, b"\x5a" * 4096)])
    async with agent.client() as session, session.put("/v1/disks/d0/batches/1", data=body) as r:
        return r.status, dict(await r.json())


async def disk_state(agent: AgentProcess) -> str:
    async with agent.client() as session, session.get("/v1/disks/d0") as response:
        return str((await response.json())["state"])


async def assert_protected_and_untouched(
    agent: AgentProcess, device: Path, reason: str, *, kernel_owned: int = 0
) -> None:
    """`kernel_owned`: the first bytes of `device`, which the kernel may write (a swap area)."""
    before = device.read_bytes()[kernel_owned:]
    agent.start()
    try:
        assert await disk_state(agent) == "protected"
        status, body = await put_first_batch(agent)
        assert (status, body["error"]["code"]) == (503, "TARGET_UNAVAILABLE")
        assert "protected" in body["error"]["message"] and reason in body["error"]["message"]
        assert await disk_state(agent) == "protected"
    finally:
        agent.stop()
    assert device.read_bytes()[kernel_owned:] == before
    assert "PROTECTED" in agent.log()


async def test_a_mounted_loop_device_is_protected_and_never_written(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(8 * MiB)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": device})
    with mounted(device, tmp_path / "mnt"):
        await assert_protected_and_untouched(agent, device, f"is mounted at {tmp_path / 'mnt'}")


async def test_protection_is_checked_again_before_each_open(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(8 * MiB)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": device})
    try:
        with swapping_on(device):
            agent.start()
            assert await disk_state(agent) == "protected"
        # Swapped off since: the next batch finds it free and uses it.
        status, body = await put_first_batch(agent)
        assert status == 200, body
        assert await disk_state(agent) == "ok"
    finally:
        agent.stop()
    assert device.read_bytes()[:MiB] == b"\xa5" * MiB


async def test_a_loop_device_in_use_as_swap_is_protected_and_never_written(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(8 * MiB)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": device})
    with swapping_on(device):
        # The batch writes a MiB from offset 0: past the swap area, that would show.
        await assert_protected_and_untouched(
            agent, device, "is in use as swap", kernel_owned=SWAP_AREA_BYTES
        )


async def test_a_target_smaller_than_the_source_is_protected(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(4 * MiB)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": device})
    agent.config_path.write_text(
        agent.config_path.read_text() + 'source_size = "8MiB"\n'
    )  # the [[disks]] table is last
    await assert_protected_and_untouched(
        agent, device, "less than the 8388608 bytes of the source disk"
    )


async def test_a_target_smaller_than_when_it_was_last_used_is_protected(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": loop_device(8 * MiB)})
    agent.start()
    try:
        assert await disk_state(agent) == "resync_required"
    finally:
        agent.stop()
    # After a reboot the configured node is another, smaller disk.
    smaller = loop_device(4 * MiB)
    agent.disks["d0"] = smaller
    agent.write_config()
    await assert_protected_and_untouched(
        agent, smaller, "less than the 8388608 bytes it had when it was last opened"
    )


def test_a_disk_whose_partition_is_mounted_is_protected(tmp_path: Path) -> None:
    with partitioned_loop(tmp_path / "disk.img") as device:
        partition = Path(f"{device}p1")
        with mounted(partition, tmp_path / "mnt"):
            reasons = check_target(device)
            assert reasons == (f"partition {partition.name} is mounted at {tmp_path / 'mnt'}",)
            with pytest.raises(DeviceProtected, match="is mounted at"):
                open_for_replication(device)
        assert check_target(device) == ()


def test_a_device_held_for_replication_cannot_be_mounted(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(8 * MiB)
    run("mkfs.ext4", "-q", "-F", device)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    with open_for_replication(device) as target:
        assert target.is_block_device
        refused = subprocess.run(["mount", str(device), str(mount_point)], capture_output=True)
        if refused.returncode == 0:
            subprocess.run(["umount", str(mount_point)], check=False)
        assert refused.returncode != 0
        # The agent's own reports still read it.
        with TargetDisk.open(device, writable=False) as reader:
            assert reader.size_bytes == 8 * MiB
    with mounted(device, tmp_path / "mnt2"):
        pass  # released: it mounts again
