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
from tests.support.waiting import wait_until_async

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


async def test_a_released_disk_may_be_detached_and_attached_again_without_being_taken(
    tmp_path: Path, loop_device: LoopDeviceFactory
) -> None:
    # After a failover the disk is the recovered machine's: the operator detaches it from the
    # master target (udev "remove") and may attach it again; neither is an alarm, and the agent
    # opens it only when the group is reprotected.
    loop = loop_device(8 * MiB, 4096)
    with UdevTestbed.start() as bed:
        agent = agent_in(bed, tmp_path)
        agent.start()
        try:
            sdb = bed.add_disk("sdb", node=loop, scsi_id=UUID)
            await agent.wait_for_disk("d0", lambda d: d["state"] != "missing")
            writes = [(0, os.urandom(64 * 1024))]
            assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, writes)))[0] == 200
            status, answer = await agent.post_json("/v1/groups/g1/failover", {"point": "latest"})
            assert (status, answer["phase"]) == (200, "released"), answer
            expected = loop.read_bytes()

            bed.remove_disk(sdb)
            await wait_until_async(
                lambda: "udev: remove" in agent.log(), timeout=10, what="the removal"
            )
            assert (await agent.disk("d0"))["state"] == "failed_over"
            bed.add_disk("sdc", node=loop, scsi_id=UUID)
            await wait_until_async(
                lambda: agent.log().count("udev: add") == 2, timeout=10, what="the add"
            )
            await asyncio.sleep(1)  # time enough for an open the agent must not make
            disk = await agent.disk("d0")
            assert disk["state"] == "failed_over"
            assert "attached" not in agent.log().split("udev: remove")[-1]
            assert loop.read_bytes() == expected

            status, answer = await agent.post_json("/v1/groups/g1/reprotect", {})
            assert status == 200, answer
            disk = await agent.wait_for_disk("d0", lambda d: d["state"] == "resync_required")
            assert disk["size_bytes"] == 8 * MiB
        finally:
            agent.stop()
