"""Disk identity: one canonical SCSI id from whatever spelling udev, sysfs or an operator uses.

The canonical form is the NAA identifier in lowercase hex, without the leading `3` that udev's
`ID_SERIAL` puts in front (the SCSI designator type "NAA") and without `0x`: a VMware disk with
`disk.EnableUUID = TRUE` is `6000c29...` (32 hex digits, NAA type 6). Everything here is pure, so
it is tested with a table and no udev; `blockio.disks.discovery` feeds it from pyudev.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_HEX = re.compile(r"[0-9a-f]+")
# The NAA type is the first hex digit. Types 2, 3 and 5 are 64 bits (16 hex digits), type 6
# ("IEEE registered extended", what VMware, most arrays and SAS disks report) is 128 bits.
# Type 1 is an obsolete 64-bit form some old devices still report.
_NAA_TYPES_BY_LENGTH = {16: "1235", 32: "6"}
# Spellings an operator may paste: udev by-id link names, sysfs `wwid`, a WWN with 0x.
_PREFIXES = ("scsi-", "wwn-", "naa.", "0x")
# "with or without dashes": vSphere shows 6000C29a-1b2c-3d4e-5f60-718293a4b5c6.
_SEPARATORS = re.compile(r"[-:\s]")

EXPECTED_SPELLING = (
    "the disk's NAA identifier as VMware shows it with disk.EnableUUID = TRUE: "
    '32 hex digits like "6000c29a1b2c3d4e5f60718293a4b5c6", optionally with a leading "3" '
    '(udev ID_SERIAL, "36000c29...") or "0x" (ID_WWN_WITH_EXTENSION), dashes allowed'
)


def _bare_naa(hex_digits: str) -> str | None:
    """`hex_digits` (lowercase, no prefix) if it is a complete NAA identifier, else None."""
    if _HEX.fullmatch(hex_digits) is None:
        return None
    types = _NAA_TYPES_BY_LENGTH.get(len(hex_digits))
    if types is None or hex_digits[0] not in types:
        return None
    return hex_digits


def _designated_naa(hex_digits: str) -> str | None:
    """The NAA identifier of udev's `ID_SERIAL` form: `3` (designator type NAA) + the NAA."""
    if len(hex_digits) in (17, 33) and hex_digits.startswith("3"):
        return _bare_naa(hex_digits[1:])
    return None


def canonical_scsi_uuid(text: str) -> str:
    """The canonical id of a SCSI UUID as written in a config or pasted from a tool.

    Accepts `36000c29...` (udev ID_SERIAL), `6000c29...`, `0x6000c29...`, `naa.6000c29...`
    (sysfs wwid), `scsi-36000c29...` and `wwn-0x6000c29...` (by-id link names), in any case, with
    or without dashes, colons or spaces. Returns lowercase NAA hex without `3` or `0x`.
    Raises ValueError naming the text and the spellings expected when it is not an NAA id.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected {EXPECTED_SPELLING}, got {text!r}")
    digits = text.strip().lower()
    for prefix in _PREFIXES:
        if digits.startswith(prefix):
            digits = digits[len(prefix) :]
            # "wwn-0x..." carries two prefixes.
            if digits.startswith("0x"):
                digits = digits[2:]
            break
    digits = _SEPARATORS.sub("", digits)
    canonical = _bare_naa(digits) or _designated_naa(digits)
    if canonical is None:
        raise ValueError(f"expected {EXPECTED_SPELLING}, got {text!r}")
    return canonical


def _without_0x(value: str) -> str:
    value = value.strip().lower()
    return value[2:] if value.startswith("0x") else value


def identity_from_properties(props: Mapping[str, str]) -> str | None:
    """The canonical SCSI id of a disk from its udev properties, or None when it has none.

    Looked at in order, the first complete NAA identifier wins: `ID_WWN_WITH_EXTENSION`
    (`0x` + NAA), `ID_SERIAL` (`3` + NAA, what scsi_id exports), `ID_SERIAL_SHORT` and
    `ID_SCSI_SERIAL` (bare NAA), then `ID_WWN` (only when it is a whole 64-bit NAA: for type 6 it
    is the first half, which is not enough to tell two VMware disks apart). ATA, NVMe and virtio
    serials are not NAA identifiers and give None, as does a VMware disk without
    `disk.EnableUUID = TRUE` (it reports no serial at all).
    """
    extended = props.get("ID_WWN_WITH_EXTENSION")
    if extended and (naa := _bare_naa(_without_0x(extended))):
        return naa
    serial = props.get("ID_SERIAL")
    if serial and (naa := _designated_naa(serial.strip().lower())):
        return naa
    for key in ("ID_SERIAL_SHORT", "ID_SCSI_SERIAL"):
        value = props.get(key)
        if value and (naa := _bare_naa(_without_0x(value))):
            return naa
    wwn = props.get("ID_WWN")
    if wwn:
        naa = _bare_naa(_without_0x(wwn))
        if naa is not None and len(naa) == 16:
            return naa
    return None


def identity_from_wwid(wwid: str) -> str | None:
    """The canonical id from sysfs `device/wwid` (`naa.6000c29...`), or None for other kinds
    (`t10.`, `eui.`, `0x...` of non-NAA devices). The kernel fills it from VPD page 0x83 without
    udev, so it still works where udev has not run."""
    value = wwid.strip().lower()
    if not value.startswith("naa."):
        return None
    return _bare_naa(value[4:])


def identity_from_by_id_name(name: str) -> str | None:
    """The canonical id a /dev/disk/by-id link name carries (`scsi-36000c29...`,
    `wwn-0x6000c29...`), or None for other links (`ata-...`, `virtio-...`, partitions `-partN`)."""
    lowered = name.lower()
    if lowered.startswith("scsi-"):
        return _designated_naa(lowered[5:])
    if lowered.startswith("wwn-0x"):
        return _bare_naa(lowered[6:])
    return None
