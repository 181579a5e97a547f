"""Hot-add and removal: a real agent follows umockdev's udev events without a restart.

The agent runs inside a umockdev testbed (tests/support/udev_testbed.py): its udev, sysfs and
uevents are fake, the devices behind the fake VMware disks are real loop devices. Adding a disk to
the testbed sends udev's "add", removing it sends "remove", exactly what the agent's monitor reads
on a master target when the process server attaches and detaches disks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import LoopDeviceFactory
from tests.support.agent_harness import AgentProcess, until_on_target
from tests.support.batches import apply_in_memory, batch, resync_batch
from tests.support.udev_testbed import UdevTestbed

MiB = 1 << 20
UUID = "6000c29a1b2c3d4e5f60718293a4b5c6"


def agent_in(bed: UdevTestbed, workdir: Path, scsi_uuid: str = UUID) -> AgentProcess:
    """An agent whose disk d0 is named by SCSI UUID (spelled as udev's ID_SERIAL) and which
    sees the testbed's udev instead of the host's."""
    agent = AgentProcess.create(workdir, {})
    agent.env = bed.env
    with agent.config_path.open("a") as config:
        config.write(f'\n[[disks]]\nid = "d0"\ngroup = "g1"\nscsi_uuid = "3{scsi_uuid}"\n')
    return agent


async def test_a_hot_added_disk_is_used_without_restart_and_a_removed_one_turns_missing(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    loop = loop_device(8 * MiB, 4096)
    with UdevTestbed.start() as bed:
        agent = agent_in(bed, tmp_path)
        agent.start()
        try:
            assert (await agent.disk("d0"))["state"] == "missing"
            first = [(0, os.urandom(64 * 1024)), (5 * MiB, os.urandom(4096))]
            status, body = await agent.put_batch("d0", 1, resync_batch("d0", 1, first))
            assert (status, body["error"]["code"]) == (503, "TARGET_UNAVAILABLE")
            assert "no attached disk carries this SCSI id" in body["error"]["message"]

            sdb = bed.add_disk("sdb", node=loop, scsi_id=UUID)
            disk = await agent.wait_for_disk("d0", lambda d: d["state"] != "missing")
            # A new pair: its persisted state; size and sector size from the device itself.
            assert (disk["state"], disk["size_bytes"], disk["sector_bytes"]) == (
                "resync_required",
                8 * MiB,
                4096,
            )
            assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, first)))[0] == 200
            expected = bytearray(8 * MiB)
            apply_in_memory(expected, first)
            assert loop.read_bytes() == expected

            bed.remove_disk(sdb)
            await agent.wait_for_disk("d0", lambda d: d["state"] == "missing")
            second = [(4096, os.urandom(8192))]
            status, body = await agent.put_batch("d0", 2, batch("d0", 2, second))
            assert (status, body["error"]["code"]) == (503, "TARGET_UNAVAILABLE")
            assert loop.read_bytes() == expected

            # Re-attached disks come back under another name.
            bed.add_disk("sdc", node=loop, scsi_id=UUID)
            disk = await agent.wait_for_disk("d0", lambda d: d["state"] != "missing")
            assert (disk["state"], disk["last_seq"]) == ("ok", 1)
            assert (await agent.put_batch("d0", 2, batch("d0", 2, second)))[0] == 200
            apply_in_memory(expected, second)
            assert loop.read_bytes() == expected
        finally:
            agent.stop()


async def test_removal_in_the_middle_of_a_batch_loses_nothing(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    loop = loop_device(32 * MiB)
    with UdevTestbed.start() as bed:
        sdb = bed.add_disk("sdb", node=loop, scsi_id=UUID)
        agent = agent_in(bed, tmp_path)
        agent.start()
        try:
            first = [(i * 4 * MiB, os.urandom(4 * MiB)) for i in range(4)]
            assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, first)))[0] == 200
            acknowledged = loop.read_bytes()
            # 4 MiB frames: the agent writes a group once 8 MiB have come.
            second = [(i * 4 * MiB, os.urandom(4 * MiB)) for i in range(6)]
            body = batch("d0", 2, second, compress=False)
            resume = asyncio.Event()

            async def cut_body() -> AsyncIterator[bytes]:
                yield body[: 3 * (4 * MiB + 40) + 200]
                await resume.wait()
                yield body[3 * (4 * MiB + 40) + 200 :]

            sending = asyncio.create_task(agent.put_batch("d0", 2, cut_body()))
            await until_on_target(loop, 0, second[0][1][:MiB])

            bed.remove_disk(sdb)
            await agent.wait_for_disk("d0", lambda d: d["state"] == "missing")
            resume.set()
            status, answer = await sending
            assert (status, answer["error"]["code"]) == (503, "TARGET_UNAVAILABLE")
            assert (await agent.disk("d0"))["last_seq"] == 1

            # The disk comes back (here: the same device): the cut-off batch is undone first.
            bed.add_disk("sdc", node=loop, scsi_id=UUID)
            await agent.wait_for_disk("d0", lambda d: d["state"] == "ok")
            assert loop.read_bytes() == acknowledged
            assert "rolled back" in agent.log()

            assert (await agent.put_batch("d0", 2, body))[0] == 200
            expected = bytearray(acknowledged)
            apply_in_memory(expected, second)
            assert loop.read_bytes() == expected
        finally:
            agent.stop()


async def test_a_hot_added_disk_held_by_device_mapper_is_protected_and_never_written(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    loop = loop_device(4 * MiB)
    before = loop.read_bytes()
    with UdevTestbed.start() as bed:
        agent = agent_in(bed, tmp_path)
        agent.start()
        try:
            # What LVM on the master target makes of a disk: dm-3 holds it.
            bed.add_disk("sdb", node=loop, scsi_id=UUID, holders=("dm-3",))
            await agent.wait_for_disk("d0", lambda d: d["state"] == "protected")
            status, body = await agent.put_batch(
                "d0", 1, resync_batch("d0", 1, [(0, b"\xee" * 4096)])
            )
            assert (status, body["error"]["code"]) == (503, "TARGET_UNAVAILABLE")
            assert "protected" in body["error"]["message"]
            assert "sdb is held by dm-3" in body["error"]["message"]
            assert loop.read_bytes() == before
        finally:
            agent.stop()
