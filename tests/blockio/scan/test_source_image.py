"""Reading source images into extents: the ranges a full or delta push has to send."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable
from pathlib import Path

import pytest

from blockio.scan.source_image import (
    BLOCK_BYTES,
    Extent,
    ImageChanged,
    delta_extents,
    full_extents,
    image_bytes,
)

KiB = 1024
MiB = 1024 * KiB

Read = tuple[int, int, bytes | None]  # offset, length, data (None: zeros)


def collected(extents: Iterable[Extent]) -> list[Read]:
    # Copy each extent's data before advancing: the reader reuses its buffer.
    return [(e.offset, e.length, None if e.data is None else bytes(e.data)) for e in extents]


def rebuilt(size: int, reads: list[Read], base: bytes | None = None) -> bytes:
    image = bytearray(base[:size] if base is not None else bytes(size))
    image.extend(bytes(size - len(image)))
    for offset, length, data in reads:
        image[offset : offset + length] = bytes(length) if data is None else data
    return bytes(image)


def write_image(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def noise(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240611)


def test_full_extents_of_zero_and_data_regions_with_a_short_tail(
    tmp_path: Path, rng: random.Random
) -> None:
    data_a = noise(rng, 1 * MiB)
    mixed = noise(rng, 256 * KiB) + bytes(768 * KiB)  # one chunk, partly zero: data
    tail = noise(rng, 4 * KiB + 512)
    content = data_a + bytes(3 * MiB) + mixed + bytes(2 * MiB) + tail
    source = write_image(tmp_path / "src.img", content)

    reads = collected(full_extents(source, chunk_bytes=1 * MiB))

    assert reads == [
        (0, 1 * MiB, data_a),
        (1 * MiB, 3 * MiB, None),  # three zero chunks coalesced into one extent
        (4 * MiB, 1 * MiB, mixed),
        (5 * MiB, 2 * MiB, None),
        (7 * MiB, len(tail), tail),  # the short last chunk ends at the image's end
    ]


def test_full_extents_tile_the_image_in_order(tmp_path: Path, rng: random.Random) -> None:
    chunk = 64 * KiB
    pieces = [noise(rng, chunk) if rng.random() < 0.5 else bytes(chunk) for _ in range(200)]
    content = b"".join(pieces) + bytes(512)
    source = write_image(tmp_path / "src.img", content)

    reads = collected(full_extents(source, chunk_bytes=chunk))

    position = 0
    for offset, length, data in reads:
        assert offset == position
        assert data is None or len(data) == length <= chunk
        position += length
    assert position == len(content)
    assert rebuilt(len(content), reads) == content
    # Zero extents coalesce: two zero extents are never adjacent.
    assert all(not (a[2] is None and b[2] is None) for a, b in itertools.pairwise(reads))


def test_full_extents_of_an_all_zero_image_is_one_zero_extent(tmp_path: Path) -> None:
    source = write_image(tmp_path / "src.img", bytes(5 * MiB + 4096))

    assert collected(full_extents(source, chunk_bytes=1 * MiB)) == [(0, 5 * MiB + 4096, None)]


def test_full_extents_of_an_empty_image_is_nothing(tmp_path: Path) -> None:
    source = write_image(tmp_path / "src.img", b"")

    assert collected(full_extents(source, chunk_bytes=1 * MiB)) == []


def test_full_extents_from_a_start_are_the_whole_reading_cut_there(
    tmp_path: Path, rng: random.Random
) -> None:
    content = noise(rng, 1 * MiB) + bytes(2 * MiB) + noise(rng, 1 * MiB) + bytes(4096)
    source = write_image(tmp_path / "src.img", content)
    whole = collected(full_extents(source, chunk_bytes=1 * MiB))

    for start in (0, 4096, 1 * MiB, 1 * MiB + 512, 2 * MiB + 8192, 3 * MiB + 4096, 4 * MiB):
        expected = [
            (max(o, start), o + n - max(o, start), None if d is None else d[max(o, start) - o :])
            for o, n, d in whole
            if o + n > start
        ]
        assert collected(full_extents(source, chunk_bytes=1 * MiB, start=start)) == expected


def test_full_extents_reuse_one_buffer(tmp_path: Path, rng: random.Random) -> None:
    # Borrowed data: the next data extent is read into the same memory.
    source = write_image(tmp_path / "src.img", noise(rng, 3 * MiB))
    extents = full_extents(source, chunk_bytes=1 * MiB)
    first = next(extents)
    assert first.data is not None
    held = bytes(first.data)
    second = next(extents)
    assert second.data is not None
    assert first.data.obj is second.data.obj
    assert bytes(first.data) != held


def test_full_extents_raise_image_changed_when_the_image_is_shorter_than_expected(
    tmp_path: Path,
) -> None:
    source = write_image(tmp_path / "src.img", b"\x01" * (1 * MiB))

    with pytest.raises(ImageChanged) as caught:
        collected(full_extents(source, chunk_bytes=1 * MiB, end=2 * MiB))

    assert caught.value.path == source
    assert caught.value.offset == 1 * MiB
    assert caught.value.expected_bytes == 2 * MiB
    assert str(source) in str(caught.value)


def test_image_bytes_is_the_file_size(tmp_path: Path) -> None:
    source = write_image(tmp_path / "src.img", bytes(12345))

    assert image_bytes(source) == 12345


def test_delta_extents_find_exactly_the_changed_blocks(tmp_path: Path, rng: random.Random) -> None:
    blocks = 300
    base_content = noise(rng, blocks * BLOCK_BYTES)
    changed = sorted(rng.sample(range(blocks), 40))
    new = bytearray(base_content)
    for block in changed:
        # A single changed byte is enough for the whole block to be sent.
        at = block * BLOCK_BYTES + rng.randrange(BLOCK_BYTES)
        new[at] ^= 1 + rng.randrange(255)
    base = write_image(tmp_path / "base.img", base_content)
    source = write_image(tmp_path / "src.img", bytes(new))

    reads = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    sent = sorted(
        block
        for offset, length, _ in reads
        for block in range(offset // BLOCK_BYTES, (offset + length) // BLOCK_BYTES)
    )
    assert sent == changed
    assert all(
        offset % BLOCK_BYTES == 0 and length % BLOCK_BYTES == 0 for offset, length, _ in reads
    )
    assert rebuilt(len(new), reads, base_content) == bytes(new)


def test_delta_extents_of_identical_images_are_nothing(tmp_path: Path, rng: random.Random) -> None:
    content = noise(rng, 3 * MiB + 4096)
    base = write_image(tmp_path / "base.img", content)
    source = write_image(tmp_path / "src.img", content)

    assert collected(delta_extents(source, base, chunk_bytes=1 * MiB)) == []


def test_delta_extents_say_how_far_they_have_compared_after_each_chunk(
    tmp_path: Path, rng: random.Random
) -> None:
    content = noise(rng, 3 * MiB + 4096)
    base = write_image(tmp_path / "base.img", content)
    changed = bytearray(content)
    changed[2 * MiB + 5] ^= 0xFF
    source = write_image(tmp_path / "src.img", bytes(changed))
    seen: list[int | tuple[int, int]] = []

    for extent in delta_extents(source, base, chunk_bytes=1 * MiB, scanned=seen.append):
        seen.append((extent.offset, extent.length))

    # Unchanged chunks yield nothing but still say where the comparison is; a chunk's own
    # extents come before its mark.
    assert seen == [1 * MiB, 2 * MiB, (2 * MiB, 64 * KiB), 3 * MiB, 3 * MiB + 4096]


def test_delta_extents_coalesce_adjacent_blocks_within_a_chunk(
    tmp_path: Path, rng: random.Random
) -> None:
    base_content = noise(rng, 4 * MiB)
    new = bytearray(base_content)
    # Blocks 10..29 change: they straddle the chunk line at 1 MiB (block 16).
    new[10 * BLOCK_BYTES : 30 * BLOCK_BYTES] = noise(rng, 20 * BLOCK_BYTES)
    base = write_image(tmp_path / "base.img", base_content)
    source = write_image(tmp_path / "src.img", bytes(new))

    reads = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    assert [(offset, length) for offset, length, _ in reads] == [
        (10 * BLOCK_BYTES, 6 * BLOCK_BYTES),
        (16 * BLOCK_BYTES, 14 * BLOCK_BYTES),
    ]
    assert rebuilt(len(new), reads, base_content) == bytes(new)


def test_delta_extents_send_zeroed_blocks_as_zero_extents(
    tmp_path: Path, rng: random.Random
) -> None:
    base_content = noise(rng, 4 * MiB)
    new = bytearray(base_content)
    new[8 * BLOCK_BYTES : 40 * BLOCK_BYTES] = bytes(32 * BLOCK_BYTES)  # across two chunk lines
    new[40 * BLOCK_BYTES : 41 * BLOCK_BYTES] = noise(rng, BLOCK_BYTES)
    base = write_image(tmp_path / "base.img", base_content)
    source = write_image(tmp_path / "src.img", bytes(new))

    reads = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    assert (
        reads
        == [
            (8 * BLOCK_BYTES, 32 * BLOCK_BYTES, None),  # zero runs coalesce across chunks
            (40 * BLOCK_BYTES, BLOCK_BYTES, bytes(new[40 * BLOCK_BYTES : 41 * BLOCK_BYTES])),
        ]
    )


def test_delta_extents_leave_blocks_that_were_zero_and_stay_zero(tmp_path: Path) -> None:
    base = write_image(tmp_path / "base.img", bytes(2 * MiB))
    source = write_image(tmp_path / "src.img", bytes(2 * MiB))

    assert collected(delta_extents(source, base, chunk_bytes=1 * MiB)) == []


def test_delta_extents_send_what_lies_past_the_end_of_the_base(
    tmp_path: Path, rng: random.Random
) -> None:
    content = noise(rng, 2 * MiB) + bytes(BLOCK_BYTES) + noise(rng, 8192)
    base = write_image(tmp_path / "base.img", content[: 1 * MiB + 4096])
    source = write_image(tmp_path / "src.img", content)

    reads = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    # The block the base ends in differs too: the base does not have all of it.
    assert reads == [
        (1 * MiB, 1 * MiB, content[1 * MiB : 2 * MiB]),
        (2 * MiB, BLOCK_BYTES, None),
        (2 * MiB + BLOCK_BYTES, 8192, content[2 * MiB + BLOCK_BYTES :]),
    ]


def test_delta_extents_of_a_short_last_block_that_changed(
    tmp_path: Path, rng: random.Random
) -> None:
    base_content = noise(rng, 1 * MiB + 4096)
    new = bytearray(base_content)
    new[-1] ^= 0xFF
    base = write_image(tmp_path / "base.img", base_content)
    source = write_image(tmp_path / "src.img", bytes(new))

    reads = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    assert reads == [(1 * MiB, 4096, bytes(new[1 * MiB :]))]


def test_delta_extents_from_a_start_judge_whole_blocks_and_cut_at_start(
    tmp_path: Path, rng: random.Random
) -> None:
    base_content = noise(rng, 3 * MiB)
    new = bytearray(base_content)
    new[5 * BLOCK_BYTES] ^= 1  # only the first byte of block 5 changes
    new[20 * BLOCK_BYTES : 22 * BLOCK_BYTES] = bytes(2 * BLOCK_BYTES)
    new[40 * BLOCK_BYTES + 7] ^= 1
    base = write_image(tmp_path / "base.img", base_content)
    source = write_image(tmp_path / "src.img", bytes(new))
    whole = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    start = 5 * BLOCK_BYTES + 8192  # past the changed byte, inside the changed block
    resumed = collected(delta_extents(source, base, chunk_bytes=1 * MiB, start=start))

    assert resumed[0] == (start, BLOCK_BYTES - 8192, bytes(new[start : 6 * BLOCK_BYTES]))
    assert resumed[1:] == whole[1:]


def test_delta_extents_refuse_a_chunk_that_is_not_whole_blocks(tmp_path: Path) -> None:
    image = write_image(tmp_path / "src.img", bytes(4096))

    with pytest.raises(ValueError, match="multiple of 65536"):
        delta_extents(image, image, chunk_bytes=BLOCK_BYTES + 4096)


def test_delta_extents_of_a_large_image_with_one_changed_byte(tmp_path: Path) -> None:
    # 64 MiB with one changed block: the unchanged chunks are compared whole.
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 * MiB))
    content = bytearray(base.read_bytes())
    content[33 * MiB] ^= 1
    source = write_image(tmp_path / "src.img", bytes(content))

    reads = collected(delta_extents(source, base, chunk_bytes=1 * MiB))

    assert [(offset, length) for offset, length, _ in reads] == [(33 * MiB, BLOCK_BYTES)]
