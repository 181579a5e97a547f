"""The comparison of a source with its target by chunk digests (docs/protocol.md section 5), shared
by resync and verify.

A pipeline in which neither side waits for a whole pass of the other: worker threads read
the source in windows and digest its chunks a couple of windows ahead
(`agent.sender.digests.SourceDigests`); the agent streams the target's digests over one
connection as it reads them (`TargetDigests`); the event loop compares each window as soon
as both sides of it are there. Both sides read with O_DIRECT in large windows
(blockio.scan.chunk_digests.SCAN_WINDOW_BYTES), the fastest way through a whole disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.sender.digests import SourceDigests, TargetDigests
from agent.sender.retry import RetryBudget
from agent.sender.source_fit import check_fits, measure_source
from blockio.scan.chunk_digests import DIGEST_BYTES, SCAN_WINDOW_BYTES, chunk_bytes_problem
from protocol.client import AgentClient
from protocol.documents import Disk, DiskState

MODES = ("resync", "verify")

DEFAULT_CHUNK_BYTES = 64 * 1024
"""The comparison's grid. Small chunks send little more than what changed (a changed
64 KiB block costs 64 KiB, not a megabyte); a 2 GiB disk has 32768 of them, 512 KiB of
digests, which is nothing beside the disk's own reading."""


@dataclass(frozen=True, slots=True)
class CompareProgress:
    """How far a resync or verify is: the comparison has reached offset `compared_bytes` of
    the source's `total_bytes`; `sent_bytes` of disk bytes are in acknowledged batches."""

    compared_bytes: int
    total_bytes: int
    sent_bytes: int


class Comparison:
    """One resync or verify run: where the agent is, the source, and the tallies.

    `open` first; then `windows` compares. `compared` is how far from its start the
    comparison got; `differing_chunks` and `differing_bytes` what it found.
    """

    def __init__(
        self,
        client: AgentClient,
        disk: str,
        source: Path,
        *,
        chunk_bytes: int,
        retries: int,
        window_bytes: int = SCAN_WINDOW_BYTES,
    ) -> None:
        """Raises ValueError for a chunk size the protocol does not have."""
        problem = chunk_bytes_problem(chunk_bytes)
        if problem:
            raise ValueError(problem)
        self.client = client
        self.disk = disk
        self.source = source
        self.chunk_bytes = chunk_bytes
        self.window_bytes = max(window_bytes, chunk_bytes)
        self.retries = RetryBudget(retries, disk, client.base_url)
        self.started = time.monotonic()
        self.size = 0
        self.disk_bytes = 0
        self.source_time_ns = 0
        self.sector = 512
        self.compared = 0
        self.differing_chunks = 0
        self.differing_bytes = 0

    async def open(self, sizes: Mapping[str, int], *, shorter_ok: bool = False) -> Disk:
        """The agent's Disk, once the source is measured and known to fit it, sent in
        `sizes` ("frame size", "batch size"); a source shorter than the disk only where
        `shorter_ok`. Raises PushFailed if it does not."""
        info = await self.retries.call(self.client.info)
        disk = await self.retries.call(lambda: self.client.disk(self.disk))
        self.size, self.source_time_ns = await asyncio.to_thread(
            measure_source, self.disk, self.source
        )
        self.sector = disk.sector_bytes
        self.disk_bytes = disk.size_bytes
        check_fits(
            self.disk,
            self.source,
            self.size,
            info=info,
            disk=disk,
            sizes=sizes,
            shorter_ok=shorter_ok,
        )
        return disk

    def resume_offset(self, disk: Disk) -> int:
        """Where a resync of `disk` starts comparing: its resync_offset when it is resyncing
        from this source, else 0."""
        if disk.state != DiskState.RESYNCING:
            return 0
        if disk.last_source_time_ns != self.source_time_ns:
            return 0  # the source changed since: what the target holds proves nothing
        offset = min(disk.resync_offset, self.size)
        return offset - offset % self.chunk_bytes

    def chunk_length(self, offset: int) -> int:
        """The length of the chunk at `offset`: the last one may be short."""
        return min(self.chunk_bytes, self.size - offset)

    async def windows(self, start: int) -> AsyncGenerator[tuple[range, list[int]], None]:
        """Each window of the source from `start` with the offsets of its chunks that differ
        on the target, in order, as both sides' digests come in.

        Raises PushFailed if the source cannot be read, the agent refuses its digests, or
        retries run out.
        """
        target = TargetDigests(self.client, self.disk, self.size, self.chunk_bytes, self.retries)
        source = SourceDigests(
            self.source, start, self.size, self.chunk_bytes, self.window_bytes, self.disk
        )
        chunk = self.chunk_bytes
        try:
            if start < self.size:
                target.begin(start)
            async with contextlib.aclosing(source.windows()) as source_windows:
                async for window, mine in source_windows:
                    theirs = await target.take(window.start, len(mine) // DIGEST_BYTES)
                    self.retries.succeeded()
                    differing: list[int] = []
                    if theirs != mine:
                        differing = [
                            window.start + at // DIGEST_BYTES * chunk
                            for at in range(0, len(mine), DIGEST_BYTES)
                            if mine[at : at + DIGEST_BYTES] != theirs[at : at + DIGEST_BYTES]
                        ]
                    for offset in differing:
                        self.differing_chunks += 1
                        self.differing_bytes += self.chunk_length(offset)
                    self.compared = window.stop - start
                    yield window, differing
        finally:
            await target.close()
