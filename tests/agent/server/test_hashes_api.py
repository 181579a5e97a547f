"""`POST /v1/disks/{disk}/hashes` over real TLS: the digests against a local computation, every
refusal with its status and code, bounded memory, and no digest of a batch that is rolled back."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import xxhash

from agent.server.hashes_api import ReadWindows, WindowGrant
from blockio.scan.chunk_digests import DEFAULT_WINDOW_BYTES, SCAN_READERS, SCAN_WINDOW_BYTES
from protocol.encoder import BatchEncoder
from protocol.errors import OutOfRange, TargetUnavailable, UnknownDisk
from protocol.events import Begin, Data
from tests.support.agent_harness import AgentProcess
from tests.support.waiting import wait_until_async

KiB = 1 << 10
MiB = 1 << 20
# Not a whole number of chunks: the last digest is of a short chunk.
DISK_BYTES = 16 * MiB + 4 * KiB
SPARSE_BYTES = 512 << 20


def local_digests(data: bytes, offset: int, length: int, chunk: int) -> list[bytes]:
    end = offset + length
    return [
        xxhash.xxh3_128(data[at : min(at + chunk, end)]).digest()
        for at in range(offset, end, chunk)
    ]


@pytest.fixture(scope="module")
def content() -> bytes:
    return random.Random(7).randbytes(DISK_BYTES)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> Iterator[AgentProcess]:
    workdir = tmp_path_factory.mktemp("hashes")
    (workdir / "d0.img").write_bytes(content)
    (workdir / "race.img").write_bytes(content)
    (workdir / "elsewhere.img").write_bytes(content)
    with open(workdir / "sparse.img", "wb") as f:
        f.truncate(SPARSE_BYTES)
    disks = {
        "d0": workdir / "d0.img",
        "race": workdir / "race.img",
        "elsewhere": workdir / "elsewhere.img",
        "sparse": workdir / "sparse.img",
        "gone": workdir / "no-such-disk.img",
    }
    agent = AgentProcess.create(workdir / "agent", disks)  # type: ignore[arg-type]
    agent.start()
    yield agent
    agent.stop()


async def post(agent: AgentProcess, disk: str, body: object) -> tuple[int, str, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        agent.client() as session,
        session.post(f"/v1/disks/{disk}/hashes", data=data) as response,
    ):
        return response.status, response.content_type, await response.read()


async def test_digests_match_a_local_computation_with_a_short_last_chunk(
    agent: AgentProcess, content: bytes
) -> None:
    async with agent.sender_client() as agent_client:
        digests = [d async for d in agent_client.hashes("d0", 1 * MiB, DISK_BYTES - MiB, 64 * KiB)]

    assert digests == local_digests(content, 1 * MiB, DISK_BYTES - MiB, 64 * KiB)
    assert len(digests) == 241


async def test_the_answer_is_an_octet_stream_of_the_announced_length(
    agent: AgentProcess, content: bytes
) -> None:
    async with (
        agent.client() as session,
        session.post(
            "/v1/disks/d0/hashes", json={"offset": 0, "length": 3 * MiB, "chunk_bytes": MiB}
        ) as response,
    ):
        body = await response.read()
        headers = response.headers

    assert response.status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Length"] == "48"
    assert body == b"".join(local_digests(content, 0, 3 * MiB, MiB))


async def test_an_empty_range_has_no_digests(agent: AgentProcess) -> None:
    status, kind, body = await post(agent, "d0", {"offset": 0, "length": 0, "chunk_bytes": 65536})

    assert (status, kind, body) == (200, "application/octet-stream", b"")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"{not json", None, "JSON object"),
        (b"[1, 2, 3]", None, "exactly ['offset', 'length', 'chunk_bytes']"),
        ({"offset": 0, "length": 65536}, None, "exactly"),
        ({"offset": 0, "length": 1, "chunk_bytes": 65536, "seed": 1}, None, "exactly"),
        ({"offset": "0", "length": 1, "chunk_bytes": 65536}, "offset", "must be an integer"),
        ({"offset": 0, "length": 1.5, "chunk_bytes": 65536}, "length", "must be an integer"),
        ({"offset": 0, "length": 1, "chunk_bytes": True}, "chunk_bytes", "must be an integer"),
        ({"offset": 0, "length": 1, "chunk_bytes": 100000}, "chunk_bytes", "power of two"),
        ({"offset": 0, "length": 1, "chunk_bytes": 32768}, "chunk_bytes", "from 65536"),
        ({"offset": 0, "length": 1, "chunk_bytes": 32 * MiB}, "chunk_bytes", "to 16777216"),
        ({"offset": 4096, "length": 1, "chunk_bytes": 65536}, "offset", "not a multiple"),
        ({"offset": -65536, "length": 1, "chunk_bytes": 65536}, "offset", "not a multiple"),
        ({"offset": 0, "length": -1, "chunk_bytes": 65536}, "length", "negative"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "missing-field",
        "extra-field",
        "string-offset",
        "float-length",
        "bool-chunk",
        "chunk-not-a-power-of-two",
        "chunk-too-small",
        "chunk-too-large",
        "offset-not-aligned",
        "negative-offset",
        "negative-length",
    ],
)
async def test_a_bad_request_is_400_bad_request_naming_the_field(
    agent: AgentProcess, body: object, field: str | None, words: str
) -> None:
    status, kind, raw = await post(agent, "d0", body)

    assert (status, kind) == (400, "application/json")
    error = json.loads(raw)["error"]
    assert error["code"] == "BAD_REQUEST"
    assert words in error["message"]
    assert error.get("field") == field


async def test_a_range_past_the_end_of_the_disk_is_416_out_of_range(agent: AgentProcess) -> None:
    async with agent.sender_client() as agent_client:
        with pytest.raises(OutOfRange) as caught:
            await anext(aiter(agent_client.hashes("d0", 16 * MiB, 128 * KiB, 64 * KiB)))

    assert caught.value.status == 416
    assert caught.value.details == {
        "offset": 16 * MiB,
        "length": 128 * KiB,
        "disk_bytes": DISK_BYTES,
    }


async def test_an_unknown_disk_is_404(agent: AgentProcess) -> None:
    async with agent.sender_client() as agent_client:
        with pytest.raises(UnknownDisk):
            await anext(aiter(agent_client.hashes("vm9-disk9", 0, 64 * KiB, 64 * KiB)))


async def test_a_missing_target_is_503(agent: AgentProcess) -> None:
    async with agent.sender_client() as agent_client:
        with pytest.raises(TargetUnavailable) as caught:
            await anext(aiter(agent_client.hashes("gone", 0, 64 * KiB, 64 * KiB)))

    assert "no-such-disk.img" in str(caught.value)


async def test_only_post_is_allowed(agent: AgentProcess) -> None:
    async with agent.client() as session, session.get("/v1/disks/d0/hashes") as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_the_bytes_compared_are_counted_per_disk(agent: AgentProcess) -> None:
    before = agent.metric("mtagent_resync_compared_bytes_total", disk="d0")

    async with agent.sender_client() as agent_client:
        async for _ in agent_client.hashes("d0", 0, 2 * MiB, 64 * KiB):
            pass

    assert agent.metric("mtagent_resync_compared_bytes_total", disk="d0") == before + 2 * MiB


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


async def read_sparse_slowly(agent: AgentProcess) -> int:
    """Peak RSS growth of the agent while a slow client reads the digests of 512 MiB."""
    assert agent.process is not None
    async with agent.sender_client() as agent_client:
        # What a first request allocates once (threads, TLS, parsers) is not what is measured.
        async for _ in agent_client.hashes("sparse", 0, 1 * MiB, 1 * MiB):
            pass
    before = peak_rss_bytes(agent.process.pid)
    count = 0
    async with agent.sender_client() as agent_client:
        async for digest in agent_client.hashes("sparse", 0, SPARSE_BYTES, 1 * MiB):
            count += 1
            if count % 256 == 0:
                await asyncio.sleep(0.01)  # a slow reader: the agent must wait, not buffer
            assert digest == ZERO_MIB_DIGEST
    assert count == SPARSE_BYTES // MiB
    return peak_rss_bytes(agent.process.pid) - before


async def test_memory_stays_within_the_large_windows_over_a_512_mib_range(
    agent: AgentProcess,
) -> None:
    assert await read_sparse_slowly(agent) < LARGE.counted_bytes + 32 * MiB


async def test_memory_stays_within_a_small_window_once_hash_read_bytes_is_spent(
    tmp_path: Path,
) -> None:
    with open(tmp_path / "sparse.img", "wb") as f:
        f.truncate(SPARSE_BYTES)
    small = AgentProcess.create(
        tmp_path / "agent", {"sparse": tmp_path / "sparse.img"}, hash_read_bytes="100MiB"
    )
    small.start()
    try:
        # Far below the large windows (128 MiB) and the range (512 MiB).
        assert await read_sparse_slowly(small) < 48 * MiB
    finally:
        small.stop()


LARGE = WindowGrant(SCAN_WINDOW_BYTES, SCAN_READERS, direct=True)


def test_read_windows_are_large_and_direct_while_the_budget_lasts_then_small() -> None:
    budget = ReadWindows(2 * LARGE.counted_bytes)

    first, second, third = (budget.take(64 * KiB) for _ in range(3))
    budget.give_back(first)
    budget.give_back(third)
    again = budget.take(64 * KiB)

    assert first == second == again == LARGE
    assert third == WindowGrant(DEFAULT_WINDOW_BYTES, 1, direct=False)
    assert budget.taken_bytes == 2 * LARGE.counted_bytes


def test_a_chunk_larger_than_a_small_window_gets_a_window_of_one_chunk() -> None:
    assert ReadWindows(0).take(16 * MiB) == WindowGrant(16 * MiB, 1, direct=False)


ZERO_MIB_DIGEST = xxhash.xxh3_128(bytes(MiB)).digest()


class StalledBatch:
    """Batch 1 of `disk`, flagged resync: 9 MiB of `new` data from offset 0 (more than one
    write group of 8 MiB, so the first group reaches the target), then it waits for
    `release` and gives up before its END: the agent rolls it back."""

    def __init__(self, agent: AgentProcess, disk: str) -> None:
        self.agent = agent
        self.disk = disk
        self.new = random.Random(8).randbytes(9 * MiB)
        self.release = asyncio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        encoder = BatchEncoder(1, compress=False)
        yield encoder.encode(Begin(self.disk, 1, 1, frozenset({"resync"})))
        for at in range(0, len(self.new), MiB):
            yield encoder.encode(Data(at, self.new[at : at + MiB]))
        await self.release.wait()
        raise ConnectionAbortedError("the sender gives up mid-batch")

    async def start(self) -> asyncio.Task[object]:
        """Send it; returns once its first group is on the target (and the batch open)."""
        put = asyncio.create_task(self.agent.put_batch(self.disk, 1, self.body()))
        await wait_until_async(
            lambda: read_at(self.agent.disks[self.disk], 0, 4) == self.new[:4],
            timeout=20,
            interval=0.02,
            what="the batch's first group to reach the target",
        )
        return put


async def test_no_digest_is_read_while_a_batch_is_open_and_a_rollback_wins(
    agent: AgentProcess, content: bytes
) -> None:
    # A batch writes new data and stalls before its END; a hash stream of the same range
    # must wait for it, and once the batch is cut off and rolled back, describe the old data.
    target = agent.disks["race"]
    stalled = StalledBatch(agent, "race")

    async with agent.sender_client() as agent_client:
        put = await stalled.start()
        digests = aiter(agent_client.hashes("race", 0, DISK_BYTES, 64 * KiB))
        first = asyncio.create_task(anext(digests))
        await asyncio.sleep(0.5)  # the time a digest would take to come if nothing held it
        waited = not first.done()
        stalled.release.set()
        with pytest.raises(aiohttp.ClientError):
            await put
        got = [await first] + [d async for d in digests]

    assert waited, "a digest was read while the batch was open"
    assert got == local_digests(content, 0, DISK_BYTES, 64 * KiB)
    assert target.read_bytes() == content


async def test_a_batch_writing_elsewhere_does_not_pause_the_digests(
    agent: AgentProcess, content: bytes
) -> None:
    stalled = StalledBatch(agent, "elsewhere")

    async with agent.sender_client() as agent_client:
        put = await stalled.start()
        try:
            async with asyncio.timeout(10):
                got = [
                    d async for d in agent_client.hashes("elsewhere", 12 * MiB, 4 * MiB, 64 * KiB)
                ]
            still_open = not put.done()
        finally:
            stalled.release.set()
            with pytest.raises(aiohttp.ClientError):
                await put

    assert still_open
    assert got == local_digests(content, 12 * MiB, 4 * MiB, 64 * KiB)


def read_at(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
