"""Sending numbered batches to the agent, retrying and resuming, through the producer pipe.

Push, resync and checkpoint batches all go this way: a producer thread reads the source,
cuts and encodes the batches (`protocol.batching`, `agent.sender.bodies`) and hands their
body chunks through a `ThreadPipe` to the event loop, which streams each batch as a chunked
request body: memory stays bounded whatever the batch size, and the loop mostly does TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from agent.sender.bodies import CHUNK_BYTES, Chunk, Closed, Item, Opened, Scanned, encode_batches
from agent.sender.bodies import slices as body_slices
from agent.sender.errors import BatchRefused, PushFailed, reading_failed
from agent.sender.pipe import PipeBroken, ThreadPipe
from agent.sender.retry import TRANSPORT_ERRORS, RetryBudget, is_transient
from protocol.client import AgentClient
from protocol.errors import ProtocolError, SequenceGap
from protocol.events import Event

PIPE_BYTES = 16 * 1024 * 1024
"""Bytes of body chunks that may wait between the producer thread and the event loop."""

EventsFrom = Callable[[int, int, Callable[[int], None]], Iterable[Event]]
"""`events_from(seq, offset, scanned)`: the events of the batches from `seq` on, whose
extents begin at `offset` (where batch `seq` began); called in the producer thread, which
it may tell how far it has compared with `scanned(position)`."""


class BatchSender:
    """Sends batches of one disk in order and counts what the agent acknowledged.

    `acked` is the agent's last_seq as far as this sender knows (set it before the first
    `send`); `data_bytes` and `zero_bytes` are the DATA and ZERO lengths of acknowledged
    batches; `wire_bytes` every byte of request bodies sent, failed attempts included.
    """

    def __init__(
        self,
        client: AgentClient,
        disk: str,
        source: Path,
        budget: RetryBudget,
        *,
        compress: bool,
        frame_bytes: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.disk = disk
        self.source = source
        self.budget = budget
        self.compress = compress
        self.depth = max(4, min(64, PIPE_BYTES // max(frame_bytes, CHUNK_BYTES)))
        self.progress = progress
        self.acked = 0
        self.data_bytes = 0
        self.zero_bytes = 0
        self.wire_bytes = 0
        self._failed_seq = 0  # the batch being sent, named if it fails
        # Batches sent whole whose answer never came: durable or not, last_seq will tell.
        self._unanswered: dict[int, Closed] = {}

    @property
    def disk_bytes(self) -> int:
        return self.data_bytes + self.zero_bytes

    async def send(self, first_seq: int, events_from: EventsFrom) -> None:
        """Send the batches of `events_from(first_seq, 0, ...)` until the agent has them all.

        On a disconnect, a timeout, a 5xx answer or TARGET_UNAVAILABLE it backs off, asks
        the agent for its last_seq and goes on after it: acknowledged batches are never sent
        again, and a batch sent again has the content it had (events_from must give the same
        batches from where one began). The budget bounds the failures in a row.

        Raises BatchRefused for an error answer retrying cannot fix; PushFailed when the
        source cannot be read, when retries run out, or when the agent's last_seq goes back
        (its state was lost).
        """
        # Where the extents of each batch begin: resuming batch s reads from starts[s].
        starts = {first_seq: 0}
        while True:
            if self.acked < first_seq - 1:
                raise PushFailed(
                    f"disk {self.disk}: the agent's last_seq went back to {self.acked} during "
                    f"this run (it was {first_seq - 1}); its state was lost",
                    disk=self.disk,
                )
            resume = max(seq for seq in starts if seq <= self.acked + 1)
            try:
                await self._send_from(resume, starts, events_from)
                return
            except SequenceGap as exc:
                expected = exc.details.get("expected_seq")
                seq = self._failed_seq
                if not isinstance(expected, int) or expected <= seq:
                    raise BatchRefused(self.disk, seq, exc) from exc
                # Our batch is already there (its answer was lost): go on after it.
                self.budget.count(exc)
                self._learn_acked(expected - 1)
            except ProtocolError as exc:
                if not is_transient(exc):
                    raise BatchRefused(self.disk, self._failed_seq, exc) from exc
                await self.budget.back_off(exc)
                self._learn_acked(await last_seq(self.client, self.disk, self.budget))
            except TRANSPORT_ERRORS as exc:
                await self.budget.back_off(exc)
                self._learn_acked(await last_seq(self.client, self.disk, self.budget))

    async def _send_from(
        self, first_seq: int, starts: dict[int, int], events_from: EventsFrom
    ) -> None:
        """Send the batches from `first_seq` to the end, skipping those acknowledged."""
        offset, skip_through = starts[first_seq], self.acked

        def produce(put: Callable[[Item], None]) -> None:
            events = events_from(first_seq, offset, lambda position: put(Scanned(position)))
            encode_batches(
                events, put, compress=self.compress, offset=offset, skip_through=skip_through
            )

        self._failed_seq = first_seq
        async with ThreadPipe(produce, depth=self.depth, name=f"send-{self.disk}") as pipe:
            while (item := await self._next(pipe)) is not None:
                if isinstance(item, Scanned):
                    self._report(item.position)
                    continue
                assert isinstance(item, Opened), item
                starts[item.seq] = item.offset
                self._failed_seq = item.seq
                closed: list[Closed] = []
                try:
                    await self.client.put_batch(self.disk, item.seq, self._body(pipe, closed))
                except Exception:
                    if pipe.failure is not None:
                        raise reading_failed(self.disk, self.source, pipe.failure) from None
                    if closed:
                        self._unanswered[item.seq] = closed[0]
                    raise
                self.acked = item.seq
                self.budget.succeeded()
                self._count(closed[0])

    async def _next(self, pipe: ThreadPipe[Item]) -> Item | None:
        try:
            return await pipe.get()
        except PipeBroken as exc:
            assert exc.__cause__ is not None
            raise reading_failed(self.disk, self.source, exc.__cause__) from None

    async def _body(
        self, pipe: ThreadPipe[Item], closed: list[Closed]
    ) -> AsyncIterator[bytes | memoryview]:
        """The request body of the batch just opened: its chunks up to its END. A producer
        failure breaks it (PipeBroken); _send_from reports the real cause."""
        while True:
            item = await pipe.get()
            if isinstance(item, Scanned):
                self._report(item.position)
                continue
            if not isinstance(item, Chunk):
                raise AssertionError(f"unexpected {item!r} inside a batch")
            self.wire_bytes += len(item.data)
            self._report(item.position)
            if item.closed is not None:
                # Noted before the yield: once the agent has END it may answer, and the
                # client then stops asking this generator for more.
                closed.append(item.closed)
            for piece in body_slices(item.data):
                yield piece
            if item.closed is not None:
                return

    def _report(self, position: int) -> None:
        if self.progress is not None:
            self.progress(position)

    def _learn_acked(self, acked: int) -> None:
        """The agent's last_seq, learnt after a failure: batches sent whole up to it are
        durable although their answer was lost."""
        self.acked = acked
        for seq in sorted(self._unanswered):
            closed = self._unanswered.pop(seq)
            if seq <= acked:
                self._count(closed)

    def _count(self, closed: Closed) -> None:
        self.data_bytes += closed.data_bytes
        self.zero_bytes += closed.zero_bytes


async def last_seq(client: AgentClient, disk: str, budget: RetryBudget) -> int:
    """The agent's last_seq of `disk`, asked again after transient failures."""
    answer = await budget.call(lambda: client.disk(disk))
    return answer.last_seq
