"""`mtagent push --mode verify` against a real agent: it finds exactly the chunks changed
behind the agent's back (written straight into the target file, as DRBD's verify test writes
to the backing device), reports them, and writes nothing."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.sender.resync import ResyncResult, resync_image
from agent.sender.verify import verify_image
from protocol.client import AgentClient, client_ssl_context
from tests.support.agent_harness import REPO, AgentProcess

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 64 * KiB
DISK_BYTES = 8 * MiB + 4 * KiB  # the last chunk is short
DISKS = [f"d{n}" for n in range(8)]


@dataclass
class Replicated:
    """A disk of the agent, made equal to `source` by a resync."""

    agent: AgentProcess
    disk: str
    source: Path

    @property
    def target(self) -> Path:
        return self.agent.disks[self.disk]

    def client(self) -> AgentClient:
        context = client_ssl_context(self.agent.cert, self.agent.key, self.agent.ca)
        return AgentClient(self.agent.url, context, timeout=30)

    def mtagent_push(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "agent", "push", "--server", self.agent.url]
        command += ["--cert", str(self.agent.cert), "--key", str(self.agent.key)]
        command += ["--ca", str(self.agent.ca), "--disk", self.disk, "--source", str(self.source)]
        return subprocess.run(
            [*command, *args],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def write_behind_the_agents_back(self, offset: int, data: bytes) -> None:
        fd = os.open(self.target, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    async def resync(self) -> ResyncResult:
        async with self.client() as client:
            return await resync_image(
                client,
                self.disk,
                self.source,
                frame_bytes=MiB,
                batch_bytes=64 * MiB,
                compress=True,
                retries=1,
            )

    async def last_seq(self) -> int:
        async with self.client() as client:
            return (await client.disk(self.disk)).last_seq


@pytest.fixture
async def replicated(
    shared_agent: AgentProcess, unused_disks: Iterator[str], tmp_path: Path
) -> Replicated:
    source = tmp_path / "source.img"
    source.write_bytes(random.Random(len(str(tmp_path))).randbytes(DISK_BYTES))
    pair = Replicated(shared_agent, next(unused_disks), source)
    await pair.resync()
    assert pair.target.read_bytes() == source.read_bytes()
    return pair


def scribble(pair: Replicated) -> list[dict[str, int]]:
    """Known blocks written straight into the target; returns the differing chunk ranges."""
    pair.write_behind_the_agents_back(3 * MiB + 100 * 512, b"\xa5" * 4096)  # inside one chunk
    pair.write_behind_the_agents_back(5 * MiB + 32 * KiB, os.urandom(64 * KiB))  # across two
    pair.write_behind_the_agents_back(5 * MiB + 128 * KiB, bytes(CHUNK))  # the next: zeroed
    pair.write_behind_the_agents_back(DISK_BYTES - 512, b"\x01")  # in the short last chunk
    return [
        {"offset": 3 * MiB, "length": CHUNK},
        {"offset": 5 * MiB, "length": 3 * CHUNK},
        {"offset": 8 * MiB, "length": 4 * KiB},
    ]


async def test_verify_finds_exactly_the_chunks_changed_behind_the_agents_back(
    replicated: Replicated,
) -> None:
    expected = scribble(replicated)
    scribbled = replicated.target.read_bytes()
    seq = await replicated.last_seq()

    done = replicated.mtagent_push("--mode", "verify", "--json")

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ranges"] == expected
    assert (report["identical"], report["differing_chunks"]) == (False, 5)
    assert report["differing_bytes"] == 4 * CHUNK + 4 * KiB
    assert (report["compared_bytes"], report["chunk_bytes"]) == (DISK_BYTES, CHUNK)
    assert report["ranges_truncated"] is False
    # Verify writes nothing.
    assert replicated.target.read_bytes() == scribbled
    assert await replicated.last_seq() == seq


def test_verify_of_equal_images_says_identical_and_exits_0(replicated: Replicated) -> None:
    done = replicated.mtagent_push("--mode", "verify")

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{replicated.disk}: verify: identical (8.0 MiB compared in ")


def test_verify_of_a_shorter_source_says_the_target_is_longer_and_exits_1(
    replicated: Replicated, tmp_path: Path
) -> None:
    short = tmp_path / "short.img"
    short.write_bytes(replicated.source.read_bytes()[: 6 * MiB])

    done = replicated.mtagent_push("--mode", "verify", "--source", str(short))

    assert done.returncode == 1, done.stderr
    first, longer = done.stdout.splitlines()
    assert first.startswith(f"{replicated.disk}: verify: the first 6.0 MiB are identical (")
    assert longer == (
        f"{replicated.disk}: verify: the target is longer than the source by 2.0 MiB "
        f"({DISK_BYTES - 6 * MiB} bytes from offset {6 * MiB}, which no source byte matches)"
    )


def test_verify_json_of_a_shorter_source_is_not_identical_and_gives_both_sizes(
    replicated: Replicated, tmp_path: Path
) -> None:
    short = tmp_path / "short.img"
    short.write_bytes(replicated.source.read_bytes()[: 6 * MiB])

    done = replicated.mtagent_push("--mode", "verify", "--source", str(short), "--json")

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert (report["identical"], report["differing_chunks"]) == (False, 0)
    assert (report["compared_bytes"], report["target_bytes"]) == (6 * MiB, DISK_BYTES)


def test_verify_lists_each_differing_range_for_a_person(replicated: Replicated) -> None:
    scribble(replicated)

    done = replicated.mtagent_push("--mode", "verify", "--chunk-bytes", "1MiB")

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"{replicated.disk}: verify: 3 chunks of 1.0 MiB differ (2.0 MiB) in 3 ranges ("
    )
    assert lines[1:] == [
        f"  [{3 * MiB}, {4 * MiB})  1.0 MiB",
        f"  [{5 * MiB}, {6 * MiB})  1.0 MiB",
        f"  [{8 * MiB}, {8 * MiB + 4 * KiB})  4.0 KiB",
    ]
    assert done.stderr == ""


async def test_a_resync_after_a_verify_sends_what_the_verify_reported(
    replicated: Replicated,
) -> None:
    scribble(replicated)
    async with replicated.client() as client:
        before = await verify_image(client, replicated.disk, replicated.source, retries=1)

    result = await replicated.resync()

    assert result.differing_chunks == before.differing_chunks == 5
    assert result.data_bytes + result.zero_bytes == before.differing_bytes
    assert replicated.target.read_bytes() == replicated.source.read_bytes()
    async with replicated.client() as client:
        after = await verify_image(client, replicated.disk, replicated.source, retries=1)
    assert after.identical
