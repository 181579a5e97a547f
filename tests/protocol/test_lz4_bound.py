"""An LZ4 DATA payload may be as large as LZ4's compress bound for its length
(docs/protocol.md 3.2): what a sender that compresses every block sends for incompressible data.
Above the bound the frame is refused on its header alone, before its payload is buffered."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lz4.block
import pytest
import xxhash

from protocol.decoder import BatchDecoder, lz4_payload_bound
from protocol.encoder import BatchEncoder, encode_frame
from protocol.errors import BadFrame, FrameTooLarge, ProtocolError
from protocol.events import Begin, Data, End
from protocol.wire import FLAG_LZ4, HEADER_BYTES, FrameType
from tests.support.agent_harness import AgentProcess

DISK = "d0"
SEQ = 1
SECTOR = 512
KiB = 1 << 10
DISK_BYTES = 1 << 20
FLAGS = frozenset({"resync", "resync_done"})
# Random bytes do not compress: LZ4 makes them a block larger than themselves.
BLOCK = random.Random(11).randbytes(64 * KiB)


def lz4_frame(offset: int, data: bytes, payload: bytes) -> bytes:
    """A DATA frame flagged LZ4 carrying `payload` as given, with the digest of `data`."""
    return encode_frame(
        SEQ,
        FrameType.DATA,
        payload=payload,
        offset=offset,
        length=len(data),
        flags=FLAG_LZ4,
        digest=xxhash.xxh3_64_intdigest(data),
    )


def lz4_header(length: int, payload_len: int) -> bytes:
    """A sealed LZ4 DATA header announcing `payload_len` bytes, without the payload."""
    return lz4_frame(0, bytes(length), bytes(payload_len))[:HEADER_BYTES]


def body_with(frame: bytes, data_bytes: int, disk: str = DISK) -> bytes:
    """BEGIN, `frame`, END: a whole first batch (a full copy) around one DATA frame."""
    encoder = BatchEncoder(SEQ)
    begin = encoder.encode(Begin(disk, SEQ, 1, FLAGS))
    return begin + frame + encoder.encode(End(3, data_bytes))


def decoder(**overrides: Any) -> BatchDecoder:
    args: dict[str, Any] = {
        "disk": DISK,
        "seq": SEQ,
        "disk_bytes": DISK_BYTES,
        "sector_bytes": SECTOR,
    }
    return BatchDecoder(**(args | overrides))


def fed(pieces: list[bytes], **overrides: Any) -> list[object]:
    dec = decoder(**overrides)
    events: list[object] = []
    for piece in pieces:
        events += dec.feed(piece)
    return events


def whole_and_bytewise(raw: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [raw]
    yield "bytewise", [raw[i : i + 1] for i in range(len(raw))]


def test_the_bound_is_lz4s_compress_bound() -> None:
    assert [lz4_payload_bound(n) for n in (0, 512, 65536)] == [16, 530, 65809]


@pytest.mark.parametrize("size", [SECTOR, 4 * KiB, 64 * KiB, 1 << 20])
def test_lz4_never_compresses_random_data_beyond_the_bound(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert size < len(lz4.block.compress(data, store_size=False)) <= lz4_payload_bound(size)


def test_an_lz4_block_larger_than_its_data_decodes_however_it_is_fed() -> None:
    payload = lz4.block.compress(BLOCK, store_size=False)
    assert len(payload) == 65794  # longer than the 65,536 bytes it holds
    raw = body_with(lz4_frame(0, BLOCK, payload), len(BLOCK))
    for how, pieces in whole_and_bytewise(raw):
        events = fed(pieces)
        assert events[1] == Data(0, BLOCK, 1), how
        assert events[2] == End(3, len(BLOCK)), how


def test_a_payload_at_the_bound_passes_the_header_checks() -> None:
    begin = BatchEncoder(SEQ).encode(Begin(DISK, SEQ, 1, FLAGS))
    header = lz4_header(64 * KiB, lz4_payload_bound(64 * KiB))
    for how, pieces in whole_and_bytewise(begin + header):
        assert fed(pieces) == [Begin(DISK, SEQ, 1, FLAGS)], how


def test_a_payload_over_the_bound_is_refused_on_its_header() -> None:
    begin = BatchEncoder(SEQ).encode(Begin(DISK, SEQ, 1, FLAGS))
    header = lz4_header(64 * KiB, lz4_payload_bound(64 * KiB) + 1)
    for how, pieces in whole_and_bytewise(begin + header):
        with pytest.raises(BadFrame) as refused:
            fed(pieces)
        assert refused.value.frame == 1, how
        assert refused.value.details["limit"] == 65809, how


@pytest.mark.parametrize(
    ("length", "payload_len", "error"),
    [
        (64 * KiB, lz4_payload_bound(64 * KiB), None),
        (64 * KiB, lz4_payload_bound(64 * KiB) + 1, BadFrame),
        (64 * KiB + SECTOR, SECTOR, FrameTooLarge),
    ],
    ids=["bound-of-the-limit", "over-it", "length-over-the-limit"],
)
def test_max_frame_bytes_bounds_what_a_frame_buffers(
    length: int, payload_len: int, error: type[ProtocolError] | None
) -> None:
    begin = BatchEncoder(SEQ).encode(Begin(DISK, SEQ, 1, FLAGS))
    pieces = [begin + lz4_header(length, payload_len)]
    if error is None:
        assert fed(pieces, max_frame_bytes=64 * KiB) == [Begin(DISK, SEQ, 1, FLAGS)]
    else:
        with pytest.raises(error):
            fed(pieces, max_frame_bytes=64 * KiB)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    disks: dict[str, int | Path] = {"applies": DISK_BYTES, "refuses": DISK_BYTES}
    agent = AgentProcess.create(tmp_path_factory.mktemp("lz4"), disks)
    agent.start()
    yield agent
    agent.stop()


async def put(agent: AgentProcess, disk: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        agent.client() as session,
        session.put(f"/v1/disks/{disk}/batches/{SEQ}", data=body) as response,
    ):
        return response.status, await response.json()


def test_an_agent_refuses_an_lz4_payload_over_the_bound(agent: AgentProcess) -> None:
    payload = lz4.block.compress(BLOCK, store_size=False)
    padded = payload + bytes(lz4_payload_bound(len(BLOCK)) + 1 - len(payload))
    body = body_with(lz4_frame(0, BLOCK, padded), len(BLOCK), "refuses")
    status, answer = asyncio.run(put(agent, "refuses", body))
    assert (status, answer["error"]["code"], answer["error"]["frame"]) == (400, "BAD_FRAME", 1)
    assert agent.target_bytes("refuses") == bytes(DISK_BYTES)


def test_an_agent_applies_an_lz4_block_larger_than_its_data(agent: AgentProcess) -> None:
    payload = lz4.block.compress(BLOCK, store_size=False)
    body = body_with(lz4_frame(0, BLOCK, payload), len(BLOCK), "applies")
    status, answer = asyncio.run(put(agent, "applies", body))
    assert (status, answer["last_seq"]) == (200, 1), answer
    assert agent.target_bytes("applies")[: len(BLOCK)] == BLOCK
