"""Structured fields of a log record: what journald indexes (`DISK=`, `SEQ=`, `SENDER=`,
`CODE=`, ...) when the agent runs under systemd, and what a plain-text log shows as `key=value`.

Every module that logs an event an operator may search for (a disk's state change, a refused
batch, a retention action) passes its fields the same way:

    log.info("disk %s is ok", disk_id, extra=log_fields(disk=disk_id, state="ok"))
"""

from __future__ import annotations

import logging
import re

FIELDS_ATTR = "mtagent_fields"
# journald's rule for a field name: upper-case letters, digits and underscores, not led by one.
_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]*")


def log_fields(**fields: object) -> dict[str, dict[str, str]]:
    """The `extra=` of a logging call whose record carries `fields` (names upper-cased, values as
    strings; a field whose value is None is left out). Raises ValueError for a name journald
    would refuse."""
    named: dict[str, str] = {}
    for name, value in fields.items():
        key = name.upper()
        if not _FIELD_NAME.fullmatch(key):
            raise ValueError(f"{name!r} is not a journald field name")
        if value is not None:
            named[key] = str(value)
    return {FIELDS_ATTR: named}


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The fields a record was logged with (empty when it was logged without any)."""
    fields: dict[str, str] = getattr(record, FIELDS_ATTR, {})
    return fields
