"""Property tests of the batch codec (Hypothesis).

Valid batches round-trip however they are cut; damaged ones fail only with a
ProtocolError, and no Data event ever carries bytes that were not sent for its offset.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.decoder import BatchDecoder
from protocol.encoder import BatchEncoder, encode_frame
from protocol.errors import BadFrame, ProtocolError
from protocol.events import Begin, Data, End, Event, Tag, Zero
from protocol.wire import BEGIN_FLAGS, HEADER, MAGIC, FrameType

DISK = "fuzz-disk"
SEQ = 11
SECTOR = 512
DISK_SECTORS = 64
DISK_BYTES = DISK_SECTORS * SECTOR

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sector_data(draw: st.DrawFn, sectors: int) -> bytes:
    size = sectors * SECTOR
    kind = draw(st.sampled_from(["random", "repeated", "zeros"]))
    if kind == "random":
        return draw(st.binary(min_size=size, max_size=size))
    if kind == "zeros":
        return bytes(size)
    pattern = draw(st.binary(min_size=1, max_size=16))
    return (pattern * size)[:size]


@st.composite
def batches(draw: st.DrawFn) -> list[Event]:
    """A valid batch for DISK/SEQ: BEGIN, extents, maybe a TAG (END is the encoder's)."""
    flags = draw(st.frozensets(st.sampled_from(sorted(BEGIN_FLAGS))))
    events: list[Event] = [Begin(DISK, SEQ, draw(st.integers(0, 2**63 - 1)), flags)]
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, DISK_SECTORS - 1))
        sectors = draw(st.integers(1, min(8, DISK_SECTORS - start)))
        if draw(st.booleans()):
            events.append(Data(start * SECTOR, sector_data(draw, sectors)))
        else:
            events.append(Zero(start * SECTOR, sectors * SECTOR))
    if draw(st.booleans()):
        events.append(
            Tag(
                draw(st.text(max_size=20)),
                draw(st.text(max_size=20)),
                draw(st.sampled_from(["app", "crash"])),
                draw(st.text(max_size=20)),
                draw(st.integers(0, 2**63 - 1)),
            )
        )
    return events


def encode(events: list[Event], compress: bool) -> bytes:
    enc = BatchEncoder(SEQ, compress=compress)
    return b"".join([*(enc.encode(e) for e in events), enc.end()])


