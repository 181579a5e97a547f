"""The JSON documents of the protocol (protocol.documents, and the error body of
protocol.errors): what the agent sends, what a reader accepts and what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.documents import (
    BatchResult,
    Disk,
    DiskState,
    Info,
    Point,
    PointKind,
    disks_from_json,
    points_from_json,
)
from protocol.errors import BadDocument, ErrorBody, ProtocolError, SequenceGap

T0 = 1_700_000_000_000_000_000

INFO = Info(version="0.1.0", protocol=1, max_frame_bytes=4 << 20, max_batch_bytes=256 << 20)
DISK = Disk(
    id="vm1-disk0",
    group="vm1",
    size_bytes=8 << 30,
    sector_bytes=512,
    state=DiskState.RESYNCING,
    last_seq=41,
    last_source_time_ns=T0,
    resync=True,
    resync_offset=1 << 30,
    resync_reason="the undo journal committed batches up to 42",
)
POINT = Point("tag:nightly", PointKind.APP, "nightly", T0, {"d0": 3, "d1": 5})
BATCH = BatchResult("d0", 7, 7, DiskState.RESYNCING, 12, 4 << 20, replayed=False)
ERROR = ErrorBody("CHECKSUM_MISMATCH", "bad data", frame=2, details={"part": "data"})
DOCUMENTS = [INFO, DISK, POINT, BATCH, ERROR]

# The shapes of the compatibility baseline's section 2, as a sender written from it expects.
BASELINE_INFO = {
    "agent": "mtagent",
    "version": "1.2.3",
    "protocol": 1,
    "max_frame_bytes": 4194304,
    "max_batch_bytes": 268435456,
}
BASELINE_DISK = {
    "id": "d0",
    "group": "g1",
    "size_bytes": 1048576,
    "sector_bytes": 4096,
    "state": "resync_required",
    "last_seq": 0,
    "last_source_time_ns": 0,
    "resync": True,
}
BASELINE_POINT = {
    "id": "d0@7",
    "kind": "crash",
    "name": "batch 7",
    "time_ns": T0,
    "disks": {"d0": 7},
}
BASELINE_ERROR = {"error": {"code": "SEQUENCE_GAP", "message": "gap", "expected_seq": 3}}


def parse(document: Any, obj: object) -> Any:
    return type(document).from_json(obj)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: type(d).__name__)
def test_a_document_survives_a_round_trip_through_json(document: Any) -> None:
    sent = json.dumps(document.to_json())

    assert parse(document, json.loads(sent)) == document


def test_a_disk_without_its_optional_fields_survives_a_round_trip() -> None:
    plain = Disk("d0", "g1", 1 << 20, 512, DiskState.OK, 3, T0, resync=False)

    assert Disk.from_json(json.loads(json.dumps(plain.to_json()))) == plain


def test_the_agents_json_keeps_its_keys_in_the_order_it_has_always_sent() -> None:
    assert json.dumps(INFO.to_json()) == (
        '{"agent": "mtagent", "version": "0.1.0", "protocol": 1, '
        '"max_frame_bytes": 4194304, "max_batch_bytes": 268435456}'
    )
    assert json.dumps(DISK.to_json()) == (
        '{"id": "vm1-disk0", "group": "vm1", "size_bytes": 8589934592, "sector_bytes": 512, '
        '"state": "resyncing", "last_seq": 41, "last_source_time_ns": 1700000000000000000, '
        '"resync": true, "resync_offset": 1073741824, '
        '"resync_reason": "the undo journal committed batches up to 42"}'
    )
    assert json.dumps(POINT.to_json()) == (
        '{"id": "tag:nightly", "kind": "app", "name": "nightly", '
        '"time_ns": 1700000000000000000, "disks": {"d0": 3, "d1": 5}}'
    )
    assert json.dumps(BATCH.to_json()) == (
        '{"disk": "d0", "seq": 7, "last_seq": 7, "state": "resyncing", "frames": 12, '
        '"data_bytes": 4194304, "replayed": false}'
    )
    assert json.dumps(ERROR.to_json()) == (
        '{"error": {"code": "CHECKSUM_MISMATCH", "message": "bad data", "frame": 2, '
        '"part": "data"}}'
    )


def test_a_disk_sends_its_resync_reason_only_while_there_is_one() -> None:
    plain = Disk("d0", "g1", 1 << 20, 512, DiskState.OK, 3, T0, resync=False)

    assert "resync_reason" not in plain.to_json()
    assert plain.to_json()["resync_offset"] == 0


def test_the_baselines_info_is_read() -> None:
    assert Info.from_json(BASELINE_INFO) == Info("1.2.3", 1, 4194304, 268435456, agent="mtagent")


def test_the_baselines_disk_is_read_with_its_optional_fields_at_their_defaults() -> None:
    disk = Disk.from_json(BASELINE_DISK)

    assert disk.state is DiskState.RESYNC_REQUIRED
    assert (disk.sector_bytes, disk.resync, disk.resync_offset, disk.resync_reason) == (
        4096,
        True,
        0,
        "",
    )


def test_the_baselines_point_is_read() -> None:
    point = Point.from_json(BASELINE_POINT)

    assert point == Point("d0@7", PointKind.CRASH, "batch 7", T0, {"d0": 7})
    assert point.kind is PointKind.CRASH


def test_the_baselines_error_body_is_read_with_its_details() -> None:
    error = ErrorBody.from_json(BASELINE_ERROR)

    assert error == ErrorBody("SEQUENCE_GAP", "gap", frame=None, details={"expected_seq": 3})


def test_a_batch_answer_without_replayed_was_not_a_replay() -> None:
    answer = {"disk": "d0", "seq": 1, "last_seq": 1, "state": "ok", "frames": 3, "data_bytes": 0}

    assert BatchResult.from_json(answer).replayed is False


def test_the_listings_are_read_item_by_item() -> None:
    assert disks_from_json({"disks": [BASELINE_DISK, DISK.to_json()]}) == [
        Disk.from_json(BASELINE_DISK),
        DISK,
    ]
    assert points_from_json({"points": [POINT.to_json()]}) == [POINT]


@pytest.mark.parametrize(
    ("document", "baseline"),
    [(Info, BASELINE_INFO), (Disk, BASELINE_DISK), (Point, BASELINE_POINT)],
    ids=["Info", "Disk", "Point"],
)
def test_fields_a_reader_does_not_know_are_ignored(document: Any, baseline: dict[str, Any]) -> None:
    newer = {**baseline, "added_in_a_later_version": {"any": ["shape"]}}

    assert document.from_json(newer) == document.from_json(baseline)


def test_an_error_body_keeps_fields_it_does_not_know_as_details() -> None:
    body = {"error": {"code": "TEAPOT", "message": "short", "spout": 1}}

    assert ErrorBody.from_json(body).details == {"spout": 1}


@pytest.mark.parametrize(
    ("document", "baseline", "field"),
    [(Info, BASELINE_INFO, name) for name in BASELINE_INFO]
    + [(Disk, BASELINE_DISK, name) for name in BASELINE_DISK]
    + [(Point, BASELINE_POINT, name) for name in BASELINE_POINT],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_document_without_a_required_field_is_refused_naming_it(
    document: Any, baseline: dict[str, Any], field: str
) -> None:
    lacking = {name: value for name, value in baseline.items() if name != field}

    with pytest.raises(BadDocument) as caught:
        document.from_json(lacking)

    assert (caught.value.document, caught.value.field) == (document.__name__, field)
    assert str(caught.value) == f"BAD_DOCUMENT: {document.__name__}.{field} is missing"


@pytest.mark.parametrize(
    ("document", "baseline", "field", "value", "problem"),
    [
        (Info, BASELINE_INFO, "protocol", "1", "is a string, not an integer"),
        (Info, BASELINE_INFO, "max_frame_bytes", True, "is a boolean, not an integer"),
        (Disk, BASELINE_DISK, "resync", 1, "is a number, not true or false"),
        (Disk, BASELINE_DISK, "last_seq", None, "is null, not an integer"),
        (Disk, BASELINE_DISK, "resync_offset", 1.5, "is a number, not an integer"),
        (Disk, BASELINE_DISK, "resync_reason", ["gap"], "is an array, not a string"),
        (Point, BASELINE_POINT, "disks", [7], "is an array, not a JSON object"),
        (Point, BASELINE_POINT, "time_ns", "yesterday", "is a string, not an integer"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_saying_what_it_holds(
    document: Any, baseline: dict[str, Any], field: str, value: object, problem: str
) -> None:
    with pytest.raises(BadDocument) as caught:
        document.from_json({**baseline, field: value})

    assert caught.value.field == field
    assert caught.value.message == f"{document.__name__}.{field} {problem}"


def test_a_state_the_protocol_does_not_name_is_refused() -> None:
    with pytest.raises(
        BadDocument, match=r"Disk.state is 'asleep', not one of ok, resync_required"
    ):
        Disk.from_json({**BASELINE_DISK, "state": "asleep"})


def test_a_point_kind_the_protocol_does_not_name_is_refused() -> None:
    with pytest.raises(BadDocument, match=r"Point.kind is 'warm', not one of app, crash"):
        Point.from_json({**BASELINE_POINT, "kind": "warm"})


def test_a_point_whose_disks_map_to_something_else_than_seqs_is_refused() -> None:
    with pytest.raises(BadDocument) as caught:
        Point.from_json({**BASELINE_POINT, "disks": {"d0": "7"}})

    assert (caught.value.field, caught.value.message) == (
        "disks.d0",
        "Point.disks.d0 is a string, not an integer",
    )


@pytest.mark.parametrize("obj", [[BASELINE_DISK], "d0", None, 3])
def test_a_document_that_is_not_a_json_object_is_refused(obj: object) -> None:
    with pytest.raises(BadDocument, match=r"^BAD_DOCUMENT: Disk is .*, not a JSON object$"):
        Disk.from_json(obj)


@pytest.mark.parametrize(
    "obj",
    [
        {"error": {"message": "no code"}},
        {"error": {"code": 409, "message": "a number"}},
        {"error": {"code": "SEQUENCE_GAP", "message": "gap", "frame": "two"}},
        {"error": "SEQUENCE_GAP"},
        {"code": "SEQUENCE_GAP", "message": "not inside error"},
    ],
)
def test_an_error_body_that_breaks_the_rules_is_refused(obj: object) -> None:
    with pytest.raises(BadDocument):
        ErrorBody.from_json(obj)


def test_a_protocol_error_is_sent_as_its_error_body() -> None:
    error = SequenceGap("disk d0 expects batch 2, got 5", expected_seq=2)

    assert error.body() == ErrorBody("SEQUENCE_GAP", error.message, None, {"expected_seq": 2})
    assert error.to_json() == error.body().to_json()


def test_a_bad_document_is_a_protocol_error_that_asking_again_does_not_cure() -> None:
    # The sender retries answers of status 500 and up: a document that breaks the rules came
    # with a success status, and will come again the same.
    error = BadDocument("Disk", "state", "is missing")

    assert isinstance(error, ProtocolError)
    assert (error.code, error.status) == ("BAD_DOCUMENT", 200)


def test_the_disk_states_are_the_words_of_the_wire() -> None:
    assert [state.value for state in DiskState] == [
        "ok",
        "resync_required",
        "resyncing",
        "missing",
        "protected",
        "recovered",
        "failed_over",
    ]
    assert DiskState.RESYNCING == "resyncing" and f"{DiskState.RESYNCING}" == "resyncing"
    assert json.dumps({"state": DiskState.OK}) == '{"state": "ok"}'


def test_the_point_kinds_are_the_words_of_the_wire() -> None:
    assert [kind.value for kind in PointKind] == ["app", "crash"]
