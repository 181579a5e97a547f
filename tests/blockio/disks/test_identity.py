"""Disk identity without udev: every spelling of a SCSI UUID, every kind of udev record."""

from __future__ import annotations

import pytest

from blockio.disks.identity import (
    canonical_scsi_uuid,
    identity_from_by_id_name,
    identity_from_properties,
    identity_from_wwid,
)

VMWARE = "6000c29a1b2c3d4e5f60718293a4b5c6"
SAS = "5000c500a1b2c3d4"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("36000c29a1b2c3d4e5f60718293a4b5c6", VMWARE),  # udev ID_SERIAL, what the README shows
        ("6000c29a1b2c3d4e5f60718293a4b5c6", VMWARE),  # ID_SERIAL_SHORT
        ("0x6000c29a1b2c3d4e5f60718293a4b5c6", VMWARE),  # ID_WWN_WITH_EXTENSION
        ("6000C29A1B2C3D4E5F60718293A4B5C6", VMWARE),
        ("36000C29A1B2C3D4E5F60718293A4B5C6", VMWARE),
        ("6000C29a-1b2c-3d4e-5f60-718293a4b5c6", VMWARE),  # vSphere's UUID form
        ("36000c29a-1b2c-3d4e-5f60-718293a4b5c6", VMWARE),
        ("0x6000c29a-1b2c-3d4e-5f60-718293a4b5c6", VMWARE),
        ("60 00 c2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6", VMWARE),  # vmkfstools bytes
        ("  36000c29a1b2c3d4e5f60718293a4b5c6\n", VMWARE),
        ("naa.6000c29a1b2c3d4e5f60718293a4b5c6", VMWARE),  # sysfs wwid, esxcli
        ("scsi-36000c29a1b2c3d4e5f60718293a4b5c6", VMWARE),  # by-id link names
        ("wwn-0x6000c29a1b2c3d4e5f60718293a4b5c6", VMWARE),
        ("35000c500a1b2c3d4", SAS),  # a 64-bit NAA (type 5) with udev's 3
        ("0x5000C500A1B2C3D4", SAS),
        ("3000c500a1b2c3d4", "3000c500a1b2c3d4"),  # a locally assigned NAA (type 3) keeps its 3
    ],
)
def test_every_common_spelling_gives_the_canonical_id(spelling: str, canonical: str) -> None:
    assert canonical_scsi_uuid(spelling) == canonical


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "36000c2",  # truncated
        "6000c29a1b2c3d4e5f60718293a4b5c",  # 31 digits
        "6000c29a1b2c3d4e5f60718293a4b5c6ff",  # 34 digits
        "7000c29a1b2c3d4e5f60718293a4b5c6",  # 128 bits but not NAA type 6
        "46000c29a1b2c3d4e5f60718293a4b5c6",  # 33 digits without udev's 3
        "6000c29a1b2c3d4e5f60718293a4b5cg",  # not hex
        "vm1-disk0",
        "eui.0025385b91b0a1b2",
        "t10.ATA     QEMU HARDDISK",
    ],
)
def test_garbage_is_refused_with_the_spellings_expected(garbage: str) -> None:
    with pytest.raises(ValueError) as caught:
        canonical_scsi_uuid(garbage)
    message = str(caught.value)
    assert repr(garbage) in message
    assert "disk.EnableUUID = TRUE" in message and "36000c29" in message
    assert "\n" not in message


VMWARE_WITH_ENABLE_UUID = {
    "ID_BUS": "scsi",
    "ID_VENDOR": "VMware",
    "ID_MODEL": "Virtual_disk",
    "ID_SERIAL": f"3{VMWARE}",
    "ID_SERIAL_SHORT": VMWARE,
    "ID_SCSI_SERIAL": VMWARE,
    "ID_WWN": "0x6000c29a1b2c3d4e",
    "ID_WWN_VENDOR_EXTENSION": "0x5f60718293a4b5c6",
    "ID_WWN_WITH_EXTENSION": f"0x{VMWARE}",
}


