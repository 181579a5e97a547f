"""Bytes in, verified events out: the receiving side of a batch (docs/protocol.md 3), sans-I/O.

Every rule of section 3 is checked here, in this order for each frame:

1. bytes after END                  -> BadOrder
2. magic (as soon as 40 bytes are in) -> BadMagic / UnsupportedVersion
3. header_digest, seeded with seq    -> ChecksumMismatch (nothing else in the header is trusted
   before it)
4. type, reserved, flags             -> BadFrame
5. frame order                       -> BadOrder
6. the type's fields and the limits  -> BadFrame / OutOfRange / FrameTooLarge / BatchTooLarge
7. the payload, once all of it is in: digest -> ChecksumMismatch; LZ4 and JSON -> BadFrame;
   END's counts -> BadFrame

Steps 1-6 run on the header alone, so an over-limit frame is refused before a byte of its
payload is buffered. A DATA frame's `length` is at most `max_frame_bytes` and an LZ4 payload at
most `lz4_payload_bound(length)`, so no frame holds more than the bound of `max_frame_bytes`.
An oversized JSON payload (BEGIN, TAG, END over MAX_JSON_PAYLOAD) is FrameTooLarge, like any
frame over a limit (docs/protocol.md 4.5 answers those 413).

JSON payloads are held to the exact objects of section 3.2: every field present, no other
field, no key twice, ints that are not bools, strings without lone surrogates, times in
[0, 2**63) (a signed 64-bit nanosecond count, as `time.time_ns()` gives), BEGIN flags
without repeats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NoReturn

import lz4.block
from xxhash import xxh3_64_intdigest

from protocol.errors import (
    BadFrame,
    BadMagic,
    BadOrder,
    BatchTooLarge,
    ChecksumMismatch,
    FrameTooLarge,
    OutOfRange,
    ProtocolError,
    Truncated,
    UnsupportedVersion,
)
from protocol.events import Begin, Data, End, Event, Tag, Zero
from protocol.wire import (
    BEGIN_FLAGS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    FLAG_LZ4,
    HEADER,
    HEADER_BYTES,
    HEADER_DIGESTED_BYTES,
    MAGIC,
    MAGIC_FAMILY,
    MAX_JSON_PAYLOAD,
    TAG_KINDS,
    FrameType,
)

_FRAME_TYPES = {t.value: t for t in FrameType}
_JSON_TYPES = (FrameType.BEGIN, FrameType.TAG, FrameType.END)
_TIME_LIMIT = 2**63
# Pieces of a frame at least this big are held as they are; smaller ones are gathered.
_LARGE_PIECE = 64 * 1024

# The exact JSON object of each frame type: field name -> Python type (bool is not int).
_BEGIN_FIELDS: dict[str, type] = {"disk": str, "seq": int, "source_time_ns": int, "flags": list}
_TAG_FIELDS: dict[str, type] = {
    "tag_id": str,
    "name": str,
    "kind": str,
    "group": str,
    "time_ns": int,
}
_END_FIELDS: dict[str, type] = {"frames": int, "data_bytes": int}


def lz4_payload_bound(length: int) -> int:
    """The largest LZ4 payload a DATA frame of `length` bytes may carry: LZ4's compress bound,
    `LZ4_COMPRESSBOUND(length)`, what an LZ4 compressor may produce for incompressible data.

    A sender that compresses every block sends some of them larger than `length` (a random
    64 KiB block becomes 65,794 bytes); the protocol allows that up to this bound.
    """
    return length + length // 255 + 16


class _DuplicateKey(ValueError):
    pass


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; another parser may keep the first.
    # A payload that reads differently to different parsers is refused.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"key {key!r} appears twice")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class BatchDecoder:
    """Decodes the body of one `PUT /v1/disks/{disk}/batches/{seq}` into events.

    Feed it the body in chunks of any size; it returns each frame's event as soon as
    the frame is complete and verified. A Data event's `data` is the uncompressed
    bytes whose XXH3-64 matched the frame's digest: a `bytes` object of its own,
    which later feeds never touch.

    It holds at most one frame (header and payload) beyond the chunk being fed, never
    the batch. A raw payload that arrives within one chunk is copied once, into its
    event. One split across chunks is gathered, then joined: one copy more, except
    for pieces of 64 KiB or more of immutable `bytes` chunks, which are held as
    slices (a bytearray the caller may refill is always copied).

    The first error is final: `feed` raises it (the events that call had decoded are
    dropped with it: the batch fails as a whole), and every later `feed` or `eof`
    raises it again. Every error names the frame at fault (BEGIN is frame 0).
    """

    def __init__(
        self,
        *,
        disk: str,
        seq: int,
        disk_bytes: int,
        sector_bytes: int,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        if sector_bytes <= 0 or disk_bytes < 0 or max_frame_bytes <= 0 or max_batch_bytes < 0:
            raise ValueError(
                f"bad decoder limits: disk_bytes={disk_bytes} sector_bytes={sector_bytes} "
                f"max_frame_bytes={max_frame_bytes} max_batch_bytes={max_batch_bytes}"
            )
        self._disk = disk
        self._seq = seq
        self._disk_bytes = disk_bytes
        self._sector_bytes = sector_bytes
        self._max_frame_bytes = max_frame_bytes
        self._max_batch_bytes = max_batch_bytes

        self._frames = 0  # frames fully decoded; also the index of the frame in progress
        self._batch_bytes = 0  # sum of DATA and ZERO lengths decoded
        self._began = False
        self._tagged = False
        self._finished = False
        self._error: ProtocolError | None = None

        # The unit being collected: a header (HEADER_BYTES) or the payload of `_header`.
        self._need = HEADER_BYTES
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._pending = 0
        # The current frame's validated header: type, flags, offset, length, digest.
        self._header: tuple[FrameType, int, int, int, int] | None = None

    @property
    def finished(self) -> bool:
        """True once END has been decoded and verified."""
        return self._finished

    @property
    def frames(self) -> int:
        """Frames decoded and verified so far (BEGIN and END included)."""
        return self._frames

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Take the next chunk of the body; return the events of the frames it completes.

        Raises the ProtocolError subclass of the first rule broken (see the module
        docstring), with `frame` set; BadOrder for any byte after END.
        """
        return list(self.events(data))

    def events(self, data: bytes | bytearray | memoryview) -> Iterator[Event]:
        """`feed`, one event at a time: a frame is taken from `data` (and a DATA payload
        decompressed and verified) only when its event is asked for, so that a consumer that
        waits between events holds one event's data, not a whole chunk's. `data` must not
        change until the iterator is exhausted, and the next chunk waits until then.
        """
        if self._error is not None:
            raise self._error
        try:
            yield from self._feed(data)
        except ProtocolError as exc:
            self._error = exc
            raise

    def eof(self) -> None:
        """The body has ended. Raises Truncated unless END was decoded."""
        if self._error is not None:
            raise self._error
        if self._finished:
            return
        got = f"{self._pending} of {self._need} bytes"
        if self._header is not None:
            where = f"in the payload of frame {self._frames} ({got})"
        elif self._pending:
            where = f"in the header of frame {self._frames} ({got})"
        else:
            where = f"before frame {self._frames}"
        self._error = Truncated(f"the body ended {where}, before END", frame=self._frames)
        raise self._error

    def _feed(self, data: bytes | bytearray | memoryview) -> Iterator[Event]:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = len(view)
        # Slices of an immutable bytes object can be kept across feeds without a copy.
        keep_slices = view.readonly and isinstance(view.obj, bytes)
        events: list[Event] = []
        pos = 0
        while pos < size:
            if self._finished:
                raise BadOrder(
                    f"{size - pos} byte(s) after END", frame=self._frames, extra_bytes=size - pos
                )
            missing = self._need - self._pending
            unit: bytes | memoryview
            if not self._pieces and size - pos >= missing:
                unit = view[pos : pos + missing]
                pos += missing
            else:
                take = min(missing, size - pos)
                self._hold(view[pos : pos + take], keep_slices)
                self._pending += take
                pos += take
                if take < missing:
                    break
                unit = b"".join(self._pieces)
                self._pieces = []
                self._pending = 0
            if self._header is None:
                self._take_header(unit, events)
                yield from events
                events.clear()
            else:
                event = self._take_payload(unit)
                del unit  # not held while the consumer handles the event
                yield event

    def _hold(self, piece: memoryview, keep_slice: bool) -> None:
        """Keep part of the current unit until the rest of it is fed."""
        if len(piece) >= _LARGE_PIECE:
            # A caller's bytearray may be refilled after feed() returns: copy it.
            self._pieces.append(piece if keep_slice else bytes(piece))
        elif self._pieces and type(self._pieces[-1]) is bytearray:
            # Small pieces go into one bytearray, so that a body fed in tiny chunks
            # costs no more memory than its bytes.
            self._pieces[-1] += piece
        else:
            self._pieces.append(bytearray(piece))

    def _take_header(self, raw: bytes | memoryview, events: list[Event]) -> None:
        index = self._frames
        (magic, type_byte, flags, reserved, offset, length, payload_len, digest, header_digest) = (
            HEADER.unpack(raw)
        )
        if magic != MAGIC:
            if magic[:3] != MAGIC_FAMILY:
                raise BadMagic(f"frame starts with {magic!r}, not {MAGIC!r}", frame=index)
            raise UnsupportedVersion(
                f"frame of protocol version {magic[3:]!r}; this agent speaks {MAGIC!r}",
                frame=index,
            )
        expected = xxh3_64_intdigest(raw[:HEADER_DIGESTED_BYTES], seed=self._seq)
        if header_digest != expected:
            raise ChecksumMismatch(
                f"header digest {header_digest:#018x} does not match its header "
                f"({expected:#018x} with seed seq={self._seq})",
                frame=index,
                part="header",
            )
        frame_type = _FRAME_TYPES.get(type_byte)
        if frame_type is None:
            raise BadFrame(f"unknown frame type {type_byte}", frame=index)
        if reserved:
            raise BadFrame(f"reserved field is {reserved:#06x}, not 0", frame=index)
        allowed_flags = FLAG_LZ4 if frame_type == FrameType.DATA else 0
        if flags & ~allowed_flags:
            raise BadFrame(f"flags {flags:#04x} not allowed on {frame_type.name}", frame=index)
        self._check_order(frame_type, index)

        if frame_type in _JSON_TYPES:
            if offset or length:
                raise BadFrame(
                    f"{frame_type.name} has offset {offset} and length {length}; both must be 0",
                    frame=index,
                )
            if payload_len > MAX_JSON_PAYLOAD:
                raise FrameTooLarge(
                    f"{frame_type.name} payload of {payload_len} bytes exceeds "
                    f"{MAX_JSON_PAYLOAD} bytes",
                    frame=index,
                    payload_len=payload_len,
                    limit=MAX_JSON_PAYLOAD,
                )
        else:
            self._check_extent(frame_type, index, offset, length)
            if frame_type == FrameType.ZERO:
                if payload_len or digest:
                    raise BadFrame(
                        f"ZERO has payload_len {payload_len} and digest {digest:#x}; "
                        "both must be 0",
                        frame=index,
                    )
            elif flags & FLAG_LZ4:
                bound = lz4_payload_bound(length)
                if not 0 < payload_len <= bound:
                    raise BadFrame(
                        f"LZ4 DATA payload_len {payload_len} is not between 1 and {bound}, "
                        f"LZ4's compress bound for length {length}",
                        frame=index,
                        payload_len=payload_len,
                        limit=bound,
                    )
            elif payload_len != length:
                raise BadFrame(
                    f"raw DATA payload_len {payload_len} differs from length {length}",
                    frame=index,
                )

        self._header = (frame_type, flags, offset, length, digest)
        if payload_len:
            self._need = payload_len
        else:
            events.append(self._take_payload(b""))

    def _check_order(self, frame_type: FrameType, index: int) -> None:
        if not self._began:
            if frame_type != FrameType.BEGIN:
                raise BadOrder(f"first frame is {frame_type.name}, not BEGIN", frame=index)
        elif frame_type == FrameType.BEGIN:
            raise BadOrder("a second BEGIN", frame=index)
        elif self._tagged and frame_type != FrameType.END:
            what = "a second TAG" if frame_type == FrameType.TAG else frame_type.name
            raise BadOrder(f"{what} after TAG; only END may follow TAG", frame=index)

    def _check_extent(self, frame_type: FrameType, index: int, offset: int, length: int) -> None:
        name = frame_type.name
        sector = self._sector_bytes
        if length == 0:
            raise BadFrame(f"{name} of length 0", frame=index)
        if offset % sector or length % sector:
            raise BadFrame(
                f"{name} extent offset {offset} length {length} is not aligned to "
                f"{sector}-byte sectors",
                frame=index,
                offset=offset,
                length=length,
                sector_bytes=sector,
            )
        if offset + length > self._disk_bytes:
            raise OutOfRange(
                f"{name} extent [{offset}, {offset + length}) runs past the end of the disk "
                f"({self._disk_bytes} bytes)",
                frame=index,
                offset=offset,
                length=length,
                disk_bytes=self._disk_bytes,
            )
        if frame_type == FrameType.DATA and length > self._max_frame_bytes:
            raise FrameTooLarge(
                f"DATA of {length} bytes exceeds the frame limit of {self._max_frame_bytes}",
                frame=index,
                length=length,
                limit=self._max_frame_bytes,
            )
        if self._batch_bytes + length > self._max_batch_bytes:
            raise BatchTooLarge(
                f"batch reaches {self._batch_bytes + length} bytes, over the limit of "
                f"{self._max_batch_bytes}",
                frame=index,
                limit=self._max_batch_bytes,
            )

    def _take_payload(self, payload: bytes | memoryview) -> Event:
        assert self._header is not None
        frame_type, flags, offset, length, digest = self._header
        index = self._frames
        event: Event
        if frame_type == FrameType.DATA:
            event = Data(offset, self._verified_data(payload, flags, length, digest, index), index)
            self._batch_bytes += length
        elif frame_type == FrameType.ZERO:
            event = Zero(offset, length, index)
            self._batch_bytes += length
        else:
            actual = xxh3_64_intdigest(payload)
            if actual != digest:
                raise ChecksumMismatch(
                    f"{frame_type.name} payload digest {actual:#018x} differs from the "
                    f"header's {digest:#018x}",
                    frame=index,
                    part="payload",
                )
            obj = self._json_object(frame_type, payload, index)
            if frame_type == FrameType.BEGIN:
                event = self._begin(obj, index)
                self._began = True
            elif frame_type == FrameType.TAG:
                event = self._tag(obj, index)
                self._tagged = True
            else:
                event = self._end(obj, index)
                self._finished = True
        self._frames += 1
        self._header = None
        self._need = HEADER_BYTES
        return event

    def _verified_data(
        self, payload: bytes | memoryview, flags: int, length: int, digest: int, index: int
    ) -> bytes:
        data: bytes
        if flags & FLAG_LZ4:
            try:
                data = lz4.block.decompress(payload, uncompressed_size=length)
            except lz4.block.LZ4BlockError as exc:
                raise BadFrame(f"LZ4 block does not decompress: {exc}", frame=index) from None
            if len(data) != length:
                raise BadFrame(
                    f"LZ4 block decompresses to {len(data)} bytes, not length {length}",
                    frame=index,
                )
        else:
            # Copy first, then hash the copy: the bytes handed out are the bytes verified.
            data = payload if type(payload) is bytes else bytes(payload)
        actual = xxh3_64_intdigest(data)
        if actual != digest:
            raise ChecksumMismatch(
                f"DATA digest {actual:#018x} of the {'decompressed' if flags else 'raw'} "
                f"data differs from the header's {digest:#018x}",
                frame=index,
                part="data",
            )
        return data

    def _json_object(
        self, frame_type: FrameType, payload: bytes | memoryview, index: int
    ) -> dict[str, Any]:
        name = frame_type.name
        try:
            obj = json.loads(
                str(payload, "utf-8"),
                object_pairs_hook=_object_without_repeats,
                parse_constant=_refuse_constant,
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadFrame(f"{name} payload is not UTF-8 JSON: {exc}", frame=index) from None
        fields = {
            FrameType.BEGIN: _BEGIN_FIELDS,
            FrameType.TAG: _TAG_FIELDS,
            FrameType.END: _END_FIELDS,
        }[frame_type]
        if not isinstance(obj, dict) or obj.keys() != fields.keys():
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise BadFrame(
                f"{name} payload must be an object with exactly {sorted(fields)}, got {got}",
                frame=index,
            )
        for key, kind in fields.items():
            if type(obj[key]) is not kind:
                raise BadFrame(
                    f"{name} field {key!r} must be {kind.__name__}, got {type(obj[key]).__name__}",
                    frame=index,
                    field=key,
                )
            if kind is str and not obj[key].isascii():
                try:
                    obj[key].encode("utf-8")
                except UnicodeEncodeError:
                    # "\ud800" is valid JSON but no character: it could not be stored as UTF-8.
                    raise BadFrame(
                        f"{name} field {key!r} holds a lone surrogate", frame=index, field=key
                    ) from None
        return obj

    def _begin(self, obj: dict[str, Any], index: int) -> Begin:
        for key, mine in (("disk", self._disk), ("seq", self._seq)):
            if obj[key] != mine:
                raise BadFrame(
                    f"BEGIN {key} {obj[key]!r} differs from the request's {mine!r}",
                    frame=index,
                    field=key,
                    expected=mine,
                    got=obj[key],
                )
        _check_time(obj, "source_time_ns", index)
        flags = obj["flags"]
        for flag in flags:
            if type(flag) is not str or flag not in BEGIN_FLAGS:
                raise BadFrame(
                    f"BEGIN flag {flag!r} is not one of {sorted(BEGIN_FLAGS)}",
                    frame=index,
                    field="flags",
                )
        if len(set(flags)) != len(flags):
            raise BadFrame(f"BEGIN flags {flags} repeat a flag", frame=index, field="flags")
        return Begin(obj["disk"], obj["seq"], obj["source_time_ns"], frozenset(flags))

    def _tag(self, obj: dict[str, Any], index: int) -> Tag:
        if obj["kind"] not in TAG_KINDS:
            raise BadFrame(
                f"TAG kind {obj['kind']!r} is not one of {sorted(TAG_KINDS)}",
                frame=index,
                field="kind",
            )
        _check_time(obj, "time_ns", index)
        return Tag(obj["tag_id"], obj["name"], obj["kind"], obj["group"], obj["time_ns"])

    def _end(self, obj: dict[str, Any], index: int) -> End:
        for key, expected in (("frames", index + 1), ("data_bytes", self._batch_bytes)):
            if obj[key] != expected:
                raise BadFrame(
                    f"END states {key}={obj[key]}, but the batch has {expected}",
                    frame=index,
                    field=key,
                    expected=expected,
                    got=obj[key],
                )
        return End(obj["frames"], obj["data_bytes"])


def _check_time(obj: dict[str, Any], key: str, index: int) -> None:
    if not 0 <= obj[key] < _TIME_LIMIT:
        raise BadFrame(
            f"{key} {obj[key]} is outside [0, 2**63)", frame=index, field=key, got=obj[key]
        )
