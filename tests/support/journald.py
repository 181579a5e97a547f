"""journald's side of its native protocol, for tests: a Unix datagram socket the test binds, and
the environment that makes the agent take it for the journal.

    with FakeJournald(tmp_path / "journal.socket") as journald:
        configure_logging("info", journald.environment(fd=2))
        datagram = journald.receive()                   # the raw bytes of one entry
        fields = dict(parse_entry(datagram))            # {"MESSAGE": b"...", ...}

    journald.collect()                                  # a thread keeps every entry from here on
    wait_until(lambda: journald.find(MESSAGE=b"stopped"), timeout=10, what="the stopped entry")

And the real one, where systemd is installed: `RealJournald.start()` runs systemd-journald in a
namespace of its own (its socket under /run/systemd/journal.<namespace>/), and `entries()` reads
back what it stored with `journalctl --namespace`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.server.log_handlers import JOURNAL_SOCKET_ENV
from tests.support.waiting import wait_until

JOURNALD = Path("/lib/systemd/systemd-journald")

Entry = dict[str, bytes]


def parse_entry(datagram: bytes) -> list[tuple[str, bytes]]:
    """The fields of a native journal entry, in order, read as systemd.io/JOURNAL_NATIVE_PROTOCOL
    says: `NAME=value\\n`, or `NAME\\n`, a 64-bit little-endian length, the value, `\\n`."""
    fields = []
    rest = datagram
    while rest:
        line_end = rest.index(b"\n")
        line = rest[:line_end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            rest = rest[line_end + 1 :]
        else:
            name = line
            (length,) = struct.unpack("<Q", rest[line_end + 1 : line_end + 9])
            value = rest[line_end + 9 : line_end + 9 + length]
            if rest[line_end + 9 + length : line_end + 10 + length] != b"\n":
                raise ValueError(f"field {name!r} does not end with a newline")
            rest = rest[line_end + 10 + length :]
        fields.append((name.decode(), value))
    return fields


class FakeJournald:
    """A bound datagram socket in journald's place."""

    def __init__(self, address: Path) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(address))
        self.sock.settimeout(10)
        self.entries: list[Entry] = []
        self._reader: threading.Thread | None = None
        self._closed = threading.Event()

    def environment(self, *, fd: int | None = None, stderr: Path | None = None) -> dict[str, str]:
        """What systemd gives a service whose stderr (`fd` of this process, or the file
        `stderr` a child will get) is the journal, with this socket as journald's."""
        stat = os.fstat(fd) if fd is not None else os.stat(stderr)  # type: ignore[arg-type]
        return {
            "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}",
            JOURNAL_SOCKET_ENV: str(self.address),
        }

    def receive(self) -> bytes:
        """The next datagram's bytes (TimeoutError after 10 s)."""
        return self.sock.recv(1 << 20)

    def collect(self) -> None:
        """From now on a thread reads every entry into `entries` (parsed), so that a sender
        is never held up by a full queue."""

        def read() -> None:
            self.sock.settimeout(0.1)
            while not self._closed.is_set():
                try:
                    datagram = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.entries.append(dict(parse_entry(datagram)))

        self._reader = threading.Thread(target=read, name="fake-journald", daemon=True)
        self._reader.start()

    def find(self, **wanted: bytes) -> Entry | None:
        """The first collected entry with every field of `wanted`, or None."""
        for entry in list(self.entries):
            if all(entry.get(name) == value for name, value in wanted.items()):
                return entry
        return None

    def close(self) -> None:
        self._closed.set()
        if self._reader is not None:
            self._reader.join()
        self.sock.close()

    def __enter__(self) -> FakeJournald:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RealJournald:
    """systemd-journald in a namespace of its own, stopped and its files removed by `stop()`."""

    def __init__(self, namespace: str, process: subprocess.Popen[bytes]) -> None:
        self.namespace = namespace
        self.process = process

    @staticmethod
    def available() -> str | None:
        """Why a real journald cannot be run here, or None when it can."""
        if not JOURNALD.exists() or shutil.which("journalctl") is None:
            return "systemd-journald is not installed (scripts/test.sh installs systemd)"
        if os.geteuid() != 0:
            return "a journald namespace needs root (it writes /var/log/journal)"
        return None

    @classmethod
    def start(cls) -> RealJournald:
        namespace = f"mtagenttest{secrets.token_hex(4)}"
        process = subprocess.Popen(
            [str(JOURNALD), namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        journald = cls(namespace, process)
        try:
            wait_until(
                journald.socket.exists, timeout=15, what=f"journald's socket {journald.socket}"
            )
        except BaseException:
            journald.stop()
            raise
        return journald

    @property
    def socket(self) -> Path:
        return Path(f"/run/systemd/journal.{self.namespace}/socket")

    def environment(self, *, fd: int) -> dict[str, str]:
        stat = os.fstat(fd)
        return {
            "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}",
            JOURNAL_SOCKET_ENV: str(self.socket),
        }

    def entries(self) -> list[dict[str, Any]]:
        """What journald stored from mtagent, as `journalctl -o json --all` shows it."""
        shown = subprocess.run(
            [
                "journalctl", f"--namespace={self.namespace}", "--output=json", "--all",
                "--no-pager", "SYSLOG_IDENTIFIER=mtagent",
            ],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return [json.loads(line) for line in shown.stdout.splitlines()]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        machine = Path("/etc/machine-id").read_text().strip()
        for directory in (
            Path(f"/run/systemd/journal.{self.namespace}"),
            Path(f"/var/log/journal/{machine}.{self.namespace}"),
            Path(f"/run/log/journal/{machine}.{self.namespace}"),
        ):
            shutil.rmtree(directory, ignore_errors=True)