@pytest.mark.parametrize(
    ("props", "identity"),
    [
        (VMWARE_WITH_ENABLE_UUID, VMWARE),
        # Without disk.EnableUUID, VMware reports no serial and no WWN at all.
        ({"ID_BUS": "scsi", "ID_VENDOR": "VMware", "ID_MODEL": "Virtual_disk"}, None),
        ({"ID_SERIAL": f"3{VMWARE}"}, VMWARE),
        ({"ID_SERIAL_SHORT": VMWARE.upper()}, VMWARE),
        ({"ID_SCSI_SERIAL": VMWARE}, VMWARE),
        ({"ID_WWN_WITH_EXTENSION": f"0x{VMWARE.upper()}"}, VMWARE),
        # The first half of a type-6 NAA cannot tell two VMware disks apart.
        ({"ID_WWN": "0x6000c29a1b2c3d4e"}, None),
        ({"ID_WWN": f"0x{SAS}", "ID_SERIAL": f"3{SAS}"}, SAS),
        ({"ID_WWN": f"0x{SAS}"}, SAS),
        # ATA disk: model_serial, but a real NAA-5 WWN.
        (
            {
                "ID_BUS": "ata",
                "ID_SERIAL": "WDC_WD10EZEX-08WN4A0_WD-WCC6Y3KA1B2C",
                "ID_SERIAL_SHORT": "WD-WCC6Y3KA1B2C",
                "ID_WWN": "0x50014ee2b5c6d7e8",
            },
            "50014ee2b5c6d7e8",
        ),
        # NVMe and virtio: no NAA anywhere.
        (
            {
                "ID_SERIAL": "Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456",
                "ID_WWN": "eui.0025385b91b0a1b2",
            },
            None,
        ),
        ({"ID_SERIAL": "d8f2a1c9e4b7"}, None),
        # A T10 vendor id designator (type 1) is not an NAA.
        ({"ID_SERIAL": "1ATA     QEMU HARDDISK                           QM00001"}, None),
        # A bare NAA in ID_SERIAL lacks scsi_id's designator type: not trusted there.
        ({"ID_SERIAL": VMWARE}, None),
        ({}, None),
        # The most specific property wins when they disagree.
        (
            {"ID_WWN_WITH_EXTENSION": f"0x{VMWARE}", "ID_SERIAL_SHORT": "6" + "0" * 31},
            VMWARE,
        ),
    ],
)
def test_identity_from_udev_properties(props: dict[str, str], identity: str | None) -> None:
    assert identity_from_properties(props) == identity


@pytest.mark.parametrize(
    ("wwid", "identity"),
    [
        (f"naa.{VMWARE}\n", VMWARE),
        (f"naa.{SAS}", SAS),
        ("naa.6000c29a", None),
        ("t10.ATA     QEMU HARDDISK                           QM00001", None),
        ("eui.0025385b91b0a1b2", None),
        ("", None),
    ],
)
def test_identity_from_sysfs_wwid(wwid: str, identity: str | None) -> None:
    assert identity_from_wwid(wwid) == identity


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        (f"scsi-3{VMWARE}", VMWARE),
        (f"wwn-0x{VMWARE}", VMWARE),
        (f"wwn-0x{SAS}", SAS),
        (f"scsi-3{VMWARE}-part1", None),
        (f"wwn-0x{VMWARE}-part2", None),
        ("scsi-SATA_WDC_WD10EZEX-08W_WD-WCC6Y3KA1B2C", None),
        ("scsi-0QEMU_QEMU_HARDDISK_drive-scsi0", None),
        ("ata-QEMU_HARDDISK_QM00001", None),
        ("virtio-d8f2a1c9e4b7", None),
    ],
)
def test_identity_from_by_id_link_names(name: str, identity: str | None) -> None:
    assert identity_from_by_id_name(name) == identity
