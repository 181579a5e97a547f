"""Where the daemon's records go: journald's native socket when stderr is the journal (the test
binds its own datagram socket and reads the bytes that arrive), `<N>` lines when that socket
cannot be used, plain `key=value` lines elsewhere."""

from __future__ import annotations

import fcntl
import inspect
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.log_fields import log_fields
from agent.server.log_handlers import JOURNAL_SOCKET_ENV, configure_logging
from tests.support.journald import FakeJournald, RealJournald, parse_entry
from tests.support.waiting import wait_until

HERE = __file__


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[FakeJournald]:
    with FakeJournald(tmp_path / "journal.socket") as journald:
        yield journald


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_under_journald_a_record_is_one_datagram_of_native_fields(journald: FakeJournald) -> None:
    configure_logging("info", journald.environment(fd=2))
    line = _next_line()
    logging.getLogger("agent.replication.replica").info(
        "disk vm1-disk0: state ok (was resyncing)",
        extra=log_fields(disk="vm1-disk0", state="ok", previous="resyncing"),
    )
    assert journald.receive() == (
        b"MESSAGE=disk vm1-disk0: state ok (was resyncing)\n"
        b"PRIORITY=6\n"
        b"SYSLOG_IDENTIFIER=mtagent\n"
        b"LOGGER=agent.replication.replica\n"
        + f"CODE_FILE={HERE}\nCODE_LINE={line}\n".encode()
        + b"CODE_FUNC=test_under_journald_a_record_is_one_datagram_of_native_fields\n"
        b"DISK=vm1-disk0\n"
        b"STATE=ok\n"
        b"PREVIOUS=resyncing\n"
    )


@pytest.mark.usefixtures("restore_root_logger")
def test_a_value_with_newlines_is_sent_with_its_length(journald: FakeJournald) -> None:
    configure_logging("info", journald.environment(fd=2))
    try:
        raise OSError("disk gone")
    except OSError:
        logging.getLogger("agent.replication.apply").exception("batch 2 failed")
    datagram = journald.receive()
    fields = dict(parse_entry(datagram))
    message = fields["MESSAGE"]
    assert message.startswith(b"batch 2 failed\nTraceback (most recent call last):\n")
    assert message.endswith(b"OSError: disk gone")
    # The binary-safe form: the name, a newline, the length (64-bit little endian), the value.
    assert datagram.startswith(b"MESSAGE\n" + struct.pack("<Q", len(message)) + message + b"\n")
    assert fields["PRIORITY"] == b"3"


@pytest.mark.usefixtures("restore_root_logger")
def test_an_entry_too_large_for_a_datagram_goes_in_a_sealed_memfd(journald: FakeJournald) -> None:
    configure_logging("info", journald.environment(fd=2))
    huge = "x" * (1 << 20)
    logging.getLogger("agent").warning(huge)
    payload, fds, _flags, _address = socket.recv_fds(journald.sock, 1024, 1)
    assert payload == b"" and len(fds) == 1
    try:
        seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
        with os.fdopen(os.dup(fds[0]), "rb") as memfd:
            memfd.seek(0)
            fields = dict(parse_entry(memfd.read()))
    finally:
        for fd in fds:
            os.close(fd)
    assert fields["MESSAGE"] == huge.encode()
    assert fields["PRIORITY"] == b"4"


@pytest.mark.usefixtures("restore_root_logger")
def test_a_structured_field_cannot_replace_the_entrys_own(journald: FakeJournald) -> None:
    configure_logging("info", journald.environment(fd=2))
    logging.getLogger("agent").info("real", extra=log_fields(message="forged", priority=2))
    fields = parse_entry(journald.receive())
    assert [value for name, value in fields if name in ("MESSAGE", "PRIORITY")] == [b"real", b"6"]


