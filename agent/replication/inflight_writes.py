"""What a disk's batches have written that a rollback could still take back.

For readers of a target that do not take the disk's lock (the hashes endpoint,
agent/server/hashes_api.py): a read is good when it saw committed content only, that is when no
batch open during the read wrote into its range. The apply path reports each group of writes before
it reaches the I/O thread (`writing`), and the end of each batch, committed or rolled back
(`ended`); a reader takes a `mark()` before reading and asks `settled(mark, start, stop)`
after. Everything runs on the event loop: no locking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

# Batches that ended are remembered this long (in batches) for readers that began before.
_REMEMBERED_BATCHES = 64


@dataclass(eq=False)
class InflightWrites:
    """The extents written by the open batch of one disk, and by the last batches to end."""

    generation: int = 0  # how many batches have ended
    _open: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) of the open batch
    _ended: deque[tuple[int, tuple[tuple[int, int], ...]]] = field(
        default_factory=lambda: deque(maxlen=_REMEMBERED_BATCHES)
    )
    _forgotten: int = 0  # the generation of the newest batch no longer in _ended

    def writing(self, extents: Iterable[tuple[int, int]]) -> None:
        """The open batch is about to write `extents` (offset, length)."""
        spans = self._open
        for offset, length in extents:
            if spans and spans[-1][1] == offset:
                spans[-1] = (spans[-1][0], offset + length)
            else:
                spans.append((offset, offset + length))

    def ended(self) -> None:
        """The open batch is committed or rolled back: its extents hold settled content."""
        self.generation += 1
        if self._open:
            if len(self._ended) == self._ended.maxlen:
                self._forgotten = self._ended[0][0]
            self._ended.append((self.generation, tuple(self._open)))
            self._open = []

    def mark(self) -> int:
        """Taken before a read: what `settled` compares with."""
        return self.generation

    def settled(self, mark: int, start: int, stop: int) -> bool:
        """Whether a read of `[start, stop)` that began at `mark` saw committed content only:
        no extent of the batch open now lies in it, and no batch that ended since `mark`
        wrote in it. False also when such a batch is no longer remembered."""
        if _overlaps(self._open, start, stop):
            return False
        if mark == self.generation:
            return True
        if mark < self._forgotten:
            return False
        return not any(
            generation > mark and _overlaps(spans, start, stop) for generation, spans in self._ended
        )


def _overlaps(spans: Iterable[tuple[int, int]], start: int, stop: int) -> bool:
    return any(span_start < stop and start < span_stop for span_start, span_stop in spans)
