"""Every error code of PROTOCOL.md, as typed exceptions.

Each carries the stable `code`, the HTTP `status` the agent answers with, the
index of the frame at fault where there is one (BEGIN is frame 0), and any
further details that belong in the JSON error body (`expected_seq`, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ProtocolError(Exception):
    """Base of all wire-level errors. Not raised itself."""

    code: ClassVar[str] = "INTERNAL"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, frame: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.frame = frame
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The response body of PROTOCOL.md section 1: `{"error": {...}}`."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.frame is not None:
            body["frame"] = self.frame
        body.update(self.details)
        return {"error": body}

    def __str__(self) -> str:
        where = f" (frame {self.frame})" if self.frame is not None else ""
        return f"{self.code}: {self.message}{where}"


class BadMagic(ProtocolError):
    code = "BAD_MAGIC"
    status = 400


class UnsupportedVersion(ProtocolError):
    code = "UNSUPPORTED_VERSION"
    status = 400


class BadFrame(ProtocolError):
    code = "BAD_FRAME"
    status = 400


class BadOrder(ProtocolError):
    code = "BAD_ORDER"
    status = 400


class Truncated(ProtocolError):
    code = "TRUNCATED"
    status = 400


class BadRequest(ProtocolError):
    """A request (not a batch body) that breaks the rules: bad JSON, bad parameters."""

    code = "BAD_REQUEST"
    status = 400


class UnknownDisk(ProtocolError):
    code = "UNKNOWN_DISK"
    status = 404


class UnknownGroup(ProtocolError):
    """No configured disk is in the consistency group of the URL."""

    code = "UNKNOWN_GROUP"
    status = 404


class Stalled(ProtocolError):
    """The sender sent nothing for longer than the agent's stall timeout."""

    code = "STALLED"
    status = 408


class SequenceGap(ProtocolError):
    code = "SEQUENCE_GAP"
    status = 409


class SequenceConflict(ProtocolError):
    code = "SEQUENCE_CONFLICT"
    status = 409


class ResyncRequired(ProtocolError):
    code = "RESYNC_REQUIRED"
    status = 409


class FrameTooLarge(ProtocolError):
    code = "FRAME_TOO_LARGE"
    status = 413


class BatchTooLarge(ProtocolError):
    code = "BATCH_TOO_LARGE"
    status = 413


class OutOfRange(ProtocolError):
    code = "OUT_OF_RANGE"
    status = 416


class ChecksumMismatch(ProtocolError):
    code = "CHECKSUM_MISMATCH"
    status = 422


class TargetUnavailable(ProtocolError):
    code = "TARGET_UNAVAILABLE"
    status = 503


class RetentionFull(ProtocolError):
    code = "RETENTION_FULL"
    status = 507


ERRORS_BY_CODE: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadMagic,
        UnsupportedVersion,
        BadFrame,
        BadOrder,
        Truncated,
        BadRequest,
        UnknownDisk,
        UnknownGroup,
        Stalled,
        SequenceGap,
        SequenceConflict,
        ResyncRequired,
        FrameTooLarge,
        BatchTooLarge,
        OutOfRange,
        ChecksumMismatch,
        TargetUnavailable,
        RetentionFull,
    )
}
