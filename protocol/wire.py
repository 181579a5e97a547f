"""Constants and the frame header layout of protocol v1 (docs/protocol.md section 3.1)."""

from __future__ import annotations

import struct
from enum import IntEnum

from protocol.documents import PointKind

MAGIC = b"MTF1"
# Same first three bytes, another version digit: a newer (or older) sender.
MAGIC_FAMILY = b"MTF"
PROTOCOL_VERSION = 1

# magic, type, flags, reserved, offset, length, payload_len, digest, header_digest
HEADER = struct.Struct("<4sBBHQIIQQ")
HEADER_BYTES = HEADER.size  # 40
# The header digest covers bytes 0..31 (everything but itself).
HEADER_DIGESTED_BYTES = 32

FLAG_LZ4 = 0x01

MAX_JSON_PAYLOAD = 64 * 1024
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH_BYTES = 256 * 1024 * 1024

BATCH_CONTENT_TYPE = "application/x-mtagent-batch"

BEGIN_FLAG_RESYNC = "resync"
BEGIN_FLAG_RESYNC_DONE = "resync_done"
BEGIN_FLAGS = frozenset({BEGIN_FLAG_RESYNC, BEGIN_FLAG_RESYNC_DONE})

TAG_KINDS = frozenset(kind.value for kind in PointKind)


class FrameType(IntEnum):
    """Frame type byte (offset 4 of the header)."""

    BEGIN = 1
    DATA = 2
    ZERO = 3
    TAG = 4
    END = 5
