"""Every error code of docs/protocol.md, as typed exceptions, and the error body they are sent as.

Each carries the stable `code`, the HTTP `status` the agent answers with, the
index of the frame at fault where there is one (BEGIN is frame 0), and any
further details that belong in the JSON error body (`expected_seq`, ...).

`BadDocument` is the one error the agent never sends: a document of docs/protocol.md (this error
body, or one of `protocol.documents`) that lacks a field or has one of the wrong type.
`JsonFields` is how every document checks its fields, so that they all refuse alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class ProtocolError(Exception):
    """Base of all wire-level errors. Not raised itself."""

    code: ClassVar[str] = "INTERNAL"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, frame: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.frame = frame
        self.details = details

    def body(self) -> ErrorBody:
        """What the agent answers for this error."""
        return ErrorBody(self.code, self.message, self.frame, self.details)

    def to_json(self) -> dict[str, Any]:
        """The response body of docs/protocol.md section 1: `{"error": {...}}`."""
        return self.body().to_json()

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


class BadHttpRequest(ProtocolError):
    """The request is not valid HTTP/1.1 (request line, an over-long header line, chunking):
    the HTTP layer refuses it before any handler, and closes the connection."""

    code = "BAD_HTTP_REQUEST"
    status = 400


class WrongGroup(ProtocolError):
    """A TAG names a consistency group other than the one of the batch's disk: the batch is
    refused and rolled back, so that no point is ever listed under a group it does not cover."""

    code = "WRONG_GROUP"
    status = 400


class ClientCertificateRequired(ProtocolError):
    """A request without a client certificate to an endpoint other than enrollment's: refused
    before any of it is read (docs/protocol.md section 1)."""

    code = "CLIENT_CERTIFICATE_REQUIRED"
    status = 401


class EnrollmentRefused(ProtocolError):
    """An enrollment whose proof does not match (a wrong passphrase), whose passphrase id is
    unknown, or whose challenge nonce is unknown, used or stale; counts towards the lock."""

    code = "ENROLLMENT_REFUSED"
    status = 403


class Forbidden(ProtocolError):
    """The sender's client certificate may not do this: no `[[senders]]` entry, a disk or group
    outside its groups, or an administrative endpoint without the admin role. Answered before
    any of the request's body is read."""

    code = "FORBIDDEN"
    status = 403


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


class BatchTimeout(ProtocolError):
    """The batch's body was not in whole within the agent's batch deadline (`[server]
    batch_timeout`), however steadily it trickled; the batch is rolled back."""

    code = "BATCH_TIMEOUT"
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


class FailedOver(ProtocolError):
    """A batch (or a hashes request) for a disk whose group is failing over or failed over:
    nothing is read or written until the group is reprotected."""

    code = "FAILED_OVER"
    status = 409


class FailoverRefused(ProtocolError):
    """A failover or reprotect that cannot be done now: another failover of the group is under
    way or done to another point, the point does not cover every disk of the group, a disk
    cannot be rolled back; nothing was changed."""

    code = "FAILOVER_REFUSED"
    status = 409


class NoRecoveryPoint(ProtocolError):
    """A failover to a point the group does not have (no app-consistent one, no point common
    to all its disks, an id not listed); nothing was changed."""

    code = "NO_RECOVERY_POINT"
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


class EnrollmentUsed(ProtocolError):
    """The passphrase proved is right, but it enrolled a sender already: each works once."""

    code = "ENROLLMENT_USED"
    status = 409


class EnrollmentDisabled(ProtocolError):
    """This agent enrolls no one: no `[tls] enrollment_ca_key`, a CA key it cannot use, or no
    `[[senders]]` table to bind the groups to."""

    code = "ENROLLMENT_DISABLED"
    status = 409


class SenderExists(ProtocolError):
    """An enrollment under a name that a `[[senders]]` entry or an earlier enrollment has; the
    passphrase is not used up (`name`)."""

    code = "SENDER_EXISTS"
    status = 409


class EnrollmentExpired(ProtocolError):
    """The passphrase proved is right, but its time to live has run out."""

    code = "ENROLLMENT_EXPIRED"
    status = 410


class EnrollmentLocked(ProtocolError):
    """Too many failed enrollment proofs lately: the enrollment endpoints refuse everyone for a
    while (`retry_after_seconds`)."""

    code = "ENROLLMENT_LOCKED"
    status = 429


class TooManyConnections(ProtocolError):
    """A listener's cap on open connections is reached and every connection under it is busy
    (`limit`: `total` or `per_peer`); answered before any request, then the connection is
    closed."""

    code = "TOO_MANY_CONNECTIONS"
    status = 503


class RetentionFull(ProtocolError):
    code = "RETENTION_FULL"
    status = 507


class InternalError(ProtocolError):
    """An unexpected failure inside the agent (its log has the traceback): not the sender's
    fault; send again later."""

    code = "INTERNAL"
    status = 500


