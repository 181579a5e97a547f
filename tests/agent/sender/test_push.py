"""`mtagent push` against a real agent over mutual TLS: what lands on the target, what goes
on the wire, how failures read, and resuming after the agent dies mid-push."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.certs import init_pki, issue_client
from agent.commands import cli
from agent.commands.progress import ProgressBar, progress_line
from agent.sender.errors import BatchRefused, PushFailed
from agent.sender.push import PushResult, push_image
from protocol.client import AgentClient, client_ssl_context, error_from_response
from protocol.errors import ChecksumMismatch, ProtocolError, SequenceGap, WrongGroup
from protocol.events import Tag
from tests.support.agent_harness import REPO, AgentProcess, free_port

KiB = 1 << 10
MiB = 1 << 20
SOURCE_BYTES = 12 * MiB
DISK_BYTES = SOURCE_BYTES  # a push's source is the whole disk
OWN_DISK_BYTES = 16 * MiB  # four batches of 4 MiB
TAG = Tag(tag_id="p-1", name="nightly", kind="crash", group="g1", time_ns=1_700_000_000 * 10**9)


DISKS = [f"d{n}" for n in range(24)]


@dataclass
class Target:
    """One disk of a running agent, and the calls a test makes on it."""

    agent: AgentProcess
    disk: str

    async def push(
        self,
        source: Path,
        *,
        mode: str = "full",
        base: Path | None = None,
        frame_bytes: int = 256 * KiB,
        batch_bytes: int = 4 * MiB,
        tag: Tag | None = None,
        retries: int = 2,
        progress: Callable[[int, int], None] | None = None,
    ) -> PushResult:
        context = client_ssl_context(self.agent.cert, self.agent.key, self.agent.ca)
        async with AgentClient(self.agent.url, context, timeout=30) as client:
            return await push_image(
                client,
                self.disk,
                source,
                mode=mode,
                base=base,
                frame_bytes=frame_bytes,
                batch_bytes=batch_bytes,
                compress=True,
                tag=tag,
                retries=retries,
                progress=progress,
            )

    async def state(self) -> dict[str, object]:
        context = client_ssl_context(self.agent.cert, self.agent.key, self.agent.ca)
        async with AgentClient(self.agent.url, context) as client:
            return (await client.disk(self.disk)).to_json()

    def content(self, size: int = DISK_BYTES) -> bytes:
        return self.agent.target_bytes(self.disk)[:size]


@pytest.fixture
def target(shared_agent: AgentProcess, unused_disks: Iterator[str]) -> Target:
    """A disk of the shared agent that no other test has touched."""
    return Target(shared_agent, next(unused_disks))


@pytest.fixture
def own_target(tmp_path: Path) -> Iterator[Target]:
    """A disk of an agent of the test's own, for tests that kill the agent."""
    agent = AgentProcess.create(tmp_path / "agent", {"d0": OWN_DISK_BYTES})
    agent.start()
    yield Target(agent, "d0")
    agent.stop()


