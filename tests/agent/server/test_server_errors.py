"""Every refusal of docs/protocol.md section 4, over real TLS: the right status and code, and
the target bytes and `last_seq` exactly as they were before the refused batch."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from protocol.encoder import BatchEncoder, encode_frame
from protocol.events import Begin, Data, End, Zero
from protocol.wire import FLAG_LZ4, HEADER, FrameType
from tests.support.agent_harness import AgentProcess
from tests.support.batches import batch, resync_batch
from tests.support.waiting import wait_until_async

MiB = 1 << 20
DISK = 32 * MiB
SEQ = 2
# Three valid 4 MiB frames first: more than one write group, so the target has
# been written to by the time the bad frame arrives, and a rollback is needed.
PREFIX = [(i * 4 * MiB, os.urandom(4 * MiB)) for i in range(3)]


def valid_start(seq: int = SEQ) -> tuple[BatchEncoder, list[bytes]]:
    encoder = BatchEncoder(seq)
    parts = [encoder.encode(Begin("d0", seq, 1, frozenset()))]
    parts += [encoder.encode(Data(offset, data)) for offset, data in PREFIX]
    return encoder, parts


def with_tail(*tail: bytes) -> bytes:
    _, parts = valid_start()
    return b"".join([*parts, *tail])


def frame(frame_type: FrameType, **fields: object) -> bytes:
    return encode_frame(SEQ, frame_type, **fields)  # type: ignore[arg-type]


def flip_header_byte(raw: bytes, position: int) -> bytes:
    changed = bytearray(raw)
    changed[position] ^= 0x01
    return bytes(changed)


def data_frame(offset: int, data: bytes) -> bytes:
    return frame(FrameType.DATA, payload=data, offset=offset, length=len(data))


def header_only(frame_type: FrameType, *, length: int, payload_len: int) -> bytes:
    """A sealed header announcing a payload that is never sent."""
    head = HEADER.pack(b"MTF1", frame_type, 0, 0, 0, length, payload_len, 0, 0)[:32]
    return head + xxhash.xxh3_64_digest(head, seed=SEQ)[::-1]


def end_frame(frames: int, data_bytes: int) -> bytes:
    return BatchEncoder(SEQ).encode(End(frames, data_bytes))


def valid_end() -> bytes:
    return end_frame(1 + len(PREFIX) + 1, len(PREFIX) * 4 * MiB)


def lz4_frame_with_wrong_digest() -> bytes:
    import lz4.block

    data = b"compressible " * 4096
    data = data[: len(data) // 512 * 512]
    packed = lz4.block.compress(data, store_size=False)
    return frame(
        FrameType.DATA,
        payload=packed,
        offset=0,
        length=len(data),
        flags=FLAG_LZ4,
        digest=xxhash.xxh3_64_intdigest(data) ^ 1,
    )


CASES: dict[str, tuple[Callable[[], bytes], int, str, int | None]] = {
    "payload digest": (
        lambda: with_tail(
            frame(FrameType.DATA, payload=b"a" * 512, offset=0, length=512, digest=1), valid_end()
        ),
        422,
        "CHECKSUM_MISMATCH",
        4,
    ),
    "lz4 payload digest": (
        lambda: with_tail(lz4_frame_with_wrong_digest(), valid_end()),
        422,
        "CHECKSUM_MISMATCH",
        4,
    ),
    "flipped offset bit": (
        lambda: with_tail(flip_header_byte(data_frame(0, b"b" * 512), 9), valid_end()),
        422,
        "CHECKSUM_MISMATCH",
        4,
    ),
    "bad magic": (lambda: with_tail(b"XXXX" + data_frame(0, b"c" * 512)[4:]), 400, "BAD_MAGIC", 4),
    "unsupported version": (
        lambda: with_tail(b"MTF2" + data_frame(0, b"c" * 512)[4:]),
        400,
        "UNSUPPORTED_VERSION",
        4,
    ),
    "misaligned offset": (lambda: with_tail(data_frame(100, b"d" * 512)), 400, "BAD_FRAME", 4),
    "extent outside the disk": (
        lambda: with_tail(data_frame(DISK - 512, b"e" * 1024)),
        416,
        "OUT_OF_RANGE",
        4,
    ),
    "frame too large": (
        lambda: with_tail(header_only(FrameType.DATA, length=8 * MiB, payload_len=8 * MiB)),
        413,
        "FRAME_TOO_LARGE",
        4,
    ),
    "batch too large": (
        lambda: with_tail(frame(FrameType.ZERO, offset=16 * MiB, length=8 * MiB)),
        413,
        "BATCH_TOO_LARGE",
        4,
    ),
    "second begin": (
        lambda: with_tail(BatchEncoder(SEQ).encode(Begin("d0", SEQ, 1, frozenset()))),
        400,
        "BAD_ORDER",
        4,
    ),
    "wrong end counts": (lambda: with_tail(end_frame(9, 4096)), 400, "BAD_FRAME", 4),
    "body ends before end": (lambda: with_tail(), 400, "TRUNCATED", 4),
    "bytes after end": (lambda: with_tail(valid_end(), b"\0" * 40), 400, "BAD_ORDER", 5),
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    workdir = tmp_path_factory.mktemp("errors")
    agent = AgentProcess.create(workdir, {"d0": DISK}, max_batch_bytes=16 * MiB)
    agent.start()
    writes = [(offset, os.urandom(4 * MiB)) for offset in range(0, 16 * MiB, 4 * MiB)]
    body = resync_batch("d0", 1, writes, compress=False)
    assert asyncio.run(agent.put_batch("d0", 1, body))[0] == 200
    yield agent
    agent.stop()


@pytest.mark.parametrize("case", CASES)
async def test_refused_batch_leaves_no_trace(agent: AgentProcess, case: str) -> None:
    make_body, status, code, frame_index = CASES[case]
    before = agent.target_bytes("d0")
    got_status, body = await agent.put_batch("d0", SEQ, make_body())
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert body["error"].get("frame") == frame_index
    assert body["error"]["message"]
    assert agent.target_bytes("d0") == before
    assert (await agent.disk())["last_seq"] == 1


async def test_the_agent_still_applies_batches_after_refusals(agent: AgentProcess) -> None:
    await agent.put_batch("d0", SEQ, CASES["payload digest"][0]())
    status, _ = await agent.put_batch("d0", SEQ, batch("d0", SEQ, [(0, b"ok" * 256)]))
    assert status == 200
    assert agent.target_bytes("d0")[:512] == b"ok" * 256
    assert (await agent.disk())["last_seq"] == SEQ


@pytest.fixture
def fresh_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path, {"d0": DISK}, stall_timeout="1s")
    agent.start()
    body = resync_batch("d0", 1, [(0, os.urandom(4 * MiB))])
    assert asyncio.run(agent.put_batch("d0", 1, body))[0] == 200
    yield agent
    agent.stop()


async def test_a_sender_that_stalls_is_cut_off_with_408_and_rolled_back(
    fresh_agent: AgentProcess,
) -> None:
    before = fresh_agent.target_bytes("d0")

    async def stalls() -> AsyncIterator[bytes]:
        yield with_tail()
        await asyncio.sleep(30)  # a stall far longer than the agent's stall_timeout

    status, body = await asyncio.wait_for(fresh_agent.put_batch("d0", SEQ, stalls()), 20)
    assert (status, body["error"]["code"]) == (408, "STALLED")
    assert fresh_agent.target_bytes("d0") == before
    assert (await fresh_agent.disk())["last_seq"] == 1


async def test_a_disconnect_mid_batch_is_rolled_back(fresh_agent: AgentProcess) -> None:
    before = fresh_agent.target_bytes("d0")

    class SenderDied(Exception):
        pass

    async def dies() -> AsyncIterator[bytes]:
        yield with_tail()
        await asyncio.sleep(0.2)  # the agent has the first part before the sender dies
        raise SenderDied

    with pytest.raises(Exception):  # noqa: B017 - whatever aiohttp wraps it in
        await fresh_agent.put_batch("d0", SEQ, dies())
    await wait_until_async(
        lambda: fresh_agent.metric("mtagent_rejected_batches_total", code="TRUNCATED", disk="d0"),
        timeout=10,
        what="the agent to count the disconnect as a TRUNCATED batch",
    )
    assert fresh_agent.target_bytes("d0") == before
    assert (await fresh_agent.disk())["last_seq"] == 1


async def test_a_missing_target_answers_503(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path, {"gone": tmp_path / "no-such-disk.img"})
    agent.start()
    try:
        status, body = await agent.put_batch("gone", 1, resync_batch("gone", 1, [(0, b"x" * 512)]))
        assert (status, body["error"]["code"]) == (503, "TARGET_UNAVAILABLE")
        assert (await agent.disk("gone"))["state"] == "missing"
    finally:
        agent.stop()


@pytest.fixture
def tiny_retention(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "retention"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mountpoint], check=True)
    yield mountpoint
    subprocess.run(["umount", mountpoint], check=True)


async def test_a_full_retention_drive_answers_507_and_keeps_the_target(
    tmp_path: Path, tiny_retention: Path
) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(DISK))  # incompressible old data: undo needs its full size
    agent = AgentProcess.create(tmp_path / "agent", {"d0": target}, retention_path=tiny_retention)
    agent.start()
    try:
        before = target.read_bytes()
        status, body = await agent.put_batch("d0", 1, resync_batch("d0", 1, PREFIX))
        assert (status, body["error"]["code"]) == (507, "RETENTION_FULL")
        assert target.read_bytes() == before
        assert (await agent.disk())["last_seq"] == 0
        # Nothing half-written is left behind: a batch that fits still goes through.
        status, _ = await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"s" * 4096)]))
        assert status == 200
    finally:
        agent.stop()


async def test_a_zero_frame_batch_zeroes_the_extent(agent: AgentProcess) -> None:
    seq = (await agent.disk())["last_seq"] + 1
    encoder = BatchEncoder(seq)
    body = b"".join(
        [
            encoder.encode(Begin("d0", seq, 1, frozenset())),
            encoder.encode(Zero(MiB, MiB)),
            encoder.end(),
        ]
    )
    status, _ = await agent.put_batch("d0", seq, body)
    assert status == 200
    assert agent.target_bytes("d0")[MiB : 2 * MiB] == bytes(MiB)