ERRORS_BY_CODE: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadMagic,
        UnsupportedVersion,
        BadFrame,
        BadOrder,
        Truncated,
        BadRequest,
        BadHttpRequest,
        WrongGroup,
        ClientCertificateRequired,
        EnrollmentRefused,
        Forbidden,
        UnknownDisk,
        UnknownGroup,
        Stalled,
        BatchTimeout,
        SequenceGap,
        SequenceConflict,
        ResyncRequired,
        FailedOver,
        FailoverRefused,
        NoRecoveryPoint,
        EnrollmentUsed,
        EnrollmentDisabled,
        SenderExists,
        EnrollmentExpired,
        EnrollmentLocked,
        FrameTooLarge,
        BatchTooLarge,
        OutOfRange,
        ChecksumMismatch,
        TargetUnavailable,
        TooManyConnections,
        RetentionFull,
        InternalError,
    )
}


class BadDocument(ProtocolError):
    """A document of section 1 or 2 that lacks a required field or has one of the wrong type:
    the other side speaks another version of the protocol, or is not an mtagent. The agent never
    sends it: the client raises it for a success answer (hence status 200) whose document breaks
    the rules, and asking again does not help. `document` names the document, `field` the field
    at fault, dotted inside nested objects ("" for the document as a whole)."""

    code: ClassVar[str] = "BAD_DOCUMENT"
    status: ClassVar[int] = 200

    def __init__(self, document: str, field_name: str, problem: str) -> None:
        where = f"{document}.{field_name}" if field_name else document
        super().__init__(f"{where} {problem}")
        self.document = document
        self.field = field_name


class JsonFields:
    """The fields of one JSON object (what `json.loads` gave), each taken with its type checked.

    `document` names the document for the errors, `within` where this object stands inside it
    ("" for the document itself, "disks" for its field `disks`). Every getter raises BadDocument
    for a field that is missing (and has no default) or holds a value of another JSON type; a
    JSON `true` is not an integer, though Python's bool is.
    """

    def __init__(self, document: str, obj: object, *, within: str = "") -> None:
        if not isinstance(obj, Mapping):
            raise BadDocument(document, within, f"is {_json_type(obj)}, not a JSON object")
        self.document = document
        self._within = within
        self._obj: Mapping[str, object] = obj

    def has(self, name: str) -> bool:
        """Whether the object holds `name` at all."""
        return name in self._obj

    def names(self) -> list[str]:
        """The names of all the fields, in the order they came."""
        return list(self._obj)

    def raw(self, name: str) -> object:
        """The value of a field that is present, unchecked."""
        return self._obj[name]

    def text(self, name: str, default: str | None = None) -> str:
        """A string field; `default` when it is absent (required when None)."""
        return self._typed(name, str, "a string", default)

    def integer(self, name: str, default: int | None = None) -> int:
        """An integer field; `default` when it is absent (required when None)."""
        value = self._typed(name, int, "an integer", default)
        if isinstance(value, bool):
            raise self._wrong(name, "an integer", value)
        return value

    def boolean(self, name: str, default: bool | None = None) -> bool:
        """A true/false field; `default` when it is absent (required when None)."""
        return self._typed(name, bool, "true or false", default)

    def choice(self, name: str, kind: type[E]) -> E:
        """A required string field that must be a value of the enum `kind`."""
        value = self.text(name)
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise BadDocument(
                self.document, self._path(name), f"is {value!r}, not one of {allowed}"
            ) from None

    def array(self, name: str) -> list[object]:
        """A required array field, its items unchecked."""
        return self._typed(name, list, "an array", None)

    def fields(self, name: str) -> JsonFields:
        """A required object field, to take its own fields from."""
        return JsonFields(self.document, self._value(name), within=self._path(name))

    def counts(self, name: str) -> dict[str, int]:
        """A required object field whose values are all integers."""
        value = self.fields(name)
        return {key: value.integer(key) for key in value.names()}

    def _value(self, name: str) -> object:
        if name not in self._obj:
            raise BadDocument(self.document, self._path(name), "is missing")
        return self._obj[name]

    def _typed(self, name: str, kind: type[T], what: str, default: T | None) -> T:
        if default is not None and name not in self._obj:
            return default
        value = self._value(name)
        if not isinstance(value, kind):
            raise self._wrong(name, what, value)
        return value

    def _path(self, name: str) -> str:
        return f"{self._within}.{name}" if self._within else name

    def _wrong(self, name: str, what: str, value: object) -> BadDocument:
        return BadDocument(self.document, self._path(name), f"is {_json_type(value)}, not {what}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """An error answer (section 1): `{"error": {"code", "message", "frame"?, ...details}}`.

    `frame`: the index of the frame at fault (BEGIN is 0), None when the error is not about a
    frame. `details`: every other field (`expected_seq`, `disk`, ...), kept as they came.
    """

    code: str
    message: str
    frame: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object) -> ErrorBody:
        """The ErrorBody of `obj`. Raises BadDocument."""
        error = JsonFields("ErrorBody", obj).fields("error")
        return cls(
            code=error.text("code"),
            message=error.text("message"),
            frame=error.integer("frame") if error.has("frame") else None,
            details={
                name: error.raw(name)
                for name in error.names()
                if name not in ("code", "message", "frame")
            },
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the error answer."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.frame is not None:
            body["frame"] = self.frame
        body.update(self.details)
        return {"error": body}
