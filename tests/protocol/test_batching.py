"""Extents into numbered batches of events: sizes, flags, the tag, and reproducibility."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockio.scan.source_image import Extent, delta_extents, full_extents
from protocol.batching import MAX_ZERO_FRAME_BYTES, batch_events, one_batch_events
from protocol.decoder import BatchDecoder
from protocol.encoder import BatchEncoder
from protocol.events import Begin, Data, End, Event, Tag, Zero

KiB = 1024
MiB = 1024 * KiB
SECTOR = 512
DISK = "vm1-disk0"
TIME_NS = 1_700_000_000_123_456_789
TAG = Tag(tag_id="t-42", name="before-upgrade", kind="app", group="vm1", time_ns=TIME_NS)


def split(events: Iterable[Event]) -> list[list[Event]]:
    """The flat stream cut into batches, each from its Begin to its End."""
    batches: list[list[Event]] = []
    for event in events:
        if isinstance(event, Begin):
            batches.append([])
        batches[-1].append(event)
    return batches


def encoded(events: Iterable[Event]) -> list[tuple[int, bytes]]:
    """(seq, body) of every batch, through the real encoder, as a sender would send them."""
    bodies: list[tuple[int, bytes]] = []
    encoder: BatchEncoder | None = None
    parts: list[bytes] = []
    for event in events:
        if isinstance(event, Begin):
            encoder = BatchEncoder(event.seq)
            parts = []
        assert encoder is not None
        parts.append(encoder.encode(event))
        if isinstance(event, End):
            bodies.append((encoder.seq, b"".join(parts)))
    return bodies


def decoded(seq: int, body: bytes, disk_bytes: int) -> list[Event]:
    decoder = BatchDecoder(
        disk=DISK,
        seq=seq,
        disk_bytes=disk_bytes,
        sector_bytes=SECTOR,
        max_frame_bytes=4 * MiB,
        max_batch_bytes=256 * MiB,
    )
    events = decoder.feed(body)
    decoder.eof()
    return events


def applied(image: bytearray, events: Iterable[Event]) -> None:
    for event in events:
        if isinstance(event, Data):
            image[event.offset : event.offset + len(event.data)] = event.data
        elif isinstance(event, Zero):
            image[event.offset : event.offset + event.length] = bytes(event.length)


def extents_of(layout: Iterable[tuple[int, int, bool]], content: bytes) -> Iterator[Extent]:
    """In-memory extents: (offset, length, zero) over `content`."""
    view = memoryview(content)
    for offset, length, zero in layout:
        yield Extent(offset, length, None if zero else view[offset : offset + length])


def image_with_holes(rng: random.Random, chunks: int, chunk: int) -> bytes:
    return b"".join(
        rng.randbytes(chunk) if rng.random() < 0.6 else bytes(chunk) for _ in range(chunks)
    )


def full_stream(
    source: Path, size: int, *, frame: int, batch: int, first_seq: int = 1, start: int = 0
) -> Iterator[Event]:
    return batch_events(
        full_extents(source, chunk_bytes=frame, start=start),
        disk=DISK,
        first_seq=first_seq,
        source_time_ns=TIME_NS,
        frame_bytes=frame,
        batch_bytes=batch,
        resync_end=size,
    )


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


@pytest.fixture
def holey_image(tmp_path: Path, rng: random.Random) -> tuple[Path, bytes]:
    content = image_with_holes(rng, 40, 256 * KiB) + rng.randbytes(8 * KiB + SECTOR)
    path = tmp_path / "src.img"
    path.write_bytes(content)
    return path, content


def test_full_push_batches_cover_consecutive_ranges_of_batch_bytes(
    holey_image: tuple[Path, bytes],
) -> None:
    source, content = holey_image
    batch = 2 * MiB

    batches = split(full_stream(source, len(content), frame=256 * KiB, batch=batch))

    assert len(batches) == -(-len(content) // batch)
    for k, events in enumerate(batches):
        extents = [e for e in events if isinstance(e, Data | Zero)]
        start = extents[0].offset
        end = extents[-1].offset + (
            len(extents[-1].data) if isinstance(extents[-1], Data) else extents[-1].length
        )
        assert (start, end) == (k * batch, min((k + 1) * batch, len(content)))
        assert events[-1] == End(frames=len(events), data_bytes=end - start)


def test_delta_batches_hold_at_most_batch_bytes(tmp_path: Path, rng: random.Random) -> None:
    base_content = rng.randbytes(8 * MiB)
    new = bytearray(base_content)
    for _ in range(60):
        at = rng.randrange(len(new))
        new[at] ^= 0x5A
    (tmp_path / "base.img").write_bytes(base_content)
    (tmp_path / "src.img").write_bytes(new)
    batch = 3 * 64 * KiB + 4096  # not a whole number of blocks: extents get cut

    image = bytearray(base_content)
    sizes = []
    for event in batch_events(
        delta_extents(tmp_path / "src.img", tmp_path / "base.img", chunk_bytes=1 * MiB),
        disk=DISK,
        first_seq=1,
        source_time_ns=TIME_NS,
        frame_bytes=1 * MiB,
        batch_bytes=batch,
    ):
        # Applied at once: the data is borrowed from the reader's buffer.
        applied(image, [event])
        if isinstance(event, End):
            sizes.append(event.data_bytes)

    assert all(size <= batch for size in sizes)
    assert all(size == batch for size in sizes[:-1])  # only the last one is short
    assert image == new


def test_frames_are_at_most_frame_bytes_and_never_cross_its_multiples() -> None:
    content = random.Random(1).randbytes(10 * MiB)
    frame = 768 * KiB
    layout = [(4096, 3 * MiB, False), (3 * MiB + 4096, 1 * MiB, True), (5 * MiB, 5 * MiB, False)]

    events = list(
        batch_events(
            extents_of(layout, content),
            disk=DISK,
            first_seq=1,
            source_time_ns=TIME_NS,
            frame_bytes=frame,
            batch_bytes=64 * MiB,
        )
    )

    data = [e for e in events if isinstance(e, Data)]
    assert all(0 < len(e.data) <= frame for e in data)
    assert all(e.offset // frame == (e.offset + len(e.data) - 1) // frame for e in data)
    assert sum(len(e.data) for e in data) == 8 * MiB


def test_zero_frames_are_cut_at_multiples_of_the_zero_frame_limit() -> None:
    size = 3 * MAX_ZERO_FRAME_BYTES
    layout = [(4096, size - 4096, True)]

    events = list(
        batch_events(
            extents_of(layout, b""),
            disk=DISK,
            first_seq=1,
            source_time_ns=TIME_NS,
            frame_bytes=1 * MiB,
            batch_bytes=size,
        )
    )

    assert [e for e in events if isinstance(e, Zero)] == [
        Zero(4096, MAX_ZERO_FRAME_BYTES - 4096),
        Zero(MAX_ZERO_FRAME_BYTES, MAX_ZERO_FRAME_BYTES),
        Zero(2 * MAX_ZERO_FRAME_BYTES, MAX_ZERO_FRAME_BYTES),
    ]


def test_full_push_flags_every_batch_resync_and_the_last_resync_done(
    holey_image: tuple[Path, bytes],
) -> None:
    source, content = holey_image

    begins = [
        e
        for e in full_stream(source, len(content), frame=256 * KiB, batch=1 * MiB)
        if isinstance(e, Begin)
    ]

    assert len(begins) > 2
    assert all(b.flags == {"resync"} for b in begins[:-1])
    assert begins[-1].flags == {"resync", "resync_done"}


def test_one_batch_full_push_carries_both_flags(holey_image: tuple[Path, bytes]) -> None:
    source, content = holey_image

    begins = [
        e
        for e in full_stream(source, len(content), frame=1 * MiB, batch=64 * MiB)
        if isinstance(e, Begin)
    ]

    assert begins == [Begin(DISK, 1, TIME_NS, frozenset({"resync", "resync_done"}))]


def test_delta_batches_carry_no_flags() -> None:
    content = random.Random(2).randbytes(4 * MiB)
    layout = [(0, 1 * MiB, False), (2 * MiB, 2 * MiB, True)]

    begins = [
        e
        for e in batch_events(
            extents_of(layout, content),
            disk=DISK,
            first_seq=5,
            source_time_ns=TIME_NS,
            frame_bytes=256 * KiB,
            batch_bytes=512 * KiB,
        )
        if isinstance(e, Begin)
    ]

    assert [(b.seq, b.flags) for b in begins] == [(seq, frozenset()) for seq in range(5, 11)]


def test_tag_stands_just_before_the_end_of_the_last_batch_only(
    holey_image: tuple[Path, bytes],
) -> None:
    source, content = holey_image

    batches = split(
        batch_events(
            full_extents(source, chunk_bytes=256 * KiB),
            disk=DISK,
            first_seq=1,
            source_time_ns=TIME_NS,
            frame_bytes=256 * KiB,
            batch_bytes=1 * MiB,
            resync_end=len(content),
            tag=TAG,
        )
    )

    assert all(not any(isinstance(e, Tag) for e in events) for events in batches[:-1])
    assert batches[-1][-2] == TAG
    assert batches[-1][-1].frames == len(batches[-1])  # type: ignore[union-attr]


def test_tag_on_a_delta_that_fills_its_last_batch_exactly() -> None:
    content = random.Random(3).randbytes(2 * MiB)
    layout = [(0, 1 * MiB, False), (1 * MiB, 1 * MiB, False)]

    batches = split(
        batch_events(
            extents_of(layout, content),
            disk=DISK,
            first_seq=1,
            source_time_ns=TIME_NS,
            frame_bytes=1 * MiB,
            batch_bytes=1 * MiB,
            tag=TAG,
        )
    )

    assert len(batches) == 2
    assert TAG not in batches[0]
    assert batches[1][-2:] == [TAG, End(frames=4, data_bytes=1 * MiB)]


def test_nothing_to_send_in_a_delta_is_no_batch() -> None:
    events = batch_events(
        [], disk=DISK, first_seq=3, source_time_ns=TIME_NS, frame_bytes=MiB, batch_bytes=MiB
    )

    assert list(events) == []


def test_nothing_to_send_with_a_tag_is_one_batch_carrying_the_tag() -> None:
    events = batch_events(
        [],
        disk=DISK,
        first_seq=3,
        source_time_ns=TIME_NS,
        frame_bytes=MiB,
        batch_bytes=MiB,
        tag=TAG,
    )

    assert list(events) == [Begin(DISK, 3, TIME_NS), TAG, End(frames=3, data_bytes=0)]


def test_full_push_of_an_empty_image_is_one_batch_that_completes_the_resync() -> None:
    events = batch_events(
        [],
        disk=DISK,
        first_seq=1,
        source_time_ns=TIME_NS,
        frame_bytes=MiB,
        batch_bytes=MiB,
        resync_end=0,
    )

    assert list(events) == [
        Begin(DISK, 1, TIME_NS, frozenset({"resync", "resync_done"})),
        End(frames=2, data_bytes=0),
    ]


def test_the_same_image_gives_the_same_batches(holey_image: tuple[Path, bytes]) -> None:
    source, content = holey_image

    first = encoded(full_stream(source, len(content), frame=256 * KiB, batch=1 * MiB))
    second = encoded(full_stream(source, len(content), frame=256 * KiB, batch=1 * MiB))

    assert first == second


def test_every_batch_decodes_and_rebuilds_the_source(holey_image: tuple[Path, bytes]) -> None:
    source, content = holey_image
    image = bytearray(len(content))

    bodies = encoded(full_stream(source, len(content), frame=256 * KiB, batch=1 * MiB))
    for seq, body in bodies:
        applied(image, decoded(seq, body, len(content)))

    assert [seq for seq, _ in bodies] == list(range(1, len(bodies) + 1))
    assert image == content


def test_a_full_push_started_again_at_a_batch_repeats_the_batches_from_there(
    holey_image: tuple[Path, bytes],
) -> None:
    source, content = holey_image
    frame, batch = 256 * KiB, 768 * KiB + 4096  # batches cut frames: the hard case
    whole = encoded(full_stream(source, len(content), frame=frame, batch=batch))

    for seq in (2, 5, len(whole)):
        again = encoded(
            full_stream(
                source,
                len(content),
                frame=frame,
                batch=batch,
                first_seq=seq,
                start=(seq - 1) * batch,
            )
        )
        assert again == whole[seq - 1 :]


def test_a_delta_started_again_where_a_batch_began_repeats_the_batches_from_there(
    tmp_path: Path, rng: random.Random
) -> None:
    base_content = rng.randbytes(6 * MiB)
    new = bytearray(base_content)
    new[100 * KiB : 1900 * KiB] = rng.randbytes(1800 * KiB)
    new[2 * MiB : 2 * MiB + 300 * KiB] = bytes(300 * KiB)
    new[4 * MiB + 5] ^= 1
    (tmp_path / "base.img").write_bytes(base_content)
    (tmp_path / "src.img").write_bytes(new)

    def stream(first_seq: int, start: int) -> Iterator[Event]:
        return batch_events(
            delta_extents(
                tmp_path / "src.img", tmp_path / "base.img", chunk_bytes=1 * MiB, start=start
            ),
            disk=DISK,
            first_seq=first_seq,
            source_time_ns=TIME_NS,
            frame_bytes=192 * KiB,
            batch_bytes=400 * KiB,
            tag=TAG,
        )

    whole = encoded(stream(1, 0))
    starts = {
        events[0].seq: next(e.offset for e in events if isinstance(e, Data | Zero))  # type: ignore[union-attr]
        for events in split(stream(1, 0))
    }

    assert len(whole) > 3
    for seq, start in starts.items():
        assert encoded(stream(seq, start)) == whole[seq - 1 :]


def test_nonpositive_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        batch_events([], disk=DISK, first_seq=1, source_time_ns=0, frame_bytes=0, batch_bytes=1)
    with pytest.raises(ValueError, match="must be positive"):
        one_batch_events([], disk=DISK, seq=0, source_time_ns=0, frame_bytes=SECTOR)


# -- one batch whose content is decided ------------------------------------------------------------

RESYNC = frozenset({"resync"})


def test_one_batch_holds_all_its_extents_cut_into_frames_on_the_grid() -> None:
    content = random.Random(3).randbytes(12 * MiB)
    frame = MiB
    layout = [(64 * KiB, 64 * KiB, False), (3 * MiB + 512, 5 * MiB, False), (9 * MiB, MiB, True)]

    events = list(
        one_batch_events(
            extents_of(layout, content),
            disk=DISK,
            seq=5,
            source_time_ns=TIME_NS,
            frame_bytes=frame,
            flags=RESYNC,
        )
    )

    assert events[0] == Begin(DISK, 5, TIME_NS, RESYNC)
    data = [e for e in events if isinstance(e, Data)]
    assert [(e.offset, len(e.data)) for e in data] == [
        (64 * KiB, 64 * KiB),
        (3 * MiB + 512, MiB - 512),
        *[(n * MiB, MiB) for n in range(4, 8)],
        (8 * MiB, 512),
    ]
    assert [e for e in events if isinstance(e, Zero)] == [Zero(9 * MiB, MiB)]
    assert events[-1] == End(frames=len(events), data_bytes=64 * KiB + 6 * MiB)


def test_one_batch_without_extents_is_begin_and_end_and_carries_its_flags() -> None:
    flags = frozenset({"resync", "resync_done"})

    events = list(
        one_batch_events([], disk=DISK, seq=2, source_time_ns=TIME_NS, frame_bytes=MiB, flags=flags)
    )

    assert events == [Begin(DISK, 2, TIME_NS, flags), End(frames=2, data_bytes=0)]


def test_one_batch_decodes_with_its_tag_just_before_the_end() -> None:
    content = random.Random(4).randbytes(MiB)
    layout = [(0, 256 * KiB, False), (256 * KiB, 256 * KiB, True)]

    bodies = encoded(
        one_batch_events(
            extents_of(layout, content),
            disk=DISK,
            seq=1,
            source_time_ns=TIME_NS,
            frame_bytes=64 * KiB,
            tag=TAG,
        )
    )

    assert len(bodies) == 1
    events = decoded(1, bodies[0][1], MiB)
    image = bytearray(MiB)
    applied(image, events)
    assert image[: 512 * KiB] == content[: 256 * KiB] + bytes(256 * KiB)
    assert events[-2] == TAG


@settings(max_examples=60, deadline=None)
@given(
    layout=st.lists(
        st.tuples(st.integers(0, 6), st.integers(1, 40), st.booleans()), min_size=0, max_size=12
    ),
    frame_sectors=st.integers(1, 24),
    batch_sectors=st.integers(1, 64),
    resync=st.booleans(),
    tagged=st.booleans(),
)
def test_any_layout_round_trips_through_encoder_and_decoder(
    layout: list[tuple[int, int, bool]],
    frame_sectors: int,
    batch_sectors: int,
    resync: bool,
    tagged: bool,
) -> None:
    # Extents at gaps of 0..6 sectors, 1..40 sectors long, data or zeros.
    extents: list[tuple[int, int, bool]] = []
    position = 0
    for gap, length, zero in layout:
        position += gap * SECTOR
        extents.append((position, length * SECTOR, zero))
        position += length * SECTOR
    size = position + SECTOR
    content = random.Random(len(layout)).randbytes(size)
    frame, batch = frame_sectors * SECTOR, batch_sectors * SECTOR

    bodies = encoded(
        batch_events(
            extents_of(extents, content),
            disk=DISK,
            first_seq=1,
            source_time_ns=TIME_NS,
            frame_bytes=frame,
            batch_bytes=batch,
            resync_end=position if resync else None,
            tag=TAG if tagged else None,
        )
    )

    image = bytearray(size)
    expected = bytearray(size)
    for offset, length, zero in extents:
        expected[offset : offset + length] = bytes(length) if zero else content[offset:][:length]
    batches = [decoded(seq, body, size) for seq, body in bodies]
    for events in batches:
        applied(image, events)
        extents_bytes = sum(e.length if isinstance(e, Zero) else 0 for e in events) + sum(
            len(e.data) for e in events if isinstance(e, Data)
        )
        assert all(len(e.data) <= frame for e in events if isinstance(e, Data))
        if not resync:
            assert extents_bytes <= batch
    assert image == expected
    tags = [i for i, events in enumerate(batches) for e in events if isinstance(e, Tag)]
    assert tags == ([len(batches) - 1] if tagged else [])
    if resync:
        assert [b[0].flags for b in batches] == [  # type: ignore[union-attr]
            frozenset({"resync"})
        ] * (len(batches) - 1) + [frozenset({"resync", "resync_done"})]
