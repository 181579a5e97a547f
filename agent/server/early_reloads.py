"""A SIGHUP that comes while `mtagent serve` is still starting: remembered, not fatal.

SIGHUP's default action ends a process, and the daemon can install its reload handler only once
its event loop runs, after the imports (most of a second), the configuration, the TLS files, the
lock and the listeners. A `systemctl reload` or a `kill -HUP` in that time used to kill the agent.
`hold()`, called first thing by `mtagent serve`, catches SIGHUP from then on and only notes it;
the daemon applies one reload for all the SIGHUPs noted (`take()`) as soon as it can reload, before
its listeners serve, so a configuration changed during the start is in force before the first
handshake. The interpreter's own start, before `mtagent`'s first line runs (tens of milliseconds),
is the one window left: no Python code runs there.

No imports beyond the standard library: this runs before the daemon's modules are loaded.
"""

from __future__ import annotations

import signal
from types import FrameType


class EarlyReloads:
    """SIGHUPs received before the daemon's own handler took over."""

    def __init__(self) -> None:
        self._asked = False

    def hold(self) -> None:
        """From now on a SIGHUP is noted instead of ending the process (main thread only)."""
        signal.signal(signal.SIGHUP, self._note)

    def take(self) -> bool:
        """Whether a SIGHUP was noted since the last call (and forget it)."""
        asked, self._asked = self._asked, False
        return asked

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._asked = True


# One per process, as the signal's disposition is.
EARLY_RELOADS = EarlyReloads()
