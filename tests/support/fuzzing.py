"""Mangled batches, seeded: valid batch bodies built through the real encoder, then damaged the
ways a bad network, a bad sender or an attacker would (bits flipped anywhere, cut short, bytes
inserted or dropped, frames reordered, duplicated or taken from another batch, the wrong seq),
for the decoder alone (`fuzz_decoder`) and for a live agent (`fuzz_live`).

The rule checked: the decoder raises only its typed errors (`protocol.errors.ProtocolError`),
and the agent refuses every invalid batch with a documented code and status and changes
nothing: not the target, not `last_seq`, not the points. Used by scripts/torture.py and by
tests/protocol/test_decoder_mangled.py.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from protocol.decoder import BatchDecoder
from protocol.encoder import BatchEncoder
from protocol.errors import ERRORS_BY_CODE, ProtocolError
from protocol.events import Begin, Data, Event, Tag, Zero

SECTOR = 512


@dataclass
class FuzzReport:
    """Inputs tried, how they ended, and what broke the rule."""

    inputs: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "inputs": self.inputs,
            "accepted": self.accepted,
            "refused": dict(sorted(self.refused.items())),
            "failures": len(self.failures),
        }


def valid_frames(rng: random.Random, disk: str, seq: int, disk_bytes: int) -> list[bytes]:
    """The frames of a random valid batch: BEGIN, DATA (random or compressible), ZERO, maybe a
    TAG, END."""
    encoder = BatchEncoder(seq, compress=rng.random() < 0.7)
    flags = frozenset(rng.sample(["resync", "resync_done"], rng.randint(0, 2)))
    events: list[Event] = [Begin(disk, seq, rng.getrandbits(62), flags)]
    for _ in range(rng.randint(0, 5)):
        sectors = rng.randint(1, 16)
        offset = rng.randrange(0, disk_bytes // SECTOR - sectors + 1) * SECTOR
        if rng.random() < 0.7:
            length = sectors * SECTOR
            if rng.random() < 0.5:
                data = rng.randbytes(length)
            else:
                data = bytes([rng.randrange(256)]) * length
            events.append(Data(offset, data))
        else:
            events.append(Zero(offset, sectors * SECTOR))
    if rng.random() < 0.3:
        events.append(Tag(f"id{rng.randrange(99)}", "fuzz", rng.choice(["app", "crash"]), "g1", 1))
    return [encoder.encode(event) for event in events] + [encoder.end()]


def mangle(rng: random.Random, frames: list[bytes], other: list[bytes]) -> bytes:
    """One damaged body made from the frames of a valid batch (`other`: another batch's)."""
    frames = list(frames)
    how = rng.randrange(8)
    if how == 0:  # bits flipped anywhere
        flipped = bytearray(b"".join(frames))
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if how == 1:  # cut short
        whole = b"".join(frames)
        return whole[: rng.randrange(len(whole))]
    if how == 2:  # bytes inserted
        body = bytearray(b"".join(frames))
        at = rng.randrange(len(body) + 1)
        body[at:at] = rng.randbytes(rng.randint(1, 64))
        return bytes(body)
    if how == 3:  # bytes dropped
        body = bytearray(b"".join(frames))
        at = rng.randrange(len(body))
        del body[at : at + rng.randint(1, 64)]
        return bytes(body)
    if how == 4 and len(frames) > 2:  # frames reordered
        i, j = rng.sample(range(len(frames)), 2)
        frames[i], frames[j] = frames[j], frames[i]
    elif how == 5:  # a frame duplicated
        i = rng.randrange(len(frames))
        frames.insert(rng.randrange(len(frames) + 1), frames[i])
    elif how == 6:  # a frame from another batch
        frames[rng.randrange(len(frames))] = rng.choice(other)
    else:  # random bytes, or a header's worth of them in front of the batch
        junk = rng.randbytes(rng.randint(1, 200))
        return junk if rng.random() < 0.5 else junk + b"".join(frames)
    return b"".join(frames)


def decode(body: bytes, rng: random.Random, disk: str, seq: int, disk_bytes: int) -> None:
    """Feed `body` to a decoder in random pieces, then end it. Raises what the decoder raises."""
    decoder = BatchDecoder(disk=disk, seq=seq, disk_bytes=disk_bytes, sector_bytes=SECTOR)
    position = 0
    while position < len(body):
        step = rng.choice([1, 7, 40, 512, 4096, len(body)])
        decoder.feed(body[position : position + step])
        position += step
    decoder.eof()


def fuzz_decoder(inputs: int, seed: int, disk_bytes: int = 1 << 20) -> FuzzReport:
    """Feed `inputs` mangled batches to the decoder: each must decode or raise a ProtocolError
    whose code is documented (ERRORS_BY_CODE)."""
    rng = random.Random(seed)
    report = FuzzReport()
    other = valid_frames(rng, "d0", 2, disk_bytes)
    for i in range(inputs):
        frames = valid_frames(rng, "d0", 2, disk_bytes)
        body = mangle(rng, frames, other)
        if i % 64 == 0:
            other = frames
        report.inputs += 1
        try:
            decode(body, rng, "d0", 2, disk_bytes)
        except ProtocolError as exc:
            if exc.code not in ERRORS_BY_CODE:
                report.failures.append(f"seed {seed} input {i}: undocumented code {exc.code}")
            report.refused[exc.code] += 1
        except Exception as exc:  # anything else is exactly what is looked for
            report.failures.append(f"seed {seed} input {i}: {type(exc).__name__}: {exc}")
        else:
            report.accepted += 1
    return report


async def fuzz_live(agent: object, batches: int, seed: int, disk_bytes: int) -> FuzzReport:
    """Send `batches` invalid batches (mangled, or valid under a wrong seq) to disk d0 of the
    running `agent` (a tests.support.agent_harness.AgentProcess whose d0 took batch 1 and is
    `ok`): each must be refused with a documented code and its HTTP status, and the target,
    `last_seq` and the points must stay as they were."""
    from tests.support.agent_harness import BATCH_CONTENT, AgentProcess

    assert isinstance(agent, AgentProcess)
    rng = random.Random(seed)
    report = FuzzReport()
    described = await agent.disk()
    last = described["last_seq"]
    before = (agent.target_bytes("d0"), await agent.points())
    other = valid_frames(rng, "d0", last + 1, disk_bytes)
    async with agent.client() as session:
        while report.inputs < batches:
            seq = last + 1
            if rng.random() < 0.15:
                # A valid batch under a wrong seq: a gap, or an acknowledged seq's replay that
                # differs from what was committed.
                url_seq = rng.choice([last + rng.randint(2, 9), rng.randint(1, last)])
                body = b"".join(valid_frames(rng, "d0", url_seq, disk_bytes))
            else:
                url_seq = seq
                body = mangle(rng, valid_frames(rng, "d0", seq, disk_bytes), other)
                try:
                    decode(body, rng, "d0", seq, disk_bytes)
                    continue  # still a valid batch: not what this run is about
                except ProtocolError:
                    pass
            report.inputs += 1
            async with session.put(
                f"/v1/disks/d0/batches/{url_seq}",
                data=body,
                headers=BATCH_CONTENT,
            ) as response:
                answer = await response.json(content_type=None)
                status = response.status
            code = (answer.get("error") or {}).get("code") if isinstance(answer, dict) else None
            known = ERRORS_BY_CODE.get(code or "")
            if status == 200 or known is None or known.status != status:
                report.failures.append(
                    f"seed {seed} batch {report.inputs}: {status} {answer} for seq {url_seq}"
                )
                if status == 200:
                    return report
                continue
            report.refused[str(code)] += 1
            if report.inputs % 50 == 0 and agent.target_bytes("d0") != before[0]:
                report.failures.append(f"seed {seed}: the target changed by batch {report.inputs}")
                return report
    after = (agent.target_bytes("d0"), await agent.points())
    if after != before or (await agent.disk())["last_seq"] != last:
        report.failures.append(f"seed {seed}: target, last_seq or points changed")
    return report


def live_agent_files(base: Path, disk_bytes: int) -> dict[str, int | Path]:
    """A target for `fuzz_live`'s agent, holding random bytes."""
    base.mkdir(parents=True, exist_ok=True)
    target = base / "d0.img"
    target.write_bytes(random.Random(0).randbytes(disk_bytes))
    return {"d0": target}
