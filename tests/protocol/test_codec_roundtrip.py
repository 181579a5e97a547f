"""The batch codec: encoder -> decoder round trips, and the bytes docs/protocol.md section 3 fixes.

Every round trip is decoded fed whole, one byte at a time and split at random (seeded),
as bytes, bytearray and memoryview chunks, and must give the same events each way.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator

import lz4.block
import pytest
import xxhash

from protocol.decoder import BatchDecoder
from protocol.encoder import BatchEncoder, encode_frame
from protocol.events import Begin, Data, End, Event, Tag, Zero
from protocol.wire import FLAG_LZ4, MAX_JSON_PAYLOAD, FrameType

DISK = "disk-a"
SEQ = 7
SECTOR = 512
DISK_BYTES = 1024 * SECTOR


def decoder(**overrides: object) -> BatchDecoder:
    args: dict = {"disk": DISK, "seq": SEQ, "disk_bytes": DISK_BYTES, "sector_bytes": SECTOR}
    args.update(overrides)
    return BatchDecoder(**args)


def chunkings(body: bytes) -> Iterator[tuple[str, list]]:
    """The body cut every way the decoder must not care about."""
    yield "whole", [body]
    yield "bytewise", [body[i : i + 1] for i in range(len(body))]
    for seed in range(3):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, 12)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        yield f"random-{seed}", pieces
    yield "bytearray", [bytearray(body[i : i + 97]) for i in range(0, len(body), 97)]
    yield "memoryview", [memoryview(body)[i : i + 1000] for i in range(0, len(body), 1000)]


def decode(pieces: list) -> list[Event]:
    dec = decoder()
    events: list[Event] = []
    for piece in pieces:
        events += dec.feed(piece)
    dec.eof()
    assert dec.finished
    return events


def encode_batch(events: list[Event], *, compress: bool = True) -> bytes:
    enc = BatchEncoder(SEQ, compress=compress)
    return b"".join([*(enc.encode(e) for e in events), enc.end()])


def expected_events(events: list[Event]) -> list[Event]:
    """What the decoder yields for `events`: indexes filled in, the END counts appended."""
    out: list[Event] = []
    data_bytes = 0
    for index, event in enumerate(events):
        if isinstance(event, Data):
            out.append(Data(event.offset, bytes(event.data), index))
            data_bytes += len(event.data)
        elif isinstance(event, Zero):
            out.append(Zero(event.offset, event.length, index))
            data_bytes += event.length
        else:
            out.append(event)
    out.append(End(frames=len(events) + 1, data_bytes=data_bytes))
    return out


BEGIN = Begin(DISK, SEQ, source_time_ns=1_700_000_000_123_456_789)
RANDOM_4K = random.Random(1).randbytes(4096)
TEXT_4K = (b"the quick brown fox jumps over the lazy dog\n" * 94)[:4096]

BATCHES: dict[str, list[Event]] = {
    "begin-end-only": [BEGIN],
    "begin-flags": [Begin(DISK, SEQ, 0, frozenset({"resync", "resync_done"}))],
    "raw-data": [BEGIN, Data(8 * SECTOR, RANDOM_4K)],
    "lz4-data": [BEGIN, Data(0, TEXT_4K)],
    "zero": [BEGIN, Zero(SECTOR, 16 * SECTOR)],
    "tag": [BEGIN, Data(0, TEXT_4K), Tag("t-1", "nightly", "app", "grp", 1_700_000_000_000)],
    "crash-tag-empty-batch": [BEGIN, Tag("t-2", "", "crash", "grp", 0)],
    "mixed-overlapping": [
        BEGIN,
        Data(0, RANDOM_4K),
        Zero(0, SECTOR),
        Data(SECTOR, TEXT_4K[:SECTOR]),
        Data(DISK_BYTES - 4096, TEXT_4K),
        Zero(DISK_BYTES - SECTOR, SECTOR),
    ],
    "unicode-json": [BEGIN, Tag("t-ü", "sauvegarde d'été ☃", "app", 'gr"oup', 5)],
}


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_every_batch_round_trips_however_it_is_cut(name: str) -> None:
    events = BATCHES[name]
    body = encode_batch(events)
    want = expected_events(events)
    for how, pieces in chunkings(body):
        assert decode(pieces) == want, how


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_holds_with_and_without_compression(compress: bool) -> None:
    events = BATCHES["mixed-overlapping"]
    assert decode([encode_batch(events, compress=compress)]) == expected_events(events)


def test_decoded_data_is_bytes_that_later_feeds_do_not_overwrite() -> None:
    body = encode_batch([BEGIN, Data(0, RANDOM_4K), Data(4096, TEXT_4K)], compress=False)
    dec = decoder()
    # One buffer reused for every read, as a socket reader with readinto would.
    buffer = bytearray(300)
    events: list[Event] = []
    for start in range(0, len(body), len(buffer)):
        piece = body[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        events += dec.feed(memoryview(buffer)[: len(piece)])
        buffer[:] = b"\xaa" * len(buffer)
    dec.eof()
    data = [e for e in events if isinstance(e, Data)]
    assert [type(e.data) for e in data] == [bytes, bytes]
    assert [e.data for e in data] == [RANDOM_4K, TEXT_4K]


def test_each_event_comes_out_as_soon_as_its_frame_is_complete() -> None:
    enc = BatchEncoder(SEQ, compress=False)
    begin, data = enc.encode(BEGIN), enc.encode(Data(0, RANDOM_4K))
    dec = decoder()
    assert dec.feed(begin) == [BEGIN]
    assert dec.frames == 1
    assert dec.feed(data[:-1]) == []
    assert dec.feed(data[-1:]) == [Data(0, RANDOM_4K, 1)]
    assert dec.frames == 2
    assert not dec.finished
    assert dec.feed(enc.end()) == [End(3, 4096)]
    assert dec.finished
    dec.eof()


def test_begin_frame_is_bytes_of_protocol_table() -> None:
    # Built from docs/protocol.md 3.1 alone, field by field, as another sender would.
    payload = b'{"disk":"disk-a","seq":7,"source_time_ns":42,"flags":["resync","resync_done"]}'
    head = (
        b"MTF1"
        + bytes([1, 0])
        + b"\x00\x00"
        + (0).to_bytes(8, "little")
        + (0).to_bytes(4, "little")
        + len(payload).to_bytes(4, "little")
        + xxhash.xxh3_64(payload).intdigest().to_bytes(8, "little")
    )
    frame = head + xxhash.xxh3_64(head, seed=SEQ).digest()[::-1] + payload
    encoded = BatchEncoder(SEQ).encode(Begin(DISK, SEQ, 42, frozenset({"resync_done", "resync"})))
    assert encoded == frame


def test_raw_data_frame_is_bytes_of_protocol_table() -> None:
    offset = 3 * SECTOR
    head = struct.pack(
        "<4sBBHQIIQ", b"MTF1", 2, 0, 0, offset, 4096, 4096, xxhash.xxh3_64_intdigest(RANDOM_4K)
    )
    frame = head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head, seed=SEQ)) + RANDOM_4K
    assert BatchEncoder(SEQ).encode(Data(offset, RANDOM_4K)) == frame


def test_lz4_data_frame_carries_a_sizeless_block_and_the_digest_of_the_plain_data() -> None:
    frame = BatchEncoder(SEQ).encode(Data(0, TEXT_4K))
    magic, ftype, flags, reserved, offset, length, payload_len, digest, header_digest = (
        struct.unpack("<4sBBHQIIQQ", frame[:40])
    )
    assert (magic, ftype, flags, reserved, offset, length) == (b"MTF1", 2, FLAG_LZ4, 0, 0, 4096)
    assert payload_len == len(frame) - 40 < 4096
    assert digest == xxhash.xxh3_64_intdigest(TEXT_4K)
    assert header_digest == xxhash.xxh3_64_intdigest(frame[:32], seed=SEQ)
    assert lz4.block.decompress(frame[40:], uncompressed_size=4096) == TEXT_4K


def test_zero_frame_is_bytes_of_protocol_table() -> None:
    head = struct.pack("<4sBBHQIIQ", b"MTF1", 3, 0, 0, 8192, 1024, 0, 0)
    frame = head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head, seed=SEQ))
    assert BatchEncoder(SEQ).encode(Zero(8192, 1024)) == frame


def test_json_payloads_are_compact_utf8_with_the_protocol_fields() -> None:
    enc = BatchEncoder(SEQ)
    tag = enc.encode(Tag("t", "été", "crash", "g", 9))
    end = enc.end()
    assert tag[40:] == '{"tag_id":"t","name":"été","kind":"crash","group":"g","time_ns":9}'.encode()
    assert end[40:] == b'{"frames":2,"data_bytes":0}'


def test_decoder_accepts_json_written_another_way() -> None:
    # Another sender may indent, reorder keys and escape non-ASCII: JSON is JSON.
    def frame(ftype: FrameType, obj: dict) -> bytes:
        return encode_frame(SEQ, ftype, payload=json.dumps(obj, indent=2).encode())

    body = b"".join(
        [
            frame(FrameType.BEGIN, {"flags": [], "source_time_ns": 1, "seq": SEQ, "disk": DISK}),
            frame(
                FrameType.TAG,
                {"time_ns": 3, "group": "g", "kind": "app", "name": "ü", "tag_id": "x"},
            ),
            frame(FrameType.END, {"data_bytes": 0, "frames": 3}),
        ]
    )
    assert decode([body]) == [
        Begin(DISK, SEQ, 1),
        Tag("x", "ü", "app", "g", 3),
        End(3, 0),
    ]


def test_encoder_compresses_only_when_the_block_is_strictly_smaller() -> None:
    enc = BatchEncoder(SEQ)
    incompressible = enc.encode(Data(0, RANDOM_4K))
    compressible = enc.encode(Data(0, TEXT_4K))
    assert incompressible[5] == 0 and len(incompressible) == 40 + 4096
    assert compressible[5] == FLAG_LZ4 and len(compressible) < 40 + 4096


def test_encoder_without_compression_sends_raw_data() -> None:
    frame = BatchEncoder(SEQ, compress=False).encode(Data(0, TEXT_4K))
    assert frame[5] == 0
    assert frame[40:] == TEXT_4K


def test_encoder_takes_data_as_a_memoryview() -> None:
    view = memoryview(bytearray(TEXT_4K))
    assert BatchEncoder(SEQ).encode(Data(0, view)) == BatchEncoder(SEQ).encode(Data(0, TEXT_4K))


def test_encoder_counts_frames_and_data_bytes_and_end_states_them() -> None:
    enc = BatchEncoder(SEQ)
    enc.encode(BEGIN)
    enc.encode(Data(0, RANDOM_4K))
    enc.encode(Zero(4096, 2048))
    assert (enc.frames, enc.data_bytes) == (3, 6144)
    end = enc.end()
    assert json.loads(end[40:]) == {"frames": 4, "data_bytes": 6144}
    assert enc.frames == 4


def test_encoder_encodes_an_end_event_as_given() -> None:
    enc = BatchEncoder(SEQ)
    assert json.loads(enc.encode(End(99, 5))[40:]) == {"frames": 99, "data_bytes": 5}


def test_header_digest_is_seeded_with_the_encoders_seq() -> None:
    one, two = BatchEncoder(1).encode(Zero(0, 512)), BatchEncoder(2).encode(Zero(0, 512))
    assert one[:32] == two[:32]
    assert one[32:40] != two[32:40]


def test_encode_frame_refuses_lz4_data_without_the_plain_digest() -> None:
    with pytest.raises(ValueError, match="digest"):
        encode_frame(SEQ, FrameType.DATA, payload=b"x", length=512, flags=FLAG_LZ4)


def test_encoder_refuses_a_json_payload_over_the_limit() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        BatchEncoder(SEQ).encode(Tag("t", "n" * MAX_JSON_PAYLOAD, "app", "g", 0))


def test_encode_frame_refuses_a_field_too_wide_for_its_slot() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_frame(SEQ, FrameType.ZERO, offset=0, length=2**32)


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("chunk", [65_536 + 7, 1_048_576])
def test_largest_frame_decodes_from_socket_sized_chunks(kind: type, chunk: int) -> None:
    big = random.Random(5).randbytes(4 * 1024 * 1024)
    events = [Begin(DISK, SEQ, 0), Data(4096, big), Data(0, big[:4096])]
    body = encode_batch(events)
    dec = decoder(sector_bytes=4096, disk_bytes=8 * 1024 * 1024)
    decoded: list[Event] = []
    for start in range(0, len(body), chunk):
        decoded += dec.feed(kind(body[start : start + chunk]))
    dec.eof()
    assert decoded == expected_events(events)
