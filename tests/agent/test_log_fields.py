import logging

import pytest

from agent.log_fields import log_fields, record_fields


def test_a_record_carries_its_fields_upper_cased_as_strings(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO):
        logging.getLogger("agent.test").info("x", extra=log_fields(disk="vm1-disk0", seq=7))
    assert record_fields(caplog.records[0]) == {"DISK": "vm1-disk0", "SEQ": "7"}


def test_a_field_whose_value_is_none_is_left_out():
    assert log_fields(disk="d", code=None) == {"mtagent_fields": {"DISK": "d"}}


def test_a_record_logged_without_fields_has_none(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO):
        logging.getLogger("agent.test").info("x")
    assert record_fields(caplog.records[0]) == {}


def test_a_name_journald_would_refuse_is_an_error():
    with pytest.raises(ValueError, match="journald"):
        log_fields(_private=1)
