"""agent/units.py: one grammar for sizes and durations, the same in the config and on the CLI."""

from __future__ import annotations

import argparse
import math

import pytest

from agent.commands.push import size_argument
from agent.units import (
    InvalidValue,
    clock_duration,
    human_bytes,
    human_duration,
    parse_duration,
    parse_size,
)

# -- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        (4096, 4096),
        (0, 0),
        ("0", 0),
        ("512B", 512),
        ("1KiB", 1024),
        ("64MiB", 64 * 2**20),
        ("500GiB", 500 * 2**30),
        ("1.5TiB", 1536 * 2**30),
        ("2PiB", 2 * 2**50),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("10GB", 10_000_000_000),
        ("1TB", 10**12),
        ("1PB", 10**15),
        ("64mib", 64 * 2**20),
        ("64 MiB", 64 * 2**20),
        ("0.5KiB", 512),
        ("0.1GiB", 107374182),  # a fraction of a byte rounds down
        ("1K", 2**10),
        ("1M", 2**20),
        ("1m", 2**20),
        ("2G", 2 * 2**30),
        ("1T", 2**40),
        ("1P", 2**50),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "abc", "-1", -1, "1.5.0GiB", "10XB", "GiB", "1 G i B", "1e6", True, 1.5, "1,000"],
)
def test_parse_size_refuses_with_expectation(text: object) -> None:
    with pytest.raises(InvalidValue, match=r'expected a size like "500GiB"') as caught:
        parse_size(text)  # type: ignore[arg-type]

    assert isinstance(caught.value, ValueError)


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400.0),
        ("90m", 5400.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("1d2h3m4s5ms", 93784.005),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "abc", "60", "1h1h", "30m1h", "1 h", "-1h", "1w", "h", "1.h", 60]
)
def test_parse_duration_refuses_with_expectation(text: object) -> None:
    with pytest.raises(InvalidValue, match=r'expected a duration like "24h" or "90m"'):
        parse_duration(text)  # type: ignore[arg-type]


# -- the command line takes what the config takes -----------------------------------------------


@pytest.mark.parametrize("text", ["1M", "64MiB", "10GB", "1.5KiB", "4096", "2 g"])
def test_size_argument_accepts_the_config_grammar(text: str) -> None:
    assert size_argument(text) == parse_size(text)


@pytest.mark.parametrize("text", ["lots", "-1", "1e6", "10XB"])
def test_size_argument_refuses_what_the_config_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=rf"'{text}' is not a size \(a size like"):
        size_argument(text)


@pytest.mark.parametrize("text", ["0", "0MiB", "0.1B"])
def test_size_argument_refuses_a_zero_size(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="the size must be positive"):
        size_argument(text)


# -- showing sizes and durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (64 * 2**20, "64.0 MiB"),
        (3 * 2**40, "3.0 TiB"),
        (2**50, "1024.0 TiB"),
    ],
)
def test_human_bytes(n: int | None, shown: str) -> None:
    assert human_bytes(n) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "never"),
        (math.nan, "n/a"),
        (-5.0, "0s"),
        (0.0, "0s"),
        (42.9, "42s"),
        (90.0, "1m30s"),
        (252.0, "4m12s"),
        (3 * 3600 + 5 * 60, "3h05m"),
        (2 * 86400 + 4 * 3600 + 59, "2d04h"),
    ],
)
def test_human_duration(seconds: float | None, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_human_duration_without_days_counts_hours() -> None:
    assert human_duration(2 * 86400 + 4 * 3600 + 60, days=False) == "52h01m"


@pytest.mark.parametrize("seconds", [42.0, 90.0, 3 * 3600 + 5 * 60, 2 * 86400 + 4 * 3600])
def test_human_duration_reads_back_with_parse_duration(seconds: float) -> None:
    assert parse_duration(human_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0, "0:00"), (2.6, "0:03"), (725.0, "12:05"), (3723.0, "1:02:03")],
)
def test_clock_duration(seconds: float, shown: str) -> None:
    assert clock_duration(seconds) == shown
