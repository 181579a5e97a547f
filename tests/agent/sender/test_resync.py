"""`mtagent push --mode resync` against a real agent over mutual TLS: only what differs crosses
the wire, the target ends equal to the source, a resync cut off resumes where it was, and the
disk's states and metrics follow."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.commands import cli
from agent.commands.push import CompareBar, resync_line
from agent.replication.state import StateStore
from agent.sender.compare import CompareProgress
from agent.sender.errors import PushFailed
from agent.sender.resync import ResyncResult, resync_image
from protocol.client import AgentClient, client_ssl_context
from protocol.documents import BatchResult
from protocol.errors import ResyncRequired
from tests.support.agent_harness import REPO, AgentProcess
from tests.support.batches import batch

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 64 * KiB
# Not a whole number of chunks: the last chunk is short.
DISK_BYTES = 32 * MiB + 12 * KiB
DISKS = [f"d{n}" for n in range(12)]


def image(rng: random.Random, size: int) -> bytearray:
    """Data with zero stretches, as disks are: 256 KiB pieces, a third of them zeros."""
    piece = 256 * KiB
    data = bytearray()
    while len(data) < size:
        data += bytes(piece) if rng.random() < 0.33 else rng.randbytes(piece)
    return data[:size]


def chunk_at(data: bytes | bytearray, offset: int) -> bytes:
    return bytes(data[offset : offset + CHUNK])


@dataclass
class Pair:
    """A source image and one disk of a running agent whose target holds an older copy."""

    agent: AgentProcess
    disk: str
    source: Path

    @property
    def target(self) -> Path:
        return self.agent.disks[self.disk]

    def hold(self, old: bytes | bytearray, new: bytes | bytearray) -> None:
        """The target holds `old` (written behind the agent's back, as failback finds it);
        the source is `new`."""
        self.target.write_bytes(old)
        self.source.write_bytes(new)

    def client(self) -> AgentClient:
        context = client_ssl_context(self.agent.cert, self.agent.key, self.agent.ca)
        return AgentClient(self.agent.url, context, timeout=30)

    async def resync(self, **options: object) -> ResyncResult:
        settings: dict[str, object] = {
            "frame_bytes": MiB,
            "batch_bytes": 256 * KiB,
            "compress": True,
            "retries": 2,
        }
        settings.update(options)
        async with self.client() as client:
            return await resync_image(client, self.disk, self.source, **settings)  # type: ignore[arg-type]

    async def state(self) -> dict[str, object]:
        async with self.client() as client:
            return (await client.disk(self.disk)).to_json()

    async def put(self, body: bytes, seq: int) -> BatchResult:
        async with self.client() as client:
            return await client.put_batch(self.disk, seq, body)


@pytest.fixture
def pair(shared_agent: AgentProcess, unused_disks: Iterator[str], tmp_path: Path) -> Pair:
    """A disk of the shared agent that no other test has touched, and a source beside it."""
    return Pair(shared_agent, next(unused_disks), tmp_path / "source.img")


def metric(agent: AgentProcess, name: str, disk: str) -> float:
    match = re.search(rf'^{name}{{disk="{disk}"}} (\S+)$', agent.metrics_text(), re.MULTILINE)
    assert match, f"no {name} for {disk}"
    return float(match.group(1))


# -- what crosses the wire ------------------------------------------------------------------------


async def test_identical_source_and_target_send_nothing_but_metadata(pair: Pair) -> None:
    old = image(random.Random(1), DISK_BYTES)
    pair.hold(old, old)

    result = await pair.resync()

    assert (result.differing_chunks, result.data_bytes, result.zero_bytes) == (0, 0, 0)
    assert (result.batches, result.first_seq, result.last_seq) == (1, 1, 1)
    assert result.wire_bytes < 512  # BEGIN and END of the one batch that says resync_done
    assert result.compared_bytes == DISK_BYTES
    assert pair.target.read_bytes() == old
    state = await pair.state()
    assert (state["state"], state["last_seq"], state["resync_offset"]) == ("ok", 1, 0)
    assert metric(pair.agent, "mtagent_applied_bytes_total", pair.disk) == 0


async def test_one_percent_of_chunks_differing_at_random_are_exactly_what_is_sent(
    pair: Pair,
) -> None:
    rng = random.Random(2)
    old = image(rng, DISK_BYTES)
    new = bytearray(old)
    chunks = range(0, DISK_BYTES, CHUNK)
    changed = set(rng.sample(chunks[:-1], len(chunks) // 100))
    for offset in changed:
        new[offset : offset + CHUNK] = rng.randbytes(CHUNK)
    zeroed = {offset for offset in chunks[:-1] if any(old[offset : offset + 8])}
    zeroed = set(rng.sample(sorted(zeroed - changed), 2))
    for offset in zeroed:
        new[offset : offset + CHUNK] = bytes(CHUNK)
    last = chunks[-1]
    new[last:] = rng.randbytes(DISK_BYTES - last)  # the short last chunk
    pair.hold(old, new)

    result = await pair.resync()

    data_bytes = CHUNK * len(changed) + (DISK_BYTES - last)
    assert result.differing_chunks == len(changed) + len(zeroed) + 1 == 8
    assert (result.data_bytes, result.zero_bytes) == (data_bytes, CHUNK * len(zeroed))
    assert result.differing_bytes == result.data_bytes + result.zero_bytes
    # Random data does not compress: the chunks, their frame headers, BEGIN and END.
    assert data_bytes < result.wire_bytes < data_bytes + 2 * KiB
    assert pair.target.read_bytes() == new
    assert (await pair.state())["state"] == "ok"
    sent = result.data_bytes + result.zero_bytes
    assert metric(pair.agent, "mtagent_applied_bytes_total", pair.disk) == sent
    assert metric(pair.agent, "mtagent_resync_sent_bytes", pair.disk) == sent
    assert metric(pair.agent, "mtagent_resync_progress_ratio", pair.disk) == 1.0


async def test_a_disk_that_is_all_different_is_sent_whole_in_batches_of_its_size(
    pair: Pair,
) -> None:
    rng = random.Random(3)
    new = image(rng, DISK_BYTES)
    pair.hold(rng.randbytes(DISK_BYTES), new)

    result = await pair.resync(batch_bytes=4 * MiB)

    assert result.differing_chunks == len(range(0, DISK_BYTES, CHUNK))
    assert result.data_bytes + result.zero_bytes == DISK_BYTES
    assert result.batches == 9
    assert pair.target.read_bytes() == new


async def test_progress_reports_compared_and_sent_bytes_up_to_the_source_size(
    pair: Pair,
) -> None:
    rng = random.Random(4)
    old = image(rng, DISK_BYTES)
    new = bytearray(old)
    new[20 * MiB : 21 * MiB] = rng.randbytes(MiB)
    pair.hold(old, new)
    seen: list[CompareProgress] = []

    await pair.resync(progress=seen.append, window_bytes=MiB, batch_bytes=512 * KiB)

    compared = [p.compared_bytes for p in seen]
    assert compared == sorted(compared) and len(seen) > 30
    assert {p.total_bytes for p in seen} == {DISK_BYTES}
    assert seen[-1] == CompareProgress(DISK_BYTES, DISK_BYTES, MiB)
    assert max(p.sent_bytes for p in seen if p.compared_bytes < 20 * MiB) == 0


def test_the_progress_bar_shows_compared_bytes_rate_time_left_and_bytes_sent() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = CompareBar(stream, label="d0", clock=lambda: now[0])

    bar(CompareProgress(0, 100 * MiB, 0))
    now[0] = 1.0
    bar(CompareProgress(50 * MiB, 100 * MiB, 3 * MiB))

    line = stream.getvalue().split("\r\x1b[2K")[-1]
    assert line == (
        "d0 [###############...............]  50%  50.0 MiB/100.0 MiB  52.4 MB/s  ETA 0:01"
        "  sent 3.0 MiB"
    )


async def test_a_source_larger_than_the_disk_is_refused_before_anything_is_sent(
    pair: Pair,
) -> None:
    pair.hold(bytes(DISK_BYTES), bytes(DISK_BYTES + CHUNK))

    with pytest.raises(PushFailed, match="larger than the disk"):
        await pair.resync()

    assert (await pair.state())["last_seq"] == 0


async def test_a_source_truncated_during_the_comparison_fails_with_where_it_ended(
    pair: Pair,
) -> None:
    old = image(random.Random(9), DISK_BYTES)
    pair.hold(old, old)

    def truncate_once(progress: CompareProgress) -> None:
        if os.path.getsize(pair.source) == DISK_BYTES:
            os.truncate(pair.source, 8 * MiB)  # read ahead reaches 32 windows, 2 MiB, by now

    with pytest.raises(PushFailed, match=r"reading the source failed: .* ended at offset"):
        await pair.resync(progress=truncate_once, window_bytes=CHUNK)

    assert (await pair.state())["last_seq"] == 0
    assert pair.target.read_bytes() == old


# -- resuming -------------------------------------------------------------------------------------


def mtagent_push(agent: AgentProcess, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "push", "--server", agent.url, "--cert", str(agent.cert),
        "--key", str(agent.key), "--ca", str(agent.ca), *args,
    ]  # fmt: skip


async def test_a_resync_cut_off_resumes_where_it_was_without_resending_what_was_acknowledged(
    pair: Pair,
) -> None:
    rng = random.Random(5)
    old = image(rng, DISK_BYTES)
    new = bytearray(old)
    differing = sorted(rng.sample(range(0, DISK_BYTES - CHUNK, CHUNK), 200))
    for offset in differing:
        new[offset : offset + CHUNK] = rng.randbytes(CHUNK)
    pair.hold(old, new)
    command = mtagent_push(pair.agent, "--disk", pair.disk, "--source", str(pair.source))
    command += ["--mode", "resync", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # One differing chunk per batch; the client is killed once a few are acknowledged.
    first = subprocess.Popen(
        [*command, "--batch-bytes", "64KiB"], cwd=REPO, env=env, stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while int((await pair.state())["last_seq"]) < 5:
            assert first.poll() is None, "the resync ended before it could be cut off"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The batch in flight may still commit (its END was on the wire) or roll back; a digest
    # is read only once it has done either (agent/server/hashes_api.py).
    async with pair.client() as client:
        await anext(aiter(client.hashes(pair.disk, 0, CHUNK, CHUNK)))
    cut = await pair.state()
    acked = int(cut["last_seq"])
    assert cut["state"] == "resyncing"
    assert 5 <= acked < len(differing)
    # Each acknowledged batch held one differing chunk, in order: the agent records the end
    # of the last of them.
    assert cut["resync_offset"] == differing[acked - 1] + CHUNK

    second = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )

    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    remaining = [offset for offset in differing if offset >= cut["resync_offset"]]
    assert result["start_offset"] == cut["resync_offset"]
    assert (result["first_seq"], result["batches"]) == (acked + 1, 1)
    assert result["differing_chunks"] == len(remaining)
    assert result["data_bytes"] + result["zero_bytes"] == CHUNK * len(remaining)
    assert pair.target.read_bytes() == new
    done = await pair.state()
    assert (done["state"], done["resync_offset"]) == ("ok", 0)


async def test_a_resync_goes_on_when_the_agent_restarts_in_the_middle(tmp_path: Path) -> None:
    rng = random.Random(11)
    old = image(rng, DISK_BYTES)
    new = bytearray(old)
    differing = rng.sample(range(0, DISK_BYTES - CHUNK, CHUNK), 40)
    for offset in differing:
        new[offset : offset + CHUNK] = rng.randbytes(CHUNK)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK_BYTES})
    agent.start()
    pair = Pair(agent, "d0", tmp_path / "source.img")
    pair.hold(old, new)
    restarts: list[threading.Thread] = []

    def restart_midway(progress: CompareProgress) -> None:
        # On the resync's event loop: the agent dies between two windows of the comparison.
        if not restarts and progress.compared_bytes >= 12 * MiB:
            agent.kill()
            restarts.append(threading.Thread(target=agent.start))
            restarts[0].start()

    try:
        # No checkpoint however long the restart takes: its sector would count in data_bytes.
        result = await pair.resync(
            progress=restart_midway,
            window_bytes=MiB,
            batch_bytes=128 * KiB,
            retries=8,
            checkpoint_seconds=3600,
        )
    finally:
        for thread in restarts:
            thread.join()
        agent.stop()

    assert restarts and result.retries >= 1
    assert result.differing_chunks == len(differing)
    assert result.data_bytes + result.zero_bytes == CHUNK * len(differing)
    assert pair.target.read_bytes() == new


async def begin_resync_by_hand(pair: Pair, old: bytearray, new: bytearray) -> int:
    """A first resync batch sent by hand: it writes the source's chunk at 2 MiB, stamped
    with the source's mtime; the disk becomes `resyncing` at offset 2 MiB + 64 KiB."""
    pair.hold(old, new)
    mtime = os.stat(pair.source).st_mtime_ns
    body = batch(
        pair.disk,
        1,
        [(2 * MiB, chunk_at(new, 2 * MiB))],
        flags=("resync",),
        source_time_ns=mtime,
    )
    await pair.put(body, 1)
    return mtime


def changed_pair(seed: int) -> tuple[bytearray, bytearray]:
    rng = random.Random(seed)
    old = image(rng, DISK_BYTES)
    new = bytearray(old)
    for offset in (1 * MiB, 2 * MiB, 5 * MiB):
        new[offset : offset + CHUNK] = rng.randbytes(CHUNK)
    return old, new


async def test_a_resync_of_a_disk_that_is_resyncing_from_the_same_source_starts_at_its_offset(
    pair: Pair,
) -> None:
    old, new = changed_pair(6)
    await begin_resync_by_hand(pair, old, new)
    state = await pair.state()
    assert (state["state"], state["resync_offset"]) == ("resyncing", 2 * MiB + CHUNK)
    assert metric(pair.agent, "mtagent_resync_progress_ratio", pair.disk) == pytest.approx(
        (2 * MiB + CHUNK) / DISK_BYTES
    )
    assert metric(pair.agent, "mtagent_resync_sent_bytes", pair.disk) == CHUNK

    result = await pair.resync()

    # The chunk at 1 MiB lies below the offset: the resync does not see it.
    assert result.start_offset == 2 * MiB + CHUNK
    assert result.compared_bytes == DISK_BYTES - result.start_offset
    assert (result.differing_chunks, result.first_seq) == (1, 2)
    assert pair.target.read_bytes()[2 * MiB :] == new[2 * MiB :]


async def test_a_resync_from_a_changed_source_starts_again_from_the_beginning(pair: Pair) -> None:
    old, new = changed_pair(7)
    mtime = await begin_resync_by_hand(pair, old, new)
    os.utime(pair.source, ns=(mtime + 10**9, mtime + 10**9))

    result = await pair.resync()

    assert result.start_offset == 0
    assert result.differing_chunks == 2  # 1 MiB and 5 MiB; 2 MiB is equal already
    assert pair.target.read_bytes() == new


async def test_checkpoints_record_how_far_the_comparison_got_when_nothing_differs(
    pair: Pair,
) -> None:
    old = image(random.Random(8), DISK_BYTES)
    pair.hold(old, old)

    result = await pair.resync(checkpoint_seconds=0, window_bytes=4 * MiB)

    # A checkpoint after each of the 9 windows (one sector of the source each), then the end.
    assert result.batches == 10
    assert result.data_bytes + result.zero_bytes == 9 * 512
    assert pair.target.read_bytes() == old
    store = StateStore.open_readonly(pair.agent.workdir / "state")
    try:
        record = store.progress(pair.disk).resync
    finally:
        store.close()
    assert (record.started_seq, record.done_seq, record.offset) == (1, 10, DISK_BYTES)


# -- states ---------------------------------------------------------------------------------------


async def test_a_disk_that_is_resyncing_refuses_ordinary_batches(pair: Pair) -> None:
    old, new = changed_pair(9)
    await begin_resync_by_hand(pair, old, new)
    before = pair.target.read_bytes()

    with pytest.raises(ResyncRequired) as caught:
        await pair.put(batch(pair.disk, 2, [(0, b"\x01" * 4096)]), 2)

    assert caught.value.status == 409
    assert pair.target.read_bytes() == before
    assert (await pair.state())["last_seq"] == 1


async def test_a_recovered_disk_refuses_ordinary_batches_until_a_resync_completes(
    tmp_path: Path,
) -> None:
    old, new = changed_pair(10)
    agent = AgentProcess.create(tmp_path / "agent", {"d0": DISK_BYTES})
    store = StateStore.open(agent.workdir / "state")
    with store._lock:  # an in-place recovery left it so (written as recover would)
        store._db.execute("INSERT INTO disks (id, last_seq, state) VALUES ('d0', 7, 'recovered')")
    store.close()
    agent.start()
    try:
        pair = Pair(agent, "d0", tmp_path / "source.img")
        pair.hold(old, new)
        assert (await pair.state())["state"] == "recovered"
        with pytest.raises(ResyncRequired):
            await pair.put(batch("d0", 8, [(0, b"\x01" * 4096)]), 8)

        result = await pair.resync()

        assert (result.first_seq, result.differing_chunks) == (8, 3)
        assert (await pair.state())["state"] == "ok"
        await pair.put(batch("d0", result.last_seq + 1, [(0, b"\x01" * 4096)]), result.last_seq + 1)
    finally:
        agent.stop()


# -- the command line -----------------------------------------------------------------------------


def test_the_summary_line_says_what_was_compared_differed_and_sent() -> None:
    result = ResyncResult(
        disk="d0",
        mode="resync",
        chunk_bytes=CHUNK,
        start_offset=0,
        compared_bytes=2 << 30,
        differing_chunks=327,
        differing_bytes=327 * CHUNK,
        batches=1,
        first_seq=4,
        last_seq=4,
        data_bytes=300 * CHUNK,
        zero_bytes=27 * CHUNK,
        wire_bytes=12 * MiB,
        seconds=2.0,
        retries=0,
    )

    assert resync_line(result) == (
        "d0: resync compared 2.0 GiB in 2.0 s (1073.7 MB/s); 327 chunks of 64.0 KiB differed "
        "(20.4 MiB); sent 20.4 MiB in 1 batch (seq 4), 12.0 MiB on the wire"
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (
            ["--mode", "full", "--chunk-bytes", "1MiB"],
            "--chunk-bytes is only for --mode resync and verify",
        ),
        (["--mode", "resync", "--chunk-bytes", "96KiB"], "must be a power of two"),
        (["--mode", "verify", "--chunk-bytes", "32MiB"], "from 65536 to 16777216"),
        (["--mode", "resync", "--chunk-bytes", "1MiB", "--batch-bytes", "512KiB"], "at least"),
        (
            ["--mode", "resync", *("--tag", "t", "--tag-kind", "app", "--tag-group", "g")],
            "a tag is only for --mode full and delta",
        ),
    ],
    ids=["chunk-for-full", "chunk-not-power", "chunk-too-large", "batch-below-chunk", "tag"],
)
def test_cli_resync_usage_errors_exit_2(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["push", "--server", "https://127.0.0.1:1", "--cert", "c", "--key", "k", "--ca", "ca"]
    argv += ["--disk", "d0", "--source", "x.img", *args]

    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    assert caught.value.code == 2
    assert complaint in capsys.readouterr().err
