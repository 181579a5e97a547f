"""Discovery through the real pyudev code, on VMware-style SCSI disks faked by umockdev.

Every fake disk's device node is a real loop device: what udev resolves is then opened for real.
The children run `blockio.disks.discovery` and `mtagent disks` with the testbed in place of the
host's udev; their answers are checked here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockio.disks.discovery import (
    ENABLE_UUID_HINT,
    BlockDisk,
    DiskNotFound,
    by_id_identities,
    locate,
)
from tests.conftest import LoopDeviceFactory
from tests.support.udev_testbed import UdevTestbed

MiB = 1 << 20
UUID_A = "6000c29a1b2c3d4e5f60718293a4b5c6"
UUID_B = "6000c2917e3c5d2b8a4f0e1d2c3b4a59"


@pytest.fixture
def bed() -> Iterator[UdevTestbed]:
    with UdevTestbed.start() as testbed:
        yield testbed


RESOLVE = """
import json, sys
from blockio.disks.discovery import enumerate_disks, resolve_scsi_id
from blockio.disks.identity import canonical_scsi_uuid
answers = {}
for spelling in sys.argv[1:]:
    answers[spelling] = str(resolve_scsi_id(canonical_scsi_uuid(spelling)).node)
disks = {str(d.node): d.to_json() | {"sys_path": str(d.sys_path)} for d in enumerate_disks()}
print(json.dumps({"answers": answers, "disks": disks}))
"""


def resolve(bed: UdevTestbed, *spellings: str) -> dict[str, dict[str, object]]:
    code = RESOLVE.replace("sys.argv[1:]", repr(list(spellings)))
    return dict(json.loads(bed.run_python(code).stdout))


def test_vmware_disks_resolve_by_scsi_uuid_in_every_spelling(
    bed: UdevTestbed, loop_device: LoopDeviceFactory
) -> None:
    loop_a, loop_b = loop_device(8 * MiB), loop_device(4 * MiB, 4096)
    bed.add_disk("sdb", node=loop_a, scsi_id=UUID_A)
    bed.add_disk("sdc", node=loop_b, scsi_id=UUID_B)
    spellings_of_a = [
        "36000c29a1b2c3d4e5f60718293a4b5c6",
        "6000C29A1B2C3D4E5F60718293A4B5C6",
        "0x6000c29a1b2c3d4e5f60718293a4b5c6",
        "6000C29a-1b2c-3d4e-5f60-718293a4b5c6",
    ]
    found = resolve(bed, *spellings_of_a, "36000c2917e3c5d2b8a4f0e1d2c3b4a59")

    assert found["answers"] == {
        **dict.fromkeys(spellings_of_a, str(loop_a)),
        "36000c2917e3c5d2b8a4f0e1d2c3b4a59": str(loop_b),
    }
    disk_b = found["disks"][str(loop_b)]
    assert disk_b == {
        "device": str(loop_b),
        "scsi_id": UUID_B,
        "size_bytes": 4 * MiB,
        "sector_bytes": 4096,
        "vendor": "VMware",
        "model": "Virtual disk",
        "by_id": [f"/dev/disk/by-id/scsi-3{UUID_B}", f"/dev/disk/by-id/wwn-0x{UUID_B}"],
        "sys_path": "/sys/devices/sdc",
    }


def test_by_id_links_identify_a_disk_whose_udev_record_has_no_serial(
    bed: UdevTestbed, loop_device: LoopDeviceFactory
) -> None:
    loop_a, loop_b = loop_device(4 * MiB), loop_device(4 * MiB)
    bed.add_disk("sdb", node=loop_a)
    bed.add_disk("sdc", node=loop_b)
    # udev writes relative links (../../sdb); these are absolute because umockdev lets a
    # child see a /dev link only when its target exists, and the loop devices are real.
    bed.link(f"/dev/disk/by-id/scsi-3{UUID_A}", str(loop_a))
    bed.link(f"/dev/disk/by-id/wwn-0x{UUID_B}", str(loop_b))
    bed.link("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001", str(loop_b))

    found = resolve(bed, UUID_A, UUID_B)

    assert found["answers"] == {UUID_A: str(loop_a), UUID_B: str(loop_b)}
    assert found["disks"][str(loop_a)]["by_id"] == [f"/dev/disk/by-id/scsi-3{UUID_A}"]


def test_by_id_links_as_udev_writes_them_relative_point_at_the_disk(tmp_path: Path) -> None:
    by_id = tmp_path / "dev" / "disk" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / f"scsi-3{UUID_A}").symlink_to("../../sdb")
    (by_id / f"scsi-3{UUID_A}-part1").symlink_to("../../sdb1")
    (by_id / f"wwn-0x{UUID_B}").symlink_to("../../sdc")
    (by_id / "ata-QEMU_HARDDISK_QM00001").symlink_to("../../sdd")

    assert by_id_identities(by_id) == {
        tmp_path / "dev" / "sdb": (UUID_A, str(by_id / f"scsi-3{UUID_A}")),
        tmp_path / "dev" / "sdc": (UUID_B, str(by_id / f"wwn-0x{UUID_B}")),
    }
    assert by_id_identities(tmp_path / "absent") == {}


def test_sysfs_wwid_identifies_a_disk_when_udev_exported_nothing(
    bed: UdevTestbed, loop_device: LoopDeviceFactory
) -> None:
    loop = loop_device(4 * MiB)
    # What a host without udevd shows: the kernel's uevent keys and sysfs, no ID_* at all.
    bed.add_disk("sdb", node=loop, attributes={"device/wwid": f"naa.{UUID_A}"})

    assert resolve(bed, UUID_A)["answers"] == {UUID_A: str(loop)}


def test_two_paths_to_one_lun_are_refused_not_guessed(
    bed: UdevTestbed, loop_device: LoopDeviceFactory
) -> None:
    bed.add_disk("sdb", node=loop_device(4 * MiB), scsi_id=UUID_A)
    bed.add_disk("sdc", node=loop_device(4 * MiB), scsi_id=UUID_A)
    code = (
        "from blockio.disks.discovery import resolve_scsi_id, AmbiguousDisk\n"
        "try:\n"
        f"    resolve_scsi_id({UUID_A!r})\n"
        "except AmbiguousDisk as exc:\n"
        "    print(exc)\n"
    )

    message = bed.run_python(code).stdout

    assert "2 disks carry this id" in message and "multipath" in message


def test_disks_command_resolves_ids_and_lists_unconfigured_disks(
    bed: UdevTestbed, loop_device: LoopDeviceFactory, tmp_path: Path
) -> None:
    configured, spare, anonymous = (loop_device(8 * MiB), loop_device(4 * MiB), loop_device(MiB))
    bed.add_disk("sdb", node=configured, scsi_id=UUID_A)
    bed.add_disk("sdc", node=spare, scsi_id=UUID_B)
    bed.add_disk("sdd", node=anonymous)  # a VMware disk of a VM without disk.EnableUUID
    absent = "6000c29ffffffffffffffffffffffff0"
    config = write_config(
        tmp_path, {"vm1-d0": "36000C29A1B2C3D4E5F60718293A4B5C6", "vm1-d1": absent}
    )

    result = bed.mtagent("disks", "--config", config, "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    d0, d1 = report["disks"]
    assert {key: d0[key] for key in ("id", "group", "scsi_id", "device", "state")} == {
        "id": "vm1-d0",
        "group": "vm1",
        "scsi_id": UUID_A,
        "device": str(configured),
        "state": "resync_required",
    }
    assert (d0["size_bytes"], d0["sector_bytes"], d0["reason"]) == (8 * MiB, 512, "")
    assert (d1["state"], d1["device"], d1["size_bytes"]) == ("missing", None, None)
    assert "no attached disk carries this SCSI id" in d1["reason"]
    assert str(anonymous) in d1["reason"] and "disk.EnableUUID = TRUE" in d1["reason"]
    unconfigured = {d["device"]: d for d in report["unconfigured"]}
    assert set(unconfigured) == {str(spare), str(anonymous)}
    assert (unconfigured[str(spare)]["scsi_id"], unconfigured[str(spare)]["note"]) == (UUID_B, "")
    assert unconfigured[str(anonymous)]["scsi_id"] is None
    assert "disk.EnableUUID = TRUE" in unconfigured[str(anonymous)]["note"]


def test_disks_table_names_the_id_to_copy_and_explains_enable_uuid(
    bed: UdevTestbed, loop_device: LoopDeviceFactory, tmp_path: Path
) -> None:
    bed.add_disk("sdc", node=loop_device(4 * MiB), scsi_id=UUID_B)
    anonymous = loop_device(MiB)
    bed.add_disk("sdd", node=anonymous)

    result = bed.mtagent("disks", "--config", write_config(tmp_path, {}))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    spare_row = next(line for line in lines if UUID_B in line)
    assert spare_row.split()[:4] == [str(spare_row.split()[0]), UUID_B, "4.0", "MiB"]
    anonymous_row = next(line for line in lines if line.startswith(str(anonymous)))
    assert anonymous_row.split()[1] == "-" and "disk.EnableUUID = TRUE" in anonymous_row


def test_not_found_message_explains_enable_uuid_when_disks_show_no_identity() -> None:
    def disk(name: str, scsi_id: str | None, virtual: bool = False) -> BlockDisk:
        return BlockDisk(
            node=Path(f"/dev/{name}"),
            sys_path=Path(f"/sys/devices/{name}"),
            devnum=0,
            scsi_id=scsi_id,
            size_bytes=MiB,
            sector_bytes=512,
            vendor="VMware",
            model="Virtual disk",
            by_id=(),
            virtual=virtual,
        )

    with pytest.raises(DiskNotFound) as caught:
        locate(UUID_A, [disk("sdb", UUID_B), disk("sdc", None), disk("loop0", None, True)])
    assert str(caught.value) == (
        f"target scsi_uuid {UUID_A}: no attached disk carries this SCSI id; "
        f"/dev/sdc shows no SCSI UUID at all: {ENABLE_UUID_HINT}"
    )
    with pytest.raises(DiskNotFound) as caught:
        locate(UUID_A, [disk("sdb", UUID_B)])
    assert "EnableUUID" not in str(caught.value)


def write_config(tmp_path: Path, disks: dict[str, str]) -> Path:
    """A config whose disks are named by SCSI UUID (group = the id's prefix), and its empty
    state directory (a fresh install: `disks` refuses a state_dir that does not exist)."""
    (tmp_path / "state").mkdir(exist_ok=True)
    lines = [
        "[server]",
        f'state_dir = "{tmp_path / "state"}"',
        "[tls]",
        'cert = "server.crt"',
        'key = "server.key"',
        'client_ca = "ca.crt"',
        "[retention]",
        f'path = "{tmp_path / "retention"}"',
    ]
    for disk_id, uuid in disks.items():
        group = disk_id.split("-")[0]
        lines += ["[[disks]]", f'id = "{disk_id}"', f'group = "{group}"', f'scsi_uuid = "{uuid}"']
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
