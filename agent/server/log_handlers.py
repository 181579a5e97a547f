"""Where the daemon's log records go, and in what form (`configure_logging`):

- stderr is the journal (systemd's `JOURNAL_STREAM` holds the `device:inode` of fd 2): each record
  is one native journal entry on journald's socket (`JournalHandler`): MESSAGE, PRIORITY,
  SYSLOG_IDENTIFIER, LOGGER, CODE_FILE/LINE/FUNC and the record's structured fields
  (`agent.log_fields`), so that `journalctl DISK=vm1-disk0` finds them;
- stderr is the journal but its socket cannot be used: lines with a `<N>` priority prefix, which
  journald's stream reader turns into PRIORITY=, the fields appended as ` key=value`;
- otherwise (a terminal, a file): `time LEVEL logger: message key=value ...` lines.

The wire format is systemd's "Native Journal Protocol" (systemd.io/JOURNAL_NATIVE_PROTOCOL): one
datagram per entry on an AF_UNIX/SOCK_DGRAM socket, each field `NAME=value\\n`, or, for a value
holding a newline (a traceback), `NAME\\n`, the value's length as 64-bit little endian, the value,
`\\n`. An entry too large for one datagram goes in a sealed memfd passed alone (SCM_RIGHTS).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from typing import ClassVar

from agent.log_fields import record_fields

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Where a test (or an unusual system) has journald's socket instead.
JOURNAL_SOCKET_ENV = "MTAGENT_JOURNAL_SOCKET"
SYSLOG_IDENTIFIER = "mtagent"
# A journald that does not read for this long is stalled: the record goes to stderr instead of
# holding up the event loop.
SEND_TIMEOUT_SECONDS = 5.0

_LENGTH = struct.Struct("<Q")
# The fields each entry carries itself: a structured field of the same name is left out.
_OWN_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)


def syslog_priority(levelno: int) -> int:
    """The syslog priority (journald's PRIORITY=) of a logging level: debug 7, info 6,
    warning 4, error 3, critical 2."""
    if levelno <= logging.DEBUG:
        return 7
    if levelno <= logging.INFO:
        return 6
    if levelno <= logging.WARNING:
        return 4
    if levelno <= logging.ERROR:
        return 3
    return 2


def stderr_is_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """Whether `fd` is the stream systemd connected to the journal: `JOURNAL_STREAM` names its
    device and inode. A child whose stderr was redirected inherits the variable, hence the
    comparison."""
    stream = environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def encode_field(name: str, value: str) -> bytes:
    """One field of a native journal entry (see the module docstring)."""
    data = value.encode("utf-8", errors="replace")
    if b"\n" in data:
        return name.encode() + b"\n" + _LENGTH.pack(len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def journal_entry(record: logging.LogRecord, message: str) -> bytes:
    """The native journal entry of `record`, whose text (with any traceback) is `message`."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(syslog_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
    }
    for name, value in record_fields(record).items():
        if name not in _OWN_FIELDS:
            fields[name] = value
    return b"".join(encode_field(name, value) for name, value in fields.items())


def key_values(record: logging.LogRecord) -> str:
    """The record's structured fields as ` key=value` pairs (keys lower-cased; a value with a
    space, a quote or an `=` in JSON quotes), or "" when it has none."""
    pairs = []
    for name, value in record_fields(record).items():
        shown = json.dumps(value) if not value or any(c in value for c in ' "=\n') else value
        pairs.append(f" {name.lower()}={shown}")
    return "".join(pairs)


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`: a terminal's or a log file's line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + key_values(record)


class PriorityPrefixFormatter(logging.Formatter):
    """`<N>logger: message key=value` lines: journald reads N as PRIORITY= (sd-daemon(3))."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + key_values(record)

    def format(self, record: logging.LogRecord) -> str:
        priority = syslog_priority(record.levelno)
        # journald makes an entry of each line: a traceback keeps its record's priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class JournalHandler(logging.Handler):
    """Sends each record to journald as one native entry (see the module docstring).

    A record that cannot be sent (journald restarting or stalled) is written to `fallback` as a
    `<N>` line instead: journald reads the service's stderr too, so nothing is lost.
    """

    MESSAGE_FORMAT: ClassVar[str] = "%(message)s"

    def __init__(self, address: str, fallback: logging.Handler) -> None:
        """Raises OSError when nothing listens at `address`."""
        super().__init__()
        self.address = address
        self.fallback = fallback
        self.setFormatter(logging.Formatter(self.MESSAGE_FORMAT))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
        # Not connected: a journald that restarted is reached again at the next record.
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.settimeout(SEND_TIMEOUT_SECONDS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = journal_entry(record, self.format(record))
        except Exception:
            self.handleError(record)
            return
        try:
            try:
                self.socket.sendto(entry, self.address)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_in_memfd(entry)
        except OSError:
            self.fallback.handle(record)

    def _send_in_memfd(self, entry: bytes) -> None:
        """An entry too large for a datagram: in a sealed memfd, passed with an empty payload."""
        fd = os.memfd_create("mtagent-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, entry)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            self.socket.sendmsg([], ancillary, 0, self.address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.socket.close()
        self.fallback.close()
        super().close()


def log_handler(environ: Mapping[str, str]) -> logging.Handler:
    """The handler of the daemon's records for a process with environment `environ` (see the
    module docstring)."""
    stream = logging.StreamHandler(sys.stderr)
    if not stderr_is_journal(environ):
        stream.setFormatter(PlainFormatter())
        return stream
    stream.setFormatter(PriorityPrefixFormatter())
    try:
        return JournalHandler(environ.get(JOURNAL_SOCKET_ENV, JOURNAL_SOCKET), stream)
    except OSError:
        return stream


def configure_logging(level: str, environ: Mapping[str, str] | None = None) -> None:
    """Send the records of `level` ("debug", "info", "warning") and above where `log_handler`
    says, replacing the root logger's handlers."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(os.environ if environ is None else environ)]
    root.setLevel(level.upper())
