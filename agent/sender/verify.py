"""`verify_image`: compare a source with its target by chunk digests and report what differs,
writing nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.sender.compare import DEFAULT_CHUNK_BYTES, CompareProgress, Comparison
from blockio.scan.chunk_digests import SCAN_WINDOW_BYTES
from protocol.client import AgentClient

MAX_REPORTED_RANGES = 10_000
"""A verify keeps at most this many differing ranges (it counts them all)."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What a verify found: the chunks of the source that differ on the target, counted,
    and as coalesced byte ranges `(offset, length)` (the first MAX_REPORTED_RANGES).
    `target_bytes` is the disk's size: a target longer than the source is not identical,
    as its tail past the source's end is compared with nothing."""

    disk: str
    chunk_bytes: int
    compared_bytes: int
    target_bytes: int
    differing_chunks: int
    differing_bytes: int
    ranges: tuple[tuple[int, int], ...]
    ranges_truncated: bool
    seconds: float
    retries: int

    @property
    def target_longer_bytes(self) -> int:
        """How much longer the target is than the source (0: the same size)."""
        return self.target_bytes - self.compared_bytes

    @property
    def identical(self) -> bool:
        return self.differing_chunks == 0 and self.target_longer_bytes == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "mode": "verify",
            "identical": self.identical,
            "chunk_bytes": self.chunk_bytes,
            "compared_bytes": self.compared_bytes,
            "target_bytes": self.target_bytes,
            "differing_chunks": self.differing_chunks,
            "differing_bytes": self.differing_bytes,
            "ranges": [{"offset": offset, "length": length} for offset, length in self.ranges],
            "ranges_truncated": self.ranges_truncated,
            "seconds": self.seconds,
            "retries": self.retries,
        }


async def verify_image(
    client: AgentClient,
    disk_id: str,
    source: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    retries: int,
    progress: Callable[[CompareProgress], None] | None = None,
    window_bytes: int = SCAN_WINDOW_BYTES,
) -> VerifyResult:
    """Compare `source` with disk `disk_id` of the agent over `[0, size of source)` by chunk
    digests, and report the chunks that differ. Sends no batch: the target is not written.
    A source shorter than the disk is compared over its length, and the result says the
    target is longer (it is not identical).

    Retries like `agent.sender.resync.resync_image`. Raises PushFailed for a source that
    does not fit or cannot be read, an error answer that retrying cannot fix, or when retries
    run out; ValueError for a bad chunk size.
    """
    comparison = Comparison(
        client, disk_id, source, chunk_bytes=chunk_bytes, retries=retries, window_bytes=window_bytes
    )
    await comparison.open({}, shorter_ok=True)
    size = comparison.size
    ranges: list[tuple[int, int]] = []
    truncated = False
    async with contextlib.aclosing(comparison.windows(0)) as compared:
        async for window, differing in compared:
            for offset in differing:
                length = comparison.chunk_length(offset)
                if ranges and sum(ranges[-1]) == offset:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
                elif len(ranges) < MAX_REPORTED_RANGES:
                    ranges.append((offset, length))
                else:
                    truncated = True
            if progress is not None:
                progress(CompareProgress(window.stop, size, 0))
    if progress is not None:
        progress(CompareProgress(size, size, 0))
    return VerifyResult(
        disk=disk_id,
        chunk_bytes=comparison.chunk_bytes,
        compared_bytes=comparison.compared,
        target_bytes=comparison.disk_bytes,
        differing_chunks=comparison.differing_chunks,
        differing_bytes=comparison.differing_bytes,
        ranges=tuple(ranges),
        ranges_truncated=truncated,
        seconds=time.monotonic() - comparison.started,
        retries=comparison.retries.total,
    )