@pytest.mark.usefixtures("restore_root_logger")
def test_when_the_journal_socket_cannot_be_used_lines_carry_their_priority(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    stat = os.fstat(2)
    configure_logging(
        "info",
        {
            "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}",
            JOURNAL_SOCKET_ENV: str(tmp_path / "nothing-listens"),
        },
    )
    logging.getLogger("mtagent").info("ready: 1 disks", extra=log_fields(disks=1))
    try:
        raise OSError("disk gone")
    except OSError:
        logging.getLogger("agent.replication.apply").exception("batch 2 failed")
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "<6>mtagent: ready: 1 disks disks=1"
    assert lines[1] == "<3>agent.replication.apply: batch 2 failed"
    assert lines[-1] == "<3>OSError: disk gone"
    assert all(line.startswith("<3>") for line in lines[1:])


@pytest.mark.usefixtures("restore_root_logger")
def test_a_record_journald_does_not_take_goes_to_stderr_with_its_priority(
    journald: FakeJournald, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", journald.environment(fd=2))
    journald.sock.close()
    journald.address.unlink()  # journald stopped after the agent started
    logging.getLogger("agent.retention.keeper").warning("retention full")
    assert capfd.readouterr().err == "<4>agent.retention.keeper: retention full\n"


@pytest.mark.usefixtures("restore_root_logger")
def test_an_inherited_journal_stream_that_is_not_stderr_means_plain_lines(
    journald: FakeJournald, capfd: pytest.CaptureFixture[str]
) -> None:
    environment = journald.environment(fd=2)
    environment["JOURNAL_STREAM"] = "8:12345"  # our parent's stderr, not ours
    configure_logging("info", environment)
    logging.getLogger("agent.replication.replica").info(
        "disk d0: state resync_required",
        extra=log_fields(disk="d0", state="resync_required", reason="a gap: batch 7 lost"),
    )
    line = capfd.readouterr().err
    assert line.endswith(
        " INFO agent.replication.replica: disk d0: state resync_required"
        ' disk=d0 state=resync_required reason="a gap: batch 7 lost"\n'
    )
    journald.sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        journald.receive()


@pytest.mark.usefixtures("restore_root_logger")
def test_the_level_leaves_out_what_is_less_important(journald: FakeJournald) -> None:
    configure_logging("warning", journald.environment(fd=2))
    logging.getLogger("agent").info("not wanted")
    logging.getLogger("agent").debug("not wanted either")
    logging.getLogger("agent").warning("wanted")
    assert dict(parse_entry(journald.receive()))["MESSAGE"] == b"wanted"


@pytest.mark.skipif(RealJournald.available() is not None, reason=str(RealJournald.available()))
@pytest.mark.usefixtures("restore_root_logger")
def test_a_real_journald_stores_each_entry_with_its_fields() -> None:
    journald = RealJournald.start()
    try:
        configure_logging("info", journald.environment(fd=2))
        logging.getLogger("agent.replication.replica").info(
            "disk d0: state ok (was resyncing)",
            extra=log_fields(disk="d0", state="ok", previous="resyncing"),
        )
        try:
            raise OSError("disk gone")
        except OSError:
            logging.getLogger("agent.replication.apply").exception("batch 2 failed")
        logging.getLogger("agent").warning("x" * (1 << 20))  # through a memfd
        entries = wait_until(
            lambda: (found := journald.entries()) and len(found) == 3 and found,
            timeout=15,
            what="journald to store the three entries",
        )
    finally:
        journald.stop()
    state, failure, huge = entries
    assert {k: state[k] for k in ("MESSAGE", "DISK", "STATE", "PREVIOUS", "PRIORITY")} == {
        "MESSAGE": "disk d0: state ok (was resyncing)",
        "DISK": "d0",
        "STATE": "ok",
        "PREVIOUS": "resyncing",
        "PRIORITY": "6",
    }
    assert state["_TRANSPORT"] == "journal" and state["LOGGER"] == "agent.replication.replica"
    assert failure["MESSAGE"].startswith("batch 2 failed\nTraceback (most recent call last):")
    assert failure["MESSAGE"].endswith("OSError: disk gone") and failure["PRIORITY"] == "3"
    assert huge["MESSAGE"] == "x" * (1 << 20)


def _next_line() -> int:
    """The line number after the caller's."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno + 1
