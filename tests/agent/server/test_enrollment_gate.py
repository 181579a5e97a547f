"""The enrollment endpoints' memory (agent.server.enrollment_api.EnrollmentGate): nonces used once
and for a minute at most, and the lock that failed proofs set, on a clock the test moves."""

from __future__ import annotations

import pytest

from agent.server import enrollment_api
from agent.server.enrollment_api import LOCK_FAILURES, LOCK_SECONDS, NONCE_SECONDS, EnrollmentGate
from protocol.errors import EnrollmentLocked


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(enrollment_api.time, "monotonic", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def test_a_nonce_works_once_and_only_for_its_passphrase(clock: Clock) -> None:
    gate = EnrollmentGate()
    nonce = gate.new_nonce("ABCDE")

    assert not gate.take_nonce(nonce, "FGHIJ")  # and it is used up by the attempt
    assert not gate.take_nonce(nonce, "ABCDE")
    again = gate.new_nonce("ABCDE")
    assert gate.take_nonce(again, "ABCDE")
    assert not gate.take_nonce(again, "ABCDE")


def test_a_nonce_goes_stale_after_a_minute(clock: Clock) -> None:
    gate = EnrollmentGate()
    nonce = gate.new_nonce("ABCDE")

    clock.now += NONCE_SECONDS + 1

    assert not gate.take_nonce(nonce, "ABCDE")


def test_failed_proofs_lock_for_a_while_then_enrollment_opens_again(clock: Clock) -> None:
    gate = EnrollmentGate()
    for _ in range(LOCK_FAILURES - 1):
        gate.failed()
    gate.check_open()

    gate.failed()

    with pytest.raises(EnrollmentLocked) as locked:
        gate.check_open()
    assert locked.value.details["retry_after_seconds"] == int(LOCK_SECONDS) + 1
    clock.now += LOCK_SECONDS
    gate.check_open()


def test_failures_spread_over_more_than_the_window_do_not_lock(clock: Clock) -> None:
    gate = EnrollmentGate()
    for _ in range(LOCK_FAILURES * 2):
        gate.failed()
        clock.now += LOCK_SECONDS / (LOCK_FAILURES - 1) + 1
        gate.check_open()
