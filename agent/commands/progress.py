"""A one-line progress bar for long work on a terminal: bar, bytes, rate, time left."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from agent.units import clock_duration, human_bytes


class TextStream(Protocol):
    """Where a progress bar draws: a terminal's text stream, or a wrapper of one."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


# The rate is measured over the last few seconds, so it follows the transfer as it is
# now rather than its average since the start.
_RATE_WINDOW_SECONDS = 5.0


def progress_line(label: str, done: int, total: int, rate: float | None, width: int = 30) -> str:
    """`label [#####.....]  50%  1.0/2.0 GiB  350.0 MB/s  ETA 0:03`; rate in bytes/s.

    An unknown rate (None, or nothing measured yet) shows `-- MB/s` and no ETA.
    """
    fraction = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
    filled = round(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    line = f"{label} [{bar}] {fraction * 100:3.0f}%  {human_bytes(done)}/{human_bytes(total)}"
    if rate is None or rate <= 0:
        return f"{line}  -- MB/s"
    line = f"{line}  {rate / 1e6:.1f} MB/s"
    if done < total:
        line = f"{line}  ETA {clock_duration((total - done) / rate)}"
    return line


class ProgressBar:
    """Draws `progress_line` in place on `stream` (a terminal), at most every `interval`
    seconds and once more when done reaches total. Call it as `bar(done, total)`;
    `close()` erases the line so that what follows starts on a clean line.
    """

    def __init__(
        self,
        stream: TextStream,
        *,
        label: str,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._interval = interval
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._drawn_at: float | None = None
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        samples = self._samples
        if samples and done < samples[-1][1]:
            # Work went back (a batch sent again): the old samples no longer measure rate.
            samples.clear()
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_SECONDS:
            samples.popleft()
        finished = done >= total
        if finished and self._finished:
            return
        if not finished and self._drawn_at is not None and now - self._drawn_at < self._interval:
            return
        self._drawn_at = now
        self._finished = finished
        first_time, first_done = samples[0]
        elapsed = now - first_time
        rate = (done - first_done) / elapsed if elapsed > 0 else None
        self._stream.write("\r\x1b[2K" + progress_line(self._label, done, total, rate))
        self._stream.flush()

    def close(self) -> None:
        """Erase the bar, if one was drawn."""
        if self._drawn_at is not None:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._drawn_at = None
