"""Events in, frame bytes out: the sending side of a batch (docs/protocol.md 3), sans-I/O."""

from __future__ import annotations

import json
import struct
from typing import Any

import lz4.block
from xxhash import xxh3_64_intdigest

from protocol.events import Begin, Data, End, Event, Tag, Zero
from protocol.wire import (
    FLAG_LZ4,
    HEADER,
    HEADER_DIGESTED_BYTES,
    MAGIC,
    MAX_JSON_PAYLOAD,
    FrameType,
)

_DIGEST = struct.Struct("<Q")


def encode_frame(
    seq: int,
    frame_type: FrameType,
    *,
    payload: bytes | memoryview = b"",
    offset: int = 0,
    length: int = 0,
    flags: int = 0,
    digest: int | None = None,
) -> bytes:
    """One frame, header and payload, exactly as given.

    This is the low-level writer: it checks nothing of section 3's rules, so tests
    can craft malformed frames with it. `header_digest` is always computed, as
    XXH3-64 of header bytes 0..31 with seed `seq`, which binds the frame to its batch.

    `digest=None` computes the type's digest: XXH3-64 of `payload` for BEGIN, TAG,
    END and raw DATA; 0 for ZERO. For an LZ4 DATA frame (`flags & FLAG_LZ4`) the
    digest covers the *uncompressed* data, which this function does not see: the
    caller must pass it.

    Raises ValueError for `digest=None` on an LZ4 DATA frame, and for a field that
    does not fit its header slot (negative, or too wide for its u8/u32/u64).
    """
    if digest is None:
        if frame_type == FrameType.ZERO:
            digest = 0
        elif frame_type == FrameType.DATA and flags & FLAG_LZ4:
            raise ValueError("an LZ4 DATA frame needs the digest of its uncompressed data")
        else:
            digest = xxh3_64_intdigest(payload)
    payload_len = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    try:
        # Packing with a zero header_digest, then cutting it off, keeps HEADER the
        # one description of the layout.
        head = HEADER.pack(MAGIC, frame_type, flags, 0, offset, length, payload_len, digest, 0)[
            :HEADER_DIGESTED_BYTES
        ]
        sealed = _DIGEST.pack(xxh3_64_intdigest(head, seed=seq))
    except (struct.error, OverflowError) as exc:
        raise ValueError(
            f"frame field out of range: seq={seq} type={frame_type!r} flags={flags} "
            f"offset={offset} length={length} payload_len={payload_len} digest={digest}"
        ) from exc
    return b"".join((head, sealed, payload))


def _json_payload(obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > MAX_JSON_PAYLOAD:
        raise ValueError(
            f"JSON payload of {len(payload)} bytes exceeds the protocol's {MAX_JSON_PAYLOAD}"
        )
    return payload


class BatchEncoder:
    """Encodes the events of one batch (sequence number `seq`) into frames.

    It encodes what it is given, in the order given: following section 3 (one
    BEGIN first, END last, TAG only just before END, aligned extents) is the
    caller's part, and the receiver checks it. `frames` and `data_bytes` count
    what has been encoded so far, so `end()` can state them.

    With `compress=True`, a DATA payload goes as an LZ4 block only when that
    block is strictly smaller than the data; otherwise, or with `compress=False`,
    it goes raw.
    """

    def __init__(self, seq: int, *, compress: bool = True) -> None:
        self._seq = seq
        self._compress = compress
        self._frames = 0
        self._data_bytes = 0

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def frames(self) -> int:
        """Frames encoded so far."""
        return self._frames

    @property
    def data_bytes(self) -> int:
        """Sum of the lengths of the DATA and ZERO frames encoded so far."""
        return self._data_bytes

    def encode(self, event: Event) -> bytes:
        """The bytes of one frame for `event`.

        Begin, Tag and End become compact UTF-8 JSON; an End is encoded with the
        counts it carries (see `end()` for the counts of this encoder). Data's
        `index` is ignored: the position of a frame is where it is sent.

        Raises ValueError for a JSON payload over MAX_JSON_PAYLOAD or a field that
        does not fit the header, TypeError for an object that is not an Event.
        """
        if isinstance(event, Data):
            frame, length = self._encode_data(event)
            self._data_bytes += length
        elif isinstance(event, Zero):
            frame = encode_frame(
                self._seq, FrameType.ZERO, offset=event.offset, length=event.length
            )
            self._data_bytes += event.length
        elif isinstance(event, Begin):
            payload = _json_payload(
                {
                    "disk": event.disk,
                    "seq": event.seq,
                    "source_time_ns": event.source_time_ns,
                    "flags": sorted(event.flags),
                }
            )
            frame = encode_frame(self._seq, FrameType.BEGIN, payload=payload)
        elif isinstance(event, Tag):
            payload = _json_payload(
                {
                    "tag_id": event.tag_id,
                    "name": event.name,
                    "kind": event.kind,
                    "group": event.group,
                    "time_ns": event.time_ns,
                }
            )
            frame = encode_frame(self._seq, FrameType.TAG, payload=payload)
        elif isinstance(event, End):
            payload = _json_payload({"frames": event.frames, "data_bytes": event.data_bytes})
            frame = encode_frame(self._seq, FrameType.END, payload=payload)
        else:
            raise TypeError(f"not a batch event: {event!r}")
        self._frames += 1
        return frame

    def end(self) -> bytes:
        """The END frame stating this encoder's counts: frames so far plus END itself."""
        return self.encode(End(frames=self._frames + 1, data_bytes=self._data_bytes))

    def _encode_data(self, event: Data) -> tuple[bytes, int]:
        data = event.data
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")
        length = len(data)
        digest = xxh3_64_intdigest(data)
        if self._compress:
            block = lz4.block.compress(data, store_size=False)
            if len(block) < length:
                frame = encode_frame(
                    self._seq,
                    FrameType.DATA,
                    payload=block,
                    offset=event.offset,
                    length=length,
                    flags=FLAG_LZ4,
                    digest=digest,
                )
                return frame, length
        frame = encode_frame(
            self._seq,
            FrameType.DATA,
            payload=data,
            offset=event.offset,
            length=length,
            digest=digest,
        )
        return frame, length