def image(rng: random.Random, size: int) -> bytes:
    """Data with zero stretches, as disks are: 512 KiB pieces, a third of them zeros."""
    piece = 512 * KiB
    return b"".join(
        bytes(piece) if rng.random() < 0.33 else rng.randbytes(piece) for _ in range(size // piece)
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.img"
    path.write_bytes(image(random.Random(11), SOURCE_BYTES))
    return path


# -- full and delta -------------------------------------------------------------------------------


async def test_full_push_makes_the_target_equal_to_the_source(target: Target, source: Path) -> None:
    content = source.read_bytes()

    result = await target.push(source)

    assert target.content(SOURCE_BYTES) == content
    assert (result.batches, result.first_seq, result.last_seq) == (3, 1, 3)
    assert result.disk_bytes == SOURCE_BYTES
    pieces = [content[at : at + 512 * KiB] for at in range(0, SOURCE_BYTES, 512 * KiB)]
    assert result.zero_bytes == sum(len(p) for p in pieces if p == bytes(len(p)))
    assert result.data_bytes == SOURCE_BYTES - result.zero_bytes
    state = await target.state()
    assert (state["state"], state["last_seq"]) == ("ok", 3)
    assert state["last_source_time_ns"] == os.stat(source).st_mtime_ns


async def test_full_push_reports_progress_up_to_the_source_size(
    target: Target, source: Path
) -> None:
    seen: list[tuple[int, int]] = []

    await target.push(source, progress=lambda done, total: seen.append((done, total)))

    assert len(seen) > 3
    assert {total for _, total in seen} == {SOURCE_BYTES}
    assert seen[-1] == (SOURCE_BYTES, SOURCE_BYTES)


async def test_delta_push_sends_only_the_changed_blocks(
    target: Target, source: Path, tmp_path: Path
) -> None:
    rng = random.Random(5)
    original = bytearray(source.read_bytes())
    original[9 * MiB : 9 * MiB + 128 * KiB] = rng.randbytes(128 * KiB)
    source.write_bytes(original)
    await target.push(source)
    base = tmp_path / "base.img"
    base.write_bytes(original)
    changed = bytearray(original)
    changed[1 * MiB + 100] ^= 0xFF  # one byte: its 64 KiB block goes
    changed[7 * MiB : 7 * MiB + 64 * KiB] = rng.randbytes(64 * KiB)
    changed[9 * MiB : 9 * MiB + 128 * KiB] = bytes(128 * KiB)  # zeroed: a ZERO frame
    source.write_bytes(changed)

    result = await target.push(source, mode="delta", base=base)

    assert target.content(SOURCE_BYTES) == bytes(changed)
    assert (result.first_seq, result.last_seq, result.batches) == (4, 4, 1)
    assert (result.data_bytes, result.zero_bytes) == (2 * 64 * KiB, 128 * KiB)
    # The changed data, its frame headers and the batch's JSON frames, nothing else.
    assert result.data_bytes < result.wire_bytes < result.data_bytes + 4 * KiB
    assert (await target.state())["last_seq"] == 4


async def test_delta_push_progress_moves_over_unchanged_stretches(
    target: Target, source: Path
) -> None:
    await target.push(source)
    changed = bytearray(source.read_bytes())
    changed[-1] ^= 0xFF  # the only difference is at the very end
    base = source.with_name("base.img")
    base.write_bytes(source.read_bytes())
    source.write_bytes(changed)
    seen: list[int] = []

    result = await target.push(
        source, mode="delta", base=base, progress=lambda done, total: seen.append(done)
    )

    assert result.data_bytes == 64 * KiB
    # Before the one frame (at the end), the comparison said where it was.
    assert [done for done in seen if 0 < done < SOURCE_BYTES - 64 * KiB] == [8 * MiB]
    assert seen[-1] == SOURCE_BYTES


async def test_delta_push_with_nothing_changed_sends_nothing(target: Target, source: Path) -> None:
    await target.push(source)

    result = await target.push(source, mode="delta", base=source)

    assert (result.batches, result.first_seq, result.last_seq) == (0, 4, 3)
    assert result.wire_bytes == 0
    assert (await target.state())["last_seq"] == 3


async def test_delta_push_with_nothing_changed_and_a_tag_sends_one_batch_with_the_tag(
    target: Target, source: Path
) -> None:
    await target.push(source)

    result = await target.push(source, mode="delta", base=source, tag=TAG)

    assert (result.batches, result.first_seq, result.last_seq) == (1, 4, 4)
    assert result.disk_bytes == 0
    assert (await target.state())["last_seq"] == 4
    assert target.content(SOURCE_BYTES) == source.read_bytes()


async def test_a_tagged_full_push_is_accepted_and_lands_whole(target: Target, source: Path) -> None:
    result = await target.push(source, tag=TAG)

    assert result.batches == 3
    assert target.content(SOURCE_BYTES) == source.read_bytes()


# -- refusals -------------------------------------------------------------------------------------


async def test_a_source_larger_than_the_disk_is_refused_before_anything_is_sent(
    target: Target, tmp_path: Path
) -> None:
    big = tmp_path / "big.img"
    big.write_bytes(b"\x01" * (DISK_BYTES + 4096))

    with pytest.raises(PushFailed) as caught:
        await target.push(big)

    message = str(caught.value)
    assert "\n" not in message
    assert "larger than the disk" in message and str(DISK_BYTES) in message
    assert (await target.state())["last_seq"] == 0
    assert target.content() == bytes(DISK_BYTES)


async def test_a_source_that_is_not_whole_sectors_is_refused(
    target: Target, tmp_path: Path
) -> None:
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\x01" * (1 * MiB + 100))

    with pytest.raises(PushFailed, match="512-byte sectors"):
        await target.push(odd)

    assert (await target.state())["last_seq"] == 0


async def test_a_frame_size_over_the_agents_limit_is_refused(target: Target, source: Path) -> None:
    with pytest.raises(PushFailed, match="max_frame_bytes of 4194304"):
        await target.push(source, frame_bytes=8 * MiB, batch_bytes=16 * MiB)


async def test_an_unknown_disk_fails_with_the_agents_code(target: Target, source: Path) -> None:
    stranger = Target(target.agent, "nope")

    with pytest.raises(PushFailed, match="UNKNOWN_DISK") as caught:
        await stranger.push(source)

    assert caught.value.disk == "nope"
    assert "\n" not in str(caught.value)


async def test_a_refused_batch_names_its_seq_and_code_and_is_not_retried(
    target: Target, source: Path
) -> None:
    # A delta to a disk that never had its initial copy: the agent wants a resync.
    with pytest.raises(BatchRefused) as caught:
        await target.push(source, mode="delta", base=source, tag=TAG)

    assert caught.value.seq == 1
    assert caught.value.error.code == "RESYNC_REQUIRED"
    assert str(caught.value).startswith(f"batch 1 of disk {target.disk} refused: RESYNC_REQUIRED: ")
    assert (await target.state())["last_seq"] == 0


async def test_an_agent_certificate_from_another_ca_fails_at_once_without_retrying(
    target: Target, source: Path, tmp_path: Path
) -> None:
    init_pki(tmp_path / "other", ["127.0.0.1"])
    context = client_ssl_context(target.agent.cert, target.agent.key, tmp_path / "other/ca.crt")
    started = time.monotonic()

    with pytest.raises(PushFailed) as caught:
        async with AgentClient(target.agent.url, context) as client:
            await push_image(
                client,
                target.disk,
                source,
                mode="full",
                base=None,
                frame_bytes=MiB,
                batch_bytes=4 * MiB,
                compress=True,
                tag=None,
                retries=8,
                progress=None,
            )

    assert "TLS with https://127.0.0.1" in str(caught.value)
    assert "certificate verify failed" in str(caught.value)
    assert time.monotonic() - started < 5  # eight retries would take 45 s


# -- resume ---------------------------------------------------------------------------------------


async def test_push_resumes_after_the_agent_dies_mid_batch_without_reapplying_a_batch(
    own_target: Target, tmp_path: Path
) -> None:
    target = own_target
    agent = target.agent
    source = tmp_path / "source.img"
    source.write_bytes(image(random.Random(3), OWN_DISK_BYTES))
    restarted: list[threading.Thread] = []

    def kill_in_batch_three(done: int, total: int) -> None:
        # Runs on the push's event loop as it sends, so the kill lands mid-body.
        if not restarted and done > 2 * 4 * MiB + 1 * MiB:
            agent.kill()
            restart = threading.Thread(target=agent.start)
            restart.start()
            restarted.append(restart)

    try:
        result = await target.push(source, retries=8, progress=kill_in_batch_three)
    finally:
        for thread in restarted:
            thread.join()

    assert restarted, "the push ended before the agent could be killed"
    assert result.retries >= 1
    assert (result.first_seq, result.last_seq, result.batches) == (1, 4, 4)
    assert target.content(OWN_DISK_BYTES) == source.read_bytes()
    state = await target.state()
    assert (state["state"], state["last_seq"]) == ("ok", 4)


async def test_push_gives_up_after_its_retries_when_the_agent_stays_away(
    own_target: Target, source: Path
) -> None:
    own_target.agent.kill()

    with pytest.raises(PushFailed, match="gave up after 1 retry: ") as caught:
        await own_target.push(source, retries=1)

    assert "\n" not in str(caught.value)


# -- error bodies ---------------------------------------------------------------------------------


def test_an_error_body_becomes_its_typed_error_with_frame_and_details() -> None:
    error_json = {"code": "CHECKSUM_MISMATCH", "message": "bad data", "frame": 2, "part": "data"}
    body = json.dumps({"error": error_json}).encode()

    error = error_from_response(422, body)

    assert isinstance(error, ChecksumMismatch)
    assert (error.message, error.frame, error.details) == ("bad data", 2, {"part": "data"})
    assert str(error) == "CHECKSUM_MISMATCH: bad data (frame 2)"


def test_a_sequence_gap_carries_the_expected_seq() -> None:
    body = b'{"error": {"code": "SEQUENCE_GAP", "message": "gap", "expected_seq": 7}}'

    error = error_from_response(409, body)

    assert isinstance(error, SequenceGap)
    assert error.details == {"expected_seq": 7}


def test_a_wrong_group_names_the_tags_group_and_the_disks() -> None:
    body = b'{"error": {"code": "WRONG_GROUP", "message": "m", "frame": 3, "group": "vm2", '
    body += b'"expected": "vm1"}}'

    error = error_from_response(400, body)

    assert isinstance(error, WrongGroup)
    assert (error.frame, error.details) == (3, {"group": "vm2", "expected": "vm1"})


def test_an_unknown_code_keeps_the_agents_code_and_status() -> None:
    error = error_from_response(418, b'{"error": {"code": "TEAPOT", "message": "short and stout"}}')

    assert type(error) is ProtocolError
    assert (error.code, error.status) == ("TEAPOT", 418)
    assert str(error) == "TEAPOT: short and stout"


def test_a_body_that_is_not_the_protocols_json_is_named_by_its_status() -> None:
    error = error_from_response(502, b"<html>Bad Gateway</html>")

    assert (error.code, error.status) == ("HTTP_502", 502)
    assert "Bad Gateway" in str(error)


# -- the command line -----------------------------------------------------------------------------


def mtagent_push(agent: AgentProcess | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m agent push` with the URL and TLS files of `agent` (placeholders for None)."""
    if agent is None:
        common = ["--server", "https://127.0.0.1:1", "--cert", "c", "--key", "k", "--ca", "ca"]
    else:
        common = ["--server", agent.url, "--cert", str(agent.cert), "--key", str(agent.key)]
        common += ["--ca", str(agent.ca)]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "agent", "push", *common, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_push_exits_0_and_prints_one_summary_line(target: Target, source: Path) -> None:
    done = mtagent_push(
        target.agent,
        *("--disk", target.disk, "--source", str(source), "--mode", "full"),
        *("--batch-bytes", "4MiB"),
    )

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{target.disk}: full push of 12.0 MiB in 3 batches (seq 1-3), ")
    assert "MB/s" in line
    assert done.stderr == ""  # not a terminal: no progress bar
    assert target.content(SOURCE_BYTES) == source.read_bytes()


def test_cli_push_json_is_one_object_with_the_result(target: Target, source: Path) -> None:
    done = mtagent_push(
        target.agent, "--disk", target.disk, "--source", str(source), "--mode", "full", "--json"
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {
        "schema",
        "disk",
        "mode",
        "batches",
        "first_seq",
        "last_seq",
        "disk_bytes",
        "data_bytes",
        "zero_bytes",
        "wire_bytes",
        "seconds",
        "retries",
    }
    assert (result["disk"], result["mode"], result["batches"]) == (target.disk, "full", 1)
    assert result["disk_bytes"] == SOURCE_BYTES


def test_cli_push_to_an_unknown_disk_exits_1_with_one_line(target: Target, source: Path) -> None:
    done = mtagent_push(
        target.agent, "--disk", "vm9-disk9", "--source", str(source), "--mode", "delta",
        "--base", str(source),
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("mtagent: ") and "UNKNOWN_DISK" in line and "vm9-disk9" in line


async def test_cli_push_without_a_mode_exits_2_and_writes_nothing(
    target: Target, source: Path
) -> None:
    done = mtagent_push(target.agent, "--disk", target.disk, "--source", str(source))

    assert done.returncode == 2
    assert "the following arguments are required: --mode" in done.stderr
    assert "Traceback" not in done.stderr
    assert target.content() == bytes(DISK_BYTES)
    assert (await target.state())["last_seq"] == 0


async def test_cli_push_of_a_source_smaller_than_the_disk_is_refused_in_one_line(
    target: Target, source: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.img"
    short.write_bytes(source.read_bytes()[: 8 * MiB])

    done = mtagent_push(
        target.agent, "--disk", target.disk, "--source", str(short), "--mode", "full"
    )

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"mtagent: disk {target.disk}: source ")
    assert f"{8 * MiB} bytes, smaller than the disk ({DISK_BYTES} bytes)" in line
    assert f"truncate -s {DISK_BYTES}" in line
    assert target.content() == bytes(DISK_BYTES)
    assert (await target.state())["last_seq"] == 0


async def test_cli_push_with_a_tag_for_another_group_is_refused_before_sending(
    target: Target, source: Path
) -> None:
    tag = ("--tag", "nightly", "--tag-kind", "app", "--tag-group", "vm2", "--tag-id", "t1")

    done = mtagent_push(
        target.agent, "--disk", target.disk, "--source", str(source), "--mode", "full", *tag
    )

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line == (
        f"mtagent: disk {target.disk} is in group 'g1': a tag for group 'vm2' cannot mark a "
        "point of it; tag it with its own group"
    )
    assert target.content() == bytes(DISK_BYTES)
    assert (await target.state())["last_seq"] == 0


def test_cli_push_without_its_options_exits_2() -> None:
    done = mtagent_push(None, "--source", "x.img")

    assert done.returncode == 2
    assert "the following arguments are required: --disk" in done.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--mode", "delta"], "--mode delta needs --base"),
        (["--base", "old.img"], "--base is only for --mode delta"),
        (["--tag", "nightly", "--tag-id", "t1"], "missing ['--tag-kind', '--tag-group']"),
        (["--frame-bytes", "lots"], "'lots' is not a size"),
        (["--retries", "-1"], "'-1' is not a whole number"),
    ],
    ids=["delta-without-base", "base-without-delta", "half-a-tag", "bad-size", "bad-retries"],
)
def test_cli_push_usage_errors_exit_2(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["push", "--server", "https://127.0.0.1:1", "--cert", "c", "--key", "k", "--ca", "ca"]
    argv += ["--disk", "d0", "--source", "x.img", "--mode", "full", *args]

    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    assert caught.value.code == 2
    assert complaint in capsys.readouterr().err


# -- the progress bar -----------------------------------------------------------------------------


def test_progress_line_shows_bar_bytes_rate_and_time_left() -> None:
    line = progress_line("d0", 512 * MiB, 1024 * MiB, 100e6, width=10)

    assert line == "d0 [#####.....]  50%  512.0 MiB/1.0 GiB  100.0 MB/s  ETA 0:05"


def test_progress_bar_redraws_at_most_four_times_a_second_and_always_at_the_end() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(stream, label="d0", clock=lambda: now[0])

    for step in range(1, 101):  # 100 updates over one second
        now[0] = step / 100
        bar(step * MiB, 100 * MiB)

    draws = stream.getvalue().split("\r\x1b[2K")[1:]
    assert 4 <= len(draws) <= 6
    assert draws[-1].startswith("d0 [##############################] 100%  100.0 MiB/100.0 MiB")


# -- failing fast ---------------------------------------------------------------------------------


def test_cli_push_to_a_port_where_no_agent_listens_fails_within_5_s_saying_each_wait(
    target: Target, source: Path
) -> None:
    port = free_port()
    started = time.monotonic()

    done = mtagent_push(target.agent, "--disk", "d0", "--source", str(source), "--mode", "full",
                        "--server", f"https://127.0.0.1:{port}")  # fmt: skip

    assert time.monotonic() - started < 5 + 2  # 3.5 s of waits, and the interpreter's start
    assert done.returncode == 1
    *waits, last = done.stderr.splitlines()
    assert len(waits) == 3 and all("trying again in" in line for line in waits)
    assert last.startswith("mtagent: disk d0: gave up after 3 retries: ")
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in last
    assert "is the agent running" in last


async def test_a_sender_certificate_the_agent_refuses_fails_at_once_without_retrying(
    target: Target, source: Path, tmp_path: Path
) -> None:
    init_pki(tmp_path / "other", ["127.0.0.1"])
    cert, key = issue_client(tmp_path / "other", "intruder")
    context = client_ssl_context(cert, key, target.agent.ca)
    started = time.monotonic()

    with pytest.raises(PushFailed) as caught:
        async with AgentClient(target.agent.url, context) as client:
            await client_push(client, target.disk, source)

    assert "refuses this sender's certificate" in str(caught.value)
    assert time.monotonic() - started < 5  # eight retries would take 45 s


async def client_push(client: AgentClient, disk: str, source: Path) -> PushResult:
    return await push_image(
        client, disk, source, mode="full", base=None, frame_bytes=MiB, batch_bytes=4 * MiB,
        compress=True, tag=None, retries=8, progress=None,
    )  # fmt: skip
