"""Chunk digests: what a chunk and its digest are, read from files and block devices."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import xxhash

from blockio.scan.chunk_digests import (
    DIGEST_BYTES,
    ChunkReader,
    chunk_bytes_problem,
    chunk_count,
    range_digests,
    windows,
)
from blockio.scan.source_image import ImageChanged
from tests.conftest import LoopDeviceFactory

KiB = 1 << 10
MiB = 1 << 20


def local_digests(data: bytes, offset: int, length: int, chunk: int) -> list[bytes]:
    """The digests of docs/protocol.md section 5, computed the plain way."""
    end = offset + length
    return [
        xxhash.xxh3_128(data[at : min(at + chunk, end)]).digest()
        for at in range(offset, end, chunk)
    ]


def write_device(device: Path, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def split(digests: bytes) -> list[bytes]:
    return [digests[at : at + DIGEST_BYTES] for at in range(0, len(digests), DIGEST_BYTES)]


@pytest.mark.parametrize(
    ("chunk_bytes", "valid"),
    [
        (64 * KiB, True),
        (1 * MiB, True),
        (16 * MiB, True),
        (32 * KiB, False),
        (32 * MiB, False),
        (96 * KiB, False),
        (0, False),
        (-64 * KiB, False),
    ],
)
def test_chunk_sizes_are_powers_of_two_from_64_kib_to_16_mib(chunk_bytes: int, valid: bool) -> None:
    problem = chunk_bytes_problem(chunk_bytes)

    assert (problem is None) == valid
    if not valid:
        assert str(chunk_bytes) in str(problem)


def test_windows_hold_whole_chunks_and_only_the_last_ends_inside_one() -> None:
    cut = list(windows(128 * KiB, 1 * MiB + 4 * KiB, 64 * KiB, 300 * KiB))

    assert [(w.start // KiB, w.stop // KiB) for w in cut] == [
        (128, 384),
        (384, 640),
        (640, 896),
        (896, 1152),
        (1152, 1156),
    ]


def test_a_window_smaller_than_a_chunk_still_holds_one_chunk() -> None:
    assert [len(w) for w in windows(0, 2 * MiB, 1 * MiB, 64 * KiB)] == [1 * MiB, 1 * MiB]


def test_chunk_count_counts_a_short_last_chunk() -> None:
    assert (chunk_count(0, 64 * KiB), chunk_count(64 * KiB, 64 * KiB)) == (0, 1)
    assert chunk_count(64 * KiB + 512, 64 * KiB) == 2


def test_range_digests_match_a_plain_computation_with_a_short_last_chunk(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 * MiB + 4 * KiB)
    image = tmp_path / "image.img"
    image.write_bytes(data)

    got = list(range_digests(image, 1 * MiB, 2 * MiB + 4 * KiB, 64 * KiB, window_bytes=256 * KiB))

    assert [w.start for w, _ in got] == [1 * MiB + at * 256 * KiB for at in range(9)]
    digests = [d for _, window_digests in got for d in split(window_digests)]
    assert digests == local_digests(data, 1 * MiB, 2 * MiB + 4 * KiB, 64 * KiB)
    assert len(digests) == 33


def test_range_digests_refuse_a_misaligned_offset_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of chunk_bytes 65536"):
        next(range_digests(tmp_path / "does-not-exist", 4096, 64 * KiB, 64 * KiB))


def test_reading_past_the_end_of_the_image_names_where_it_ended(tmp_path: Path) -> None:
    image = tmp_path / "short.img"
    image.write_bytes(bytes(100 * KiB))

    with pytest.raises(ImageChanged) as caught:
        list(range_digests(image, 0, 192 * KiB, 64 * KiB))

    assert caught.value.offset == 100 * KiB
    assert str(image) in str(caught.value)


def test_a_block_device_is_read_like_a_file(loop_device: LoopDeviceFactory, tmp_path: Path) -> None:
    data = random.Random(2).randbytes(4 * MiB)
    device = loop_device(4 * MiB, backing=tmp_path / "backing.img")
    write_device(device, data)

    with ChunkReader.open(device, window_bytes=1 * MiB) as reader:
        size = reader.size_bytes
        digests = b"".join(reader.digests(w, 256 * KiB) for w in windows(0, size, 256 * KiB, MiB))

    assert size == 4 * MiB
    assert split(digests) == local_digests(data, 0, 4 * MiB, 256 * KiB)


def test_a_reader_closes_even_while_a_view_of_its_buffer_is_held(tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(b"\x07" * 128 * KiB)
    reader = ChunkReader.open(image, window_bytes=64 * KiB)
    view = reader.read(0, 4 * KiB)

    reader.close()
    reader.close()

    assert bytes(view[:4]) == b"\x07" * 4


def direct_digests(path: Path, length: int, chunk: int, window: int) -> tuple[bool, list[bytes]]:
    with ChunkReader.open(path, window_bytes=window, direct=True) as reader:
        digests = b"".join(reader.digests(w, chunk) for w in windows(0, length, chunk, window))
        return reader.direct, split(digests)


def test_direct_reads_of_a_file_give_its_digests_with_a_short_last_chunk(tmp_path: Path) -> None:
    # Not a whole number of pages: the last direct read asks past the end of the file.
    length = 3 * MiB + 1000
    data = random.Random(3).randbytes(length)
    image = tmp_path / "image.img"
    image.write_bytes(data)

    direct, digests = direct_digests(image, length, 64 * KiB, MiB)

    assert direct  # tmp_path lies on ext4 here and on CI
    assert digests == local_digests(data, 0, length, 64 * KiB)


def test_direct_reads_of_a_block_device_give_its_digests(
    loop_device: LoopDeviceFactory, tmp_path: Path
) -> None:
    data = random.Random(4).randbytes(4 * MiB)
    device = loop_device(4 * MiB, backing=tmp_path / "backing.img")
    write_device(device, data)

    direct, digests = direct_digests(device, 4 * MiB, 256 * KiB, 2 * MiB)

    assert direct
    assert digests == local_digests(data, 0, 4 * MiB, 256 * KiB)


def test_a_direct_reader_reads_a_misaligned_sector_through_the_page_cache(tmp_path: Path) -> None:
    data = random.Random(6).randbytes(1 * MiB)
    image = tmp_path / "image.img"
    image.write_bytes(data)

    with ChunkReader.open(image, window_bytes=64 * KiB, direct=True) as reader:
        sector = bytes(reader.read(64 * KiB - 512, 512))
        following = bytes(reader.read(128 * KiB, 64 * KiB))

    assert sector == data[64 * KiB - 512 : 64 * KiB]
    assert following == data[128 * KiB : 192 * KiB]


def test_a_direct_read_past_the_end_names_where_the_image_ended(tmp_path: Path) -> None:
    image = tmp_path / "short.img"
    image.write_bytes(bytes(100 * KiB + 100))

    with pytest.raises(ImageChanged) as caught:
        direct_digests(image, 192 * KiB, 64 * KiB, 192 * KiB)

    assert caught.value.offset == 100 * KiB + 100