def cut(body: bytes, sizes: list[int]) -> list[bytes]:
    pieces, pos, i = [], 0, 0
    while pos < len(body):
        pieces.append(body[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return pieces


def run(pieces: list[bytes]) -> tuple[list[Event], ProtocolError | None]:
    """Events decoded until the first error, and that error (None if the batch is whole)."""
    dec = BatchDecoder(disk=DISK, seq=SEQ, disk_bytes=DISK_BYTES, sector_bytes=SECTOR)
    events: list[Event] = []
    try:
        for piece in pieces:
            events += dec.feed(piece)
        dec.eof()
    except ProtocolError as exc:
        return events, exc
    return events, None


split_sizes = st.lists(st.integers(1, 700), min_size=1, max_size=8)


@FAST
@given(events=batches(), compress=st.booleans(), sizes=split_sizes)
def test_valid_batches_round_trip_under_random_splits(
    events: list[Event], compress: bool, sizes: list[int]
) -> None:
    decoded, error = run(cut(encode(events, compress), sizes))
    assert error is None
    assert decoded[:-1] == [
        Data(e.offset, e.data, i)
        if isinstance(e, Data)
        else Zero(e.offset, e.length, i)
        if isinstance(e, Zero)
        else e
        for i, e in enumerate(events)
    ]
    extents = [e for e in events if isinstance(e, Data | Zero)]
    data_bytes = sum(len(e.data) if isinstance(e, Data) else e.length for e in extents)
    assert decoded[-1] == End(len(events) + 1, data_bytes)


@st.composite
def damaged(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` with one to three random edits: bit flips, overwrites, deletions, insertions."""
    out = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            break
        op = draw(st.sampled_from(["flip", "overwrite", "delete", "insert", "truncate"]))
        at = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            out[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del out[at:]
    return bytes(out)


@FAST
@given(data=st.data(), events=batches(), compress=st.booleans(), sizes=split_sizes)
def test_damaged_batches_fail_cleanly_and_never_yield_unsent_data(
    data: st.DataObject, events: list[Event], compress: bool, sizes: list[int]
) -> None:
    body = encode(events, compress)
    bad = data.draw(damaged(body))
    decoded, error = run(cut(bad, sizes))
    sent = {(e.offset, bytes(e.data)) for e in events if isinstance(e, Data)}
    for event in decoded:
        if isinstance(event, Data):
            assert (event.offset, event.data) in sent
    if bad != body:
        # One edit could in theory leave a valid batch (an edit that restores
        # the byte it hit); any other outcome must be a ProtocolError.
        assert error is not None or decoded == run([body])[0]


@FAST
@given(junk=st.binary(max_size=2000), sizes=split_sizes)
def test_arbitrary_bytes_fail_only_with_a_protocol_error(junk: bytes, sizes: list[int]) -> None:
    decoded, error = run(cut(junk, sizes))
    assert error is not None
    assert decoded == []


@FAST
@given(
    fields=st.tuples(
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 2**16 - 1),
        st.one_of(
            st.integers(0, 2**64 - 1), st.integers(0, DISK_SECTORS).map(lambda s: s * SECTOR)
        ),
        st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 8).map(lambda s: s * SECTOR)),
        st.integers(0, 5000),
        st.integers(0, 2**64 - 1),
    ),
    payload=st.binary(max_size=5000),
    sizes=split_sizes,
)
def test_sealed_headers_with_random_fields_fail_only_with_a_protocol_error(
    fields: tuple[int, ...], payload: bytes, sizes: list[int]
) -> None:
    # A correct header digest gets a header past the first check: every field rule
    # behind it is then exercised with arbitrary values.
    ftype, flags, reserved, offset, length, payload_len, digest = fields
    head = HEADER.pack(MAGIC, ftype, flags, reserved, offset, length, payload_len, digest, 0)[:32]
    frame = head + xxhash.xxh3_64_intdigest(head, seed=SEQ).to_bytes(8, "little") + payload
    begin = BatchEncoder(SEQ).encode(Begin(DISK, SEQ, 0))
    decoded, error = run([begin, *cut(frame, sizes)])
    assert decoded[0] == Begin(DISK, SEQ, 0)
    for event in decoded[1:]:
        if isinstance(event, Data):
            assert xxhash.xxh3_64_intdigest(event.data) == digest
            assert len(event.data) == length
            assert event.offset % SECTOR == 0
            assert event.offset + length <= DISK_BYTES
    assert error is not None  # no END ever follows


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def begin_objects() -> st.SearchStrategy[Any]:
    good: dict[str, st.SearchStrategy[Any]] = {
        "disk": st.just(DISK),
        "seq": st.just(SEQ),
        "source_time_ns": st.integers(0, 2**63 - 1),
        "flags": st.lists(st.sampled_from(sorted(BEGIN_FLAGS)), max_size=2, unique=True),
    }
    nearly = st.fixed_dictionaries(
        {key: value | json_values for key, value in good.items()},
        optional={"extra": json_values},
    )
    return nearly | json_values


@FAST
@given(obj=begin_objects())
def test_any_json_in_begin_is_accepted_exactly_when_it_is_the_protocol_object(obj: Any) -> None:
    payload = json.dumps(obj).encode()
    frame = encode_frame(SEQ, FrameType.BEGIN, payload=payload)
    decoded, error = run([frame])
    valid = (
        isinstance(obj, dict)
        and obj.keys() == {"disk", "seq", "source_time_ns", "flags"}
        and obj["disk"] == DISK
        and type(obj["seq"]) is int
        and obj["seq"] == SEQ
        and type(obj["source_time_ns"]) is int
        and 0 <= obj["source_time_ns"] < 2**63
        and isinstance(obj["flags"], list)
        and all(type(f) is str and f in BEGIN_FLAGS for f in obj["flags"])
        and len(set(obj["flags"])) == len(obj["flags"])
    )
    if valid:
        assert decoded == [Begin(DISK, SEQ, obj["source_time_ns"], frozenset(obj["flags"]))]
        assert error is not None and error.code == "TRUNCATED"
    else:
        assert decoded == []
        assert isinstance(error, BadFrame)
        assert error.frame == 0
