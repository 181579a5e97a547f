"""Every malformed batch body gets its error code and the index of the frame at fault.

Each case is decoded fed whole, one byte at a time and split at random (seeded): the
error must be the same however the body is cut.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import lz4.block
import pytest
import xxhash

from protocol.decoder import BatchDecoder, lz4_payload_bound
from protocol.encoder import BatchEncoder, encode_frame
from protocol.errors import (
    BadFrame,
    BadMagic,
    BadOrder,
    BatchTooLarge,
    ChecksumMismatch,
    FrameTooLarge,
    OutOfRange,
    ProtocolError,
    Truncated,
    UnsupportedVersion,
)
from protocol.events import Begin, Data
from protocol.wire import FLAG_LZ4, HEADER, MAX_JSON_PAYLOAD, FrameType

DISK = "disk-a"
SEQ = 7
SECTOR = 512
DISK_BYTES = 64 * SECTOR
PLAIN = random.Random(3).randbytes(SECTOR)
TEXT = (b"all work and no play makes jack a dull boy. " * 24)[: 2 * SECTOR]
FIELDS = ("magic", "type", "flags", "reserved", "offset", "length", "payload_len", "digest")


def decoder(**overrides: Any) -> BatchDecoder:
    args: dict[str, Any] = {
        "disk": DISK,
        "seq": SEQ,
        "disk_bytes": DISK_BYTES,
        "sector_bytes": SECTOR,
    }
    args.update(overrides)
    return BatchDecoder(**args)


def chunkings(body: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [body]
    yield "bytewise", [body[i : i + 1] for i in range(len(body))]
    for seed in range(3):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(body)), min(max(len(body) - 1, 0), 10)))
        yield (
            f"random-{seed}",
            [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)],
        )


def failure(pieces: list[bytes], **overrides: Any) -> ProtocolError:
    dec = decoder(**overrides)
    with pytest.raises(ProtocolError) as info:
        for piece in pieces:
            dec.feed(piece)
        dec.eof()
    return info.value


def seal(head: bytes, seq: int = SEQ) -> bytes:
    return head[:32] + xxhash.xxh3_64_intdigest(head[:32], seed=seq).to_bytes(8, "little")


def alter(frame: bytes, *, reseal: bool = True, **fields: Any) -> bytes:
    """The frame with header fields replaced; resealed so only the altered rule breaks."""
    values = dict(zip(FIELDS, HEADER.unpack(frame[:40])[:8], strict=True))
    values.update(fields)
    head = HEADER.pack(*values.values(), 0)
    return (seal(head) if reseal else head[:32] + frame[32:40]) + frame[40:]


def flip(frame: bytes, byte: int, mask: int = 0x01) -> bytes:
    return frame[:byte] + bytes([frame[byte] ^ mask]) + frame[byte + 1 :]


def raw_json(ftype: FrameType, payload: bytes, seal_seq: int = SEQ) -> bytes:
    return encode_frame(seal_seq, ftype, payload=payload)


def begin(seal_seq: int = SEQ, **fields: Any) -> bytes:
    obj = {"disk": DISK, "seq": SEQ, "source_time_ns": 1, "flags": []} | fields
    return raw_json(FrameType.BEGIN, json.dumps(obj).encode(), seal_seq)


def tag(**fields: Any) -> bytes:
    obj = {"tag_id": "t", "name": "n", "kind": "app", "group": "g", "time_ns": 2} | fields
    return raw_json(FrameType.TAG, json.dumps(obj).encode())


def end(frames: int, data_bytes: int, **fields: Any) -> bytes:
    obj = {"frames": frames, "data_bytes": data_bytes} | fields
    return raw_json(FrameType.END, json.dumps(obj).encode())


def data(offset: int = 0, content: bytes = PLAIN, seal_seq: int = SEQ) -> bytes:
    return encode_frame(
        seal_seq, FrameType.DATA, payload=content, offset=offset, length=len(content)
    )


def lz4_data(offset: int = 0, content: bytes = TEXT) -> bytes:
    block = lz4.block.compress(content, store_size=False)
    # Token, one length byte (the first literal run is 44 bytes), then the literals:
    # "lz4-literal-changed" flips the second literal.
    assert block[2:4] == content[:2]
    digest = xxhash.xxh3_64_intdigest(content)
    return encode_frame(
        SEQ,
        FrameType.DATA,
        payload=block,
        offset=offset,
        length=len(content),
        flags=FLAG_LZ4,
        digest=digest,
    )


def zero(offset: int = 0, length: int = SECTOR) -> bytes:
    return encode_frame(SEQ, FrameType.ZERO, offset=offset, length=length)


def body(*frames: bytes) -> bytes:
    return b"".join(frames)


# (body, error class, index of the frame at fault, decoder overrides)
Case = tuple[bytes, type[ProtocolError], int, dict[str, Any]]

CASES: dict[str, Case] = {
    # magic and version
    "bad-magic-first-frame": (body(alter(begin(), magic=b"XTF1"), end(2, 0)), BadMagic, 0, {}),
    "http-request-instead-of-frames": (
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" * 3,
        BadMagic,
        0,
        {},
    ),
    "bad-magic-later-frame": (body(begin(), alter(data(), magic=bytes(4))), BadMagic, 1, {}),
    "unsupported-version": (
        body(alter(begin(), magic=b"MTF2"), end(2, 0)),
        UnsupportedVersion,
        0,
        {},
    ),
    "unsupported-version-later": (
        body(begin(), zero(), alter(zero(), magic=b"MTF0")),
        UnsupportedVersion,
        2,
        {},
    ),
    # header digest
    "flipped-offset-bit": (
        body(begin(), flip(data(4096), 9, 0x20), end(3, 512)),
        ChecksumMismatch,
        1,
        {},
    ),
    "flipped-length-bit": (
        body(begin(), flip(zero(0, 512), 17, 0x04), end(3, 512)),
        ChecksumMismatch,
        1,
        {},
    ),
    "flipped-header-digest-bit": (body(begin(), flip(zero(), 39, 0x80)), ChecksumMismatch, 1, {}),
    "data-frame-of-another-seq": (
        body(begin(), zero(), data(seal_seq=SEQ + 1)),
        ChecksumMismatch,
        2,
        {},
    ),
    "begin-of-another-seq": (body(begin(seal_seq=SEQ + 1), end(2, 0)), ChecksumMismatch, 0, {}),
    "digest-checked-before-type": (
        body(begin(), alter(zero(), reseal=False, type=9)),
        ChecksumMismatch,
        1,
        {},
    ),
    # payload digests
    "raw-data-payload-flipped": (
        body(begin(), flip(data(), 40 + 100), end(3, 512)),
        ChecksumMismatch,
        1,
        {},
    ),
    "lz4-data-wrong-digest": (
        body(begin(), alter(lz4_data(), digest=12345), end(3, 1024)),
        ChecksumMismatch,
        1,
        {},
    ),
    "lz4-literal-changed": (
        body(begin(), flip(lz4_data(), 43, 0x20), end(3, 1024)),
        ChecksumMismatch,
        1,
        {},
    ),
    "begin-payload-flipped": (body(flip(begin(), 45), end(2, 0)), ChecksumMismatch, 0, {}),
    "tag-payload-flipped": (
        body(begin(), zero(), flip(tag(), 50), end(4, 512)),
        ChecksumMismatch,
        2,
        {},
    ),
    "end-payload-flipped": (body(begin(), flip(end(2, 0), 44)), ChecksumMismatch, 1, {}),
    # LZ4
    "lz4-garbage": (
        body(
            begin(),
            encode_frame(
                SEQ, FrameType.DATA, payload=b"\xff" * 64, length=SECTOR, flags=FLAG_LZ4, digest=1
            ),
        ),
        BadFrame,
        1,
        {},
    ),
    "lz4-decompresses-short": (
        body(begin(), alter(lz4_data(), length=4 * SECTOR)),
        BadFrame,
        1,
        {},
    ),
    "lz4-payload-over-its-bound": (
        body(begin(), alter(lz4_data()[:40], payload_len=lz4_payload_bound(len(TEXT)) + 1)),
        BadFrame,
        1,
        {},
    ),
    "lz4-payload-empty": (body(begin(), alter(lz4_data()[:40], payload_len=0)), BadFrame, 1, {}),
    # header fields
    "unknown-type": (body(begin(), alter(zero(), type=9)), BadFrame, 1, {}),
    "type-zero": (body(begin(), alter(zero(), type=0)), BadFrame, 1, {}),
    "reserved-nonzero": (body(begin(), alter(zero(), reserved=1)), BadFrame, 1, {}),
    "flag-on-zero": (body(begin(), alter(zero(), flags=FLAG_LZ4)), BadFrame, 1, {}),
    "unknown-flag-on-data": (body(begin(), alter(data(), flags=0x02)), BadFrame, 1, {}),
    "flag-on-begin": (body(alter(begin(), flags=FLAG_LZ4)), BadFrame, 0, {}),
    "begin-with-offset": (body(alter(begin(), offset=SECTOR)), BadFrame, 0, {}),
    "end-with-length": (body(begin(), alter(end(2, 0), length=SECTOR)), BadFrame, 1, {}),
    "misaligned-data-offset": (body(begin(), data(100)), BadFrame, 1, {}),
    "misaligned-data-length": (body(begin(), data(0, PLAIN + b"x")), BadFrame, 1, {}),
    "misaligned-zero-offset": (body(begin(), zero(SECTOR + 1)), BadFrame, 1, {}),
    "misaligned-for-4k-sectors": (body(begin(), data(SECTOR)), BadFrame, 1, {"sector_bytes": 4096}),
    "zero-of-length-0": (body(begin(), zero(0, 0)), BadFrame, 1, {}),
    "data-of-length-0": (body(begin(), data(0, b"")), BadFrame, 1, {}),
    "raw-payload-len-differs": (
        body(begin(), alter(data(), payload_len=SECTOR - 1)),
        BadFrame,
        1,
        {},
    ),
    "zero-with-payload": (
        body(begin(), encode_frame(SEQ, FrameType.ZERO, payload=PLAIN, length=SECTOR, digest=0)),
        BadFrame,
        1,
        {},
    ),
    "zero-with-digest": (body(begin(), alter(zero(), digest=1)), BadFrame, 1, {}),
    # ranges and limits
    "data-past-end-of-disk": (
        body(begin(), data(DISK_BYTES - SECTOR, PLAIN * 2)),
        OutOfRange,
        1,
        {},
    ),
    "zero-past-end-of-disk": (body(begin(), zero(DISK_BYTES, SECTOR)), OutOfRange, 1, {}),
    "offset-near-2-64": (body(begin(), zero(2**64 - SECTOR, SECTOR)), OutOfRange, 1, {}),
    "data-over-frame-limit": (
        body(begin(), data(0, PLAIN * 4)),
        FrameTooLarge,
        1,
        {"max_frame_bytes": 1024},
    ),
    "json-over-limit": (
        body(begin(), alter(tag(), payload_len=MAX_JSON_PAYLOAD + 1)),
        FrameTooLarge,
        1,
        {},
    ),
    "batch-over-limit": (
        body(begin(), data(0), zero(0, 2 * SECTOR), data(SECTOR)),
        BatchTooLarge,
        3,
        {"max_batch_bytes": 3 * SECTOR},
    ),
    "zero-over-batch-limit": (
        body(begin(), zero(0, 8 * SECTOR)),
        BatchTooLarge,
        1,
        {"max_batch_bytes": 4 * SECTOR},
    ),
    # END counts
    "end-frames-too-few": (body(begin(), zero(), end(2, SECTOR)), BadFrame, 2, {}),
    "end-frames-too-many": (body(begin(), zero(), end(4, SECTOR)), BadFrame, 2, {}),
    "end-data-bytes-wrong": (body(begin(), data(), lz4_data(), end(4, SECTOR)), BadFrame, 3, {}),
    # order
    "data-first": (body(data(), end(2, SECTOR)), BadOrder, 0, {}),
    "end-first": (body(end(1, 0)), BadOrder, 0, {}),
    "tag-first": (body(tag(), end(2, 0)), BadOrder, 0, {}),
    "two-begins": (body(begin(), begin(), end(3, 0)), BadOrder, 1, {}),
    "begin-after-data": (body(begin(), zero(), begin()), BadOrder, 2, {}),
    "tag-not-before-end": (body(begin(), tag(), zero(), end(4, SECTOR)), BadOrder, 2, {}),
    "two-tags": (body(begin(), tag(), tag(), end(4, 0)), BadOrder, 2, {}),
    "frame-after-end": (body(begin(), end(2, 0), zero()), BadOrder, 2, {}),
    "end-after-end": (body(begin(), end(2, 0), end(3, 0)), BadOrder, 2, {}),
    "one-byte-after-end": (body(begin(), end(2, 0), b"\n"), BadOrder, 2, {}),
    # truncation
    "empty-body": (b"", Truncated, 0, {}),
    "eof-mid-header": (begin()[:20], Truncated, 0, {}),
    "eof-after-header": (body(begin(), data()[:40]), Truncated, 1, {}),
    "eof-mid-payload": (body(begin(), data()[:300]), Truncated, 1, {}),
    "eof-mid-json": (body(begin()[:-1]), Truncated, 0, {}),
    "eof-before-end": (body(begin(), data()), Truncated, 2, {}),
    "eof-after-tag": (body(begin(), tag()), Truncated, 2, {}),
    # JSON
    "begin-not-json": (body(raw_json(FrameType.BEGIN, b"{"), end(2, 0)), BadFrame, 0, {}),
    "begin-not-utf8": (
        body(raw_json(FrameType.BEGIN, b'{"disk":"\xff"}'), end(2, 0)),
        BadFrame,
        0,
        {},
    ),
    "begin-empty-payload": (body(raw_json(FrameType.BEGIN, b""), end(2, 0)), BadFrame, 0, {}),
    "begin-is-array": (body(raw_json(FrameType.BEGIN, b"[]"), end(2, 0)), BadFrame, 0, {}),
    "begin-is-null": (body(raw_json(FrameType.BEGIN, b"null"), end(2, 0)), BadFrame, 0, {}),
    "begin-missing-field": (
        body(raw_json(FrameType.BEGIN, b'{"disk":"disk-a","seq":7,"flags":[]}'), end(2, 0)),
        BadFrame,
        0,
        {},
    ),
    "begin-extra-field": (body(begin(extra=1), end(2, 0)), BadFrame, 0, {}),
    "begin-duplicate-key": (
        body(
            raw_json(
                FrameType.BEGIN,
                b'{"disk":"other","disk":"disk-a","seq":7,"source_time_ns":1,"flags":[]}',
            ),
            end(2, 0),
        ),
        BadFrame,
        0,
        {},
    ),
    "begin-seq-is-bool": (body(begin(seal_seq=1, seq=True), end(2, 0)), BadFrame, 0, {"seq": 1}),
    "begin-seq-is-string": (body(begin(seq="7"), end(2, 0)), BadFrame, 0, {}),
    "begin-time-is-float": (body(begin(source_time_ns=1.0), end(2, 0)), BadFrame, 0, {}),
    "begin-time-is-nan": (
        body(
            raw_json(
                FrameType.BEGIN,
                b'{"disk":"disk-a","seq":7,"source_time_ns":NaN,"flags":[]}',
            ),
            end(2, 0),
        ),
        BadFrame,
        0,
        {},
    ),
    "begin-time-negative": (body(begin(source_time_ns=-1), end(2, 0)), BadFrame, 0, {}),
    "begin-time-over-int64": (body(begin(source_time_ns=2**63), end(2, 0)), BadFrame, 0, {}),
    "begin-flags-not-a-list": (body(begin(flags="resync"), end(2, 0)), BadFrame, 0, {}),
    "begin-flag-unknown": (body(begin(flags=["resync", "fast"]), end(2, 0)), BadFrame, 0, {}),
    "begin-flag-not-a-string": (body(begin(flags=[1]), end(2, 0)), BadFrame, 0, {}),
    "begin-flag-repeated": (body(begin(flags=["resync", "resync"]), end(2, 0)), BadFrame, 0, {}),
    "begin-disk-mismatch": (body(begin(disk="disk-b"), end(2, 0)), BadFrame, 0, {}),
    "begin-seq-mismatch": (body(begin(seq=SEQ + 1), end(2, 0)), BadFrame, 0, {}),
    "tag-kind-unknown": (body(begin(), tag(kind="daily"), end(3, 0)), BadFrame, 1, {}),
    "tag-time-negative": (body(begin(), tag(time_ns=-5), end(3, 0)), BadFrame, 1, {}),
    "tag-name-not-a-string": (body(begin(), tag(name=3), end(3, 0)), BadFrame, 1, {}),
    "tag-missing-group": (
        body(
            begin(), raw_json(FrameType.TAG, b'{"tag_id":"t","name":"n","kind":"app","time_ns":2}')
        ),
        BadFrame,
        1,
        {},
    ),
    "tag-name-lone-surrogate": (
        body(
            begin(),
            raw_json(
                FrameType.TAG,
                b'{"tag_id":"t","name":"\\ud800","kind":"app","group":"g","time_ns":2}',
            ),
        ),
        BadFrame,
        1,
        {},
    ),
    "end-data-bytes-is-bool": (
        body(begin(), raw_json(FrameType.END, b'{"frames":2,"data_bytes":false}')),
        BadFrame,
        1,
        {},
    ),
    "end-is-string": (body(begin(), raw_json(FrameType.END, b'"done"')), BadFrame, 1, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_body_gets_its_code_and_frame_however_it_is_cut(name: str) -> None:
    raw, error, frame, overrides = CASES[name]
    for how, pieces in chunkings(raw):
        err = failure(pieces, **overrides)
        assert (type(err), err.frame) == (error, frame), how


def test_the_well_formed_frames_of_these_cases_decode() -> None:
    # The cases above break one rule each: their building blocks must be valid.
    ok = body(begin(), data(), lz4_data(SECTOR), zero(), tag(), end(6, 4 * SECTOR))
    dec = decoder()
    assert len(dec.feed(ok)) == 6
    dec.eof()


@pytest.mark.parametrize(
    ("head", "error", "overrides"),
    [
        (alter(data(0, PLAIN * 8)[:40]), FrameTooLarge, {"max_frame_bytes": 2048}),
        (alter(tag()[:40], payload_len=MAX_JSON_PAYLOAD + 1), FrameTooLarge, {}),
        (
            alter(data()[:40], length=DISK_BYTES, payload_len=DISK_BYTES),
            BatchTooLarge,
            {"max_batch_bytes": 4096},
        ),
        (alter(data()[:40], offset=DISK_BYTES), OutOfRange, {}),
        (alter(data()[:40], offset=1), BadFrame, {}),
        (flip(data()[:40], 8), ChecksumMismatch, {}),
    ],
    ids=[
        "data-too-large",
        "json-too-large",
        "batch-too-large",
        "out-of-range",
        "misaligned",
        "digest",
    ],
)
def test_header_errors_are_raised_before_the_payload_arrives(
    head: bytes, error: type[ProtocolError], overrides: dict[str, Any]
) -> None:
    dec = decoder(**overrides)
    assert dec.feed(begin()) == [Begin(DISK, SEQ, 1)]
    with pytest.raises(error) as info:
        dec.feed(head)
    assert info.value.frame == 1


def test_error_is_final_and_raised_again_by_feed_and_eof() -> None:
    dec = decoder()
    dec.feed(begin())
    with pytest.raises(ChecksumMismatch) as info:
        dec.feed(flip(data(), 100))
    with pytest.raises(ChecksumMismatch) as again:
        dec.feed(end(2, 0))
    assert again.value is info.value
    with pytest.raises(ChecksumMismatch) as at_eof:
        dec.eof()
    assert at_eof.value is info.value


def test_truncation_is_final_too() -> None:
    dec = decoder()
    dec.feed(begin())
    with pytest.raises(Truncated) as info:
        dec.eof()
    with pytest.raises(Truncated) as again:
        dec.feed(end(2, 0))
    assert again.value is info.value


def test_events_of_earlier_feeds_stand_when_a_later_frame_fails() -> None:
    dec = decoder()
    events = dec.feed(body(begin(), data()))
    assert events == [Begin(DISK, SEQ, 1), Data(0, PLAIN, 1)]
    with pytest.raises(ChecksumMismatch):
        dec.feed(flip(data(), 41))
    assert dec.frames == 2
    assert not dec.finished


def test_error_json_names_code_message_and_frame() -> None:
    err = failure([body(begin(), zero(), flip(data(), 200))])
    assert err.to_json() == {
        "error": {"code": "CHECKSUM_MISMATCH", "message": err.message, "frame": 2, "part": "data"}
    }
    assert err.status == 422
    assert str(err).endswith("(frame 2)")


def test_wrong_end_count_says_what_was_expected_and_what_came() -> None:
    err = failure([body(begin(), zero(), zero(), end(3, 2 * SECTOR))])
    body_json = err.to_json()["error"]
    assert body_json["code"] == "BAD_FRAME"
    assert (body_json["frame"], body_json["field"]) == (3, "frames")
    assert (body_json["expected"], body_json["got"]) == (4, 3)
    assert isinstance(body_json["message"], str) and body_json["message"]


def test_begin_mismatch_names_the_field_and_both_values() -> None:
    err = failure([body(begin(disk="disk-b"), end(2, 0))])
    details = err.to_json()["error"]
    assert (details["field"], details["expected"], details["got"]) == ("disk", DISK, "disk-b")


def test_out_of_range_names_the_extent_and_the_disk_size() -> None:
    err = failure([body(begin(), zero(DISK_BYTES, SECTOR))])
    assert err.status == 416
    assert err.details == {"offset": DISK_BYTES, "length": SECTOR, "disk_bytes": DISK_BYTES}


def test_encoder_output_is_checked_too() -> None:
    # A batch from the encoder for another disk is refused at its BEGIN.
    enc = BatchEncoder(SEQ)
    raw = body(enc.encode(Begin("disk-b", SEQ, 0)), enc.end())
    assert type(failure([raw])) is BadFrame


def test_events_takes_a_frame_only_when_its_event_is_asked_for() -> None:
    # A consumer that waits between events (for memory) holds one event, not a whole chunk's
    # frames decoded: the bad frame behind the first is not looked at until asked for.
    dec = decoder()
    events = dec.events(body(begin(), data(), flip(data(), 100)))
    assert next(events) == Begin(DISK, SEQ, 1)
    assert next(events) == Data(0, PLAIN, 1)
    assert dec.frames == 2
    with pytest.raises(ChecksumMismatch) as info:
        next(events)
    assert info.value.frame == 2
    with pytest.raises(ChecksumMismatch):
        dec.eof()
