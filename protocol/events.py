"""Typed events of a batch: what the decoder yields and the encoder takes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Begin:
    """First frame of a batch. `disk` and `seq` must equal the request URL's."""

    disk: str
    seq: int
    source_time_ns: int
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Data:
    """New bytes for `[offset, offset + len(data))`, already verified and decompressed.

    `index` is the frame's position in the batch (BEGIN is 0); the encoder ignores it.
    """

    offset: int
    data: bytes | memoryview
    index: int = 0


@dataclass(frozen=True, slots=True)
class Zero:
    """`[offset, offset + length)` becomes zeros."""

    offset: int
    length: int
    index: int = 0


@dataclass(frozen=True, slots=True)
class Tag:
    """The end of this batch is a recovery point declared consistent by the source."""

    tag_id: str
    name: str
    kind: str  # a PointKind (protocol.documents): "app" or "crash"
    group: str
    time_ns: int


@dataclass(frozen=True, slots=True)
class End:
    """Last frame: counts of the whole batch (frames including BEGIN and END)."""

    frames: int
    data_bytes: int


Event = Begin | Data | Zero | Tag | End
