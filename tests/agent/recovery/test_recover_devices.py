"""`mtagent recover --output DISK=DEVICE ...`: a test failover onto block devices (loop devices
here), one per disk of the group, while replication goes on; refused, with nothing written, for a
device that is mounted, in use or smaller than its disk."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
from pathlib import Path

from tests.conftest import LoopDeviceFactory
from tests.support.agent_harness import run_mtagent
from tests.support.failover_scenario import DISK, group_a_with_history, two_groups
from tests.support.failover_scenario import A as GROUP_A
from tests.support.retention_scenario import KiB, SourceDisk, send


def garbage(device: Path, size: int) -> bytes:
    """Fill `device` (of `size` bytes) with random bytes: what an export must overwrite, zeros
    included."""
    content = random.Random(str(device)).randbytes(size)
    with open(device, "r+b") as f:
        f.write(content)
    return content


async def test_an_export_onto_devices_is_the_point_while_replication_goes_on(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    rng = random.Random(31)
    try:
        sources = await group_a_with_history(agent, rng)
        devices = {disk: loop_device(DISK + 4 * KiB) for disk in GROUP_A}  # larger is fine
        before = {disk: garbage(devices[disk], DISK + 4 * KiB) for disk in GROUP_A}
        b0 = SourceDisk("b0", DISK)
        await send(agent, b0, [(0, rng.randbytes(64 * KiB))], flags=("resync", "resync_done"))

        outputs = [f"--output={disk}={device}" for disk, device in devices.items()]
        exporting = asyncio.create_task(
            asyncio.to_thread(
                agent.cli, "recover", "--group", "A", "--point", "latest", *outputs, "--json"
            )
        )
        while not exporting.done():  # replication goes on, in both groups
            await send(
                agent, b0, [(rng.randrange(0, DISK - 64 * KiB, 512), rng.randbytes(64 * KiB))]
            )
            await send(agent, sources["a0"], [(0, rng.randbytes(4 * KiB))])
        code, out, err = await exporting
        assert code == 0, err
        report = json.loads(out)
        assert report["mode"] == "devices" and report["point"]["id"] == "tag:t1"
        for disk, device in devices.items():
            written = device.read_bytes()
            assert written[:DISK] == sources[disk].at(2)
            assert written[DISK:] == before[disk][DISK:]  # beyond the disk: left as it was
        assert agent.target_bytes("b0") == b0.at(b0.last_seq)
        assert agent.target_bytes("a0") == sources["a0"].at(sources["a0"].last_seq)
    finally:
        agent.stop()


async def test_a_device_mounted_in_use_or_too_small_is_refused_and_not_written(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    agent = two_groups(tmp_path / "agent", {"a0": DISK, "a1": DISK, "b0": DISK})
    agent.start()
    try:
        await group_a_with_history(agent, random.Random(32))
        good = loop_device(DISK)
        small = loop_device(DISK // 2)
        busy = loop_device(DISK)
        mounted = loop_device(DISK)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(mounted)], check=True)
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        subprocess.run(["mount", str(mounted), str(mountpoint)], check=True)
        holder = os.open(busy, os.O_RDONLY | os.O_EXCL)  # another program claims it
        try:
            for device, why in (
                (small, "less than"),
                (busy, "in use"),
                (mounted, "mounted"),
                (agent.disks["b0"], "not a block device"),
            ):
                before = Path(device).read_bytes()[: 1 << 20]
                code, _, err = await asyncio.to_thread(
                    agent.cli, "recover", "--group", "A", "--point", "latest",
                    "--output", f"a0={good}", "--output", f"a1={device}",
                )  # fmt: skip
                assert code == 1 and why in err, err
                assert Path(device).read_bytes()[: 1 << 20] == before
        finally:
            os.close(holder)
            subprocess.run(["umount", str(mountpoint)], check=True)

        code, _, err = await asyncio.to_thread(
            agent.cli, "recover", "--group", "A", "--point", "latest", "--output", f"a0={good}"
        )
        assert code == 1 and "give --output DISK=DEVICE for a1 too" in err
        mixed = await asyncio.to_thread(
            run_mtagent, "recover", "--config", agent.config_path, "--group", "A",
            "--point", "latest", "--output", f"a0={good}", "--output", tmp_path / "dir",
        )  # fmt: skip
        assert mixed.returncode == 2 and "not both" in mixed.stderr
    finally:
        agent.stop()
