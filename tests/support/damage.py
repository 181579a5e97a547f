"""Damaging files in place, as bit rot or a torn write would."""

from __future__ import annotations

from pathlib import Path


def flip_byte(path: Path, position: int, mask: int = 0xFF) -> None:
    """XOR the byte at `position` of `path` with `mask`."""
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ mask]))


def zero_bytes(path: Path, position: int, length: int) -> None:
    """Overwrite `length` bytes of `path` from `position` with zeros, as a sector or page that a
    power cut lost reads back."""
    with open(path, "r+b") as f:
        f.seek(position)
        f.write(bytes(length))
