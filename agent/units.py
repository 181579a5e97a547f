"""Sizes and durations: the one grammar people write them in, and how the agent shows them.

The configuration file and the command line parse with the same functions, so a spelling that
one accepts the other accepts too. No imports of the agent's heavier modules: the push command
imports this, and its start-up time is part of every resync.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
PiB = 1024 * TiB

SIZE_EXAMPLE = 'a size like "500GiB", "64MiB" or 4096'
DURATION_EXAMPLE = 'a duration like "24h" or "90m"'

# Binary units, with their one-letter short forms (`1M` is 1 MiB, as `dd` and `truncate` read
# it), and decimal ones for people who count the way drive vendors do.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "m": MiB,
    "mib": MiB,
    "g": GiB,
    "gib": GiB,
    "t": TiB,
    "tib": TiB,
    "p": PiB,
    "pib": PiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
}
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")

_DURATION_UNITS: dict[str, Decimal] = {
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_PATTERN = re.compile(rf"(?:{_DURATION_PART.pattern})+")


class InvalidValue(ValueError):
    """A value that parse_size or parse_duration refuses: what was expected, what was given."""

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"expected {expected}, got {got}")


def parse_size(text: str | int) -> int:
    """A byte count from an int or a string like "500GiB", "64M", "4096", "1.5TiB", "10GB".

    Units, case-insensitive: B; K, KiB, M, MiB, G, GiB, T, TiB, P, PiB (powers of 1024); KB,
    MB, GB, TB, PB (powers of 1000); no unit means bytes. A fraction rounds down to a whole
    byte. Raises InvalidValue (a ValueError with `expected` and `got`) for anything else,
    including negative numbers and booleans.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise InvalidValue(SIZE_EXAMPLE, describe_value(text))
    if isinstance(text, int):
        if text < 0:
            raise InvalidValue(f"{SIZE_EXAMPLE} (not negative)", str(text))
        return text
    match = _SIZE_PATTERN.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise InvalidValue(SIZE_EXAMPLE, describe_value(text))
    return int(Decimal(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """Seconds from a string like "24h", "90m", "30s", "1h30m", "500ms", "2d", "1.5h".

    Parts are a number and a unit (d, h, m, s, ms), largest unit first, each unit at most
    once. A bare number is refused: "60" could mean seconds or minutes.
    Raises InvalidValue (a ValueError with `expected` and `got`) for anything else.
    """
    if not isinstance(text, str) or _DURATION_PATTERN.fullmatch(text) is None:
        raise InvalidValue(DURATION_EXAMPLE, describe_value(text))
    seconds = Decimal(0)
    previous_unit: Decimal | None = None
    for number, unit in _DURATION_PART.findall(text):
        unit_seconds = _DURATION_UNITS[unit]
        # "30m1h" or "1h1h" is more likely a typo than an intent.
        if previous_unit is not None and unit_seconds >= previous_unit:
            raise InvalidValue(
                f"{DURATION_EXAMPLE} (largest unit first, each unit once)", describe_value(text)
            )
        previous_unit = unit_seconds
        seconds += Decimal(number) * unit_seconds
    return float(seconds)


def describe_value(value: object) -> str:
    """A value as an error message shows it: strings quoted, tables and arrays named."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None, *, days: bool = True) -> str:
    """A duration as people read it, in parse_duration's grammar: "42s", "4m12s", "3h05m",
    "2d04h"; whole seconds, the two largest units. With `days=False` hours are the largest
    unit ("52h04m"). None -> "never"; NaN -> "n/a"; a negative duration (a clock that stepped
    back) shows as "0s".
    """
    if seconds is None:
        return "never"
    if math.isnan(seconds):
        return "n/a"
    whole = max(0, int(seconds))
    whole_days, rest = divmod(whole, 86400) if days else (0, whole)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if whole_days:
        return f"{whole_days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def clock_duration(seconds: float) -> str:
    """A duration as a clock shows it, rounded to the second: "0:03", "12:05", "1:02:03"."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
