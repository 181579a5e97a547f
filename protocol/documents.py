"""The JSON documents of docs/protocol.md section 2 (Info, Disk, Point, and the answer to a batch)
as typed records; the error body of section 1 is `protocol.errors.ErrorBody`.

`from_json` takes what `json.loads` gave and returns the record, or raises BadDocument for a
document that lacks a required field or holds a value of the wrong type. Fields it does not know
are ignored: the protocol grows by adding fields, and an older reader must keep working with a
newer agent. `to_json` gives the dict that is sent, key for key and value for value what the
agent has always sent: the order of the keys is part of that, since it is what is on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from protocol.errors import BadDocument, JsonFields


class DiskState(StrEnum):
    """The `state` of a Disk (section 2)."""

    OK = "ok"
    # Takes only batches flagged `resync` (a new pair, or a gap the agent found).
    RESYNC_REQUIRED = "resync_required"
    # A resync has begun and not yet sent its `resync_done` batch.
    RESYNCING = "resyncing"
    # The target device is not present (or cannot be opened).
    MISSING = "missing"
    # Refused: the device is in use on this host, or smaller than it was.
    PROTECTED = "protected"
    # Rolled back by an in-place recovery; replication must resync.
    RECOVERED = "recovered"
    # Failed over through the running agent: rolled back to a point (or on its way there) and
    # then released for the recovered machine; takes no batch until the group is reprotected.
    FAILED_OVER = "failed_over"


class PointKind(StrEnum):
    """The `kind` of a Point or of a TAG frame: how consistent the source declared it."""

    # Quiesced by the application.
    APP = "app"
    # Crash-consistent (across the group, for a group point).
    CRASH = "crash"


@dataclass(frozen=True, slots=True)
class Info:
    """`GET /v1/info`: who the agent is and the limits of a batch it takes."""

    version: str
    protocol: int
    max_frame_bytes: int
    max_batch_bytes: int
    agent: str = "mtagent"

    @classmethod
    def from_json(cls, obj: object) -> Info:
        """The Info of `obj`. Raises BadDocument."""
        fields = JsonFields("Info", obj)
        return cls(
            agent=fields.text("agent"),
            version=fields.text("version"),
            protocol=fields.integer("protocol"),
            max_frame_bytes=fields.integer("max_frame_bytes"),
            max_batch_bytes=fields.integer("max_batch_bytes"),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object the agent answers."""
        return {
            "agent": self.agent,
            "version": self.version,
            "protocol": self.protocol,
            "max_frame_bytes": self.max_frame_bytes,
            "max_batch_bytes": self.max_batch_bytes,
        }


@dataclass(frozen=True, slots=True)
class Disk:
    """`GET /v1/disks/{disk}`, and each of `GET /v1/disks`: one replication target.

    `resync_offset` (added in this version; 0 from an agent without it): where a resync cut off
    resumes, while `resyncing`. `resync_reason` (sent only while there is one; "" otherwise):
    why the agent found the disk needs a resync.
    """

    id: str
    group: str
    size_bytes: int
    sector_bytes: int
    state: DiskState
    last_seq: int
    last_source_time_ns: int
    resync: bool
    resync_offset: int = 0
    resync_reason: str = ""
    # While the disk's group is in a failover (sent only then): its phase and, once chosen, the
    # point's id ("" before).
    failover_phase: str = ""
    failover_point: str = ""

    @classmethod
    def from_json(cls, obj: object) -> Disk:
        """The Disk of `obj`. Raises BadDocument."""
        fields = JsonFields("Disk", obj)
        return cls(
            id=fields.text("id"),
            group=fields.text("group"),
            size_bytes=fields.integer("size_bytes"),
            sector_bytes=fields.integer("sector_bytes"),
            state=fields.choice("state", DiskState),
            last_seq=fields.integer("last_seq"),
            last_source_time_ns=fields.integer("last_source_time_ns"),
            resync=fields.boolean("resync"),
            resync_offset=fields.integer("resync_offset", 0),
            resync_reason=fields.text("resync_reason", ""),
            failover_phase=fields.text("failover_phase", ""),
            failover_point=fields.text("failover_point", ""),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object the agent answers (`resync_reason` only when there is one)."""
        described: dict[str, Any] = {
            "id": self.id,
            "group": self.group,
            "size_bytes": self.size_bytes,
            "sector_bytes": self.sector_bytes,
            "state": self.state.value,
            "last_seq": self.last_seq,
            "last_source_time_ns": self.last_source_time_ns,
            "resync": self.resync,
            "resync_offset": self.resync_offset,
        }
        if self.resync_reason:
            described["resync_reason"] = self.resync_reason
        if self.failover_phase:
            described["failover_phase"] = self.failover_phase
            described["failover_point"] = self.failover_point
        return described


@dataclass(frozen=True, slots=True)
class BatchResult:
    """`PUT /v1/disks/{disk}/batches/{seq}`, answered 200: the batch is durable on the target.

    `frames` and `data_bytes` are those of its END; `replayed` (added in this version; false from
    an agent without it) means the batch was the one already acknowledged as `last_seq`, sent
    again with the same content, and was not written again (both counts are then 0).
    """

    disk: str
    seq: int
    last_seq: int
    state: DiskState
    frames: int
    data_bytes: int
    replayed: bool = False

    @classmethod
    def from_json(cls, obj: object) -> BatchResult:
        """The BatchResult of `obj`. Raises BadDocument."""
        fields = JsonFields("BatchResult", obj)
        return cls(
            disk=fields.text("disk"),
            seq=fields.integer("seq"),
            last_seq=fields.integer("last_seq"),
            state=fields.choice("state", DiskState),
            frames=fields.integer("frames"),
            data_bytes=fields.integer("data_bytes"),
            replayed=fields.boolean("replayed", False),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object the agent answers."""
        return {
            "disk": self.disk,
            "seq": self.seq,
            "last_seq": self.last_seq,
            "state": self.state.value,
            "frames": self.frames,
            "data_bytes": self.data_bytes,
            "replayed": self.replayed,
        }


def disks_from_json(obj: object) -> list[Disk]:
    """The Disks of a `GET /v1/disks` answer (`{"disks": [Disk, ...]}`). Raises BadDocument."""
    listed = JsonFields("Disks", obj).array("disks")
    return [Disk.from_json(disk) for disk in listed]


@dataclass(frozen=True, slots=True)
class Point:
    """A recovery point (section 6): restoring it puts each disk of `disks` back as it was at
    the end of its batch there (`{disk: seq}`)."""

    id: str
    kind: PointKind
    name: str
    time_ns: int
    disks: Mapping[str, int]

    @classmethod
    def from_json(cls, obj: object) -> Point:
        """The Point of `obj`. Raises BadDocument."""
        fields = JsonFields("Point", obj)
        return cls(
            id=fields.text("id"),
            kind=fields.choice("kind", PointKind),
            name=fields.text("name"),
            time_ns=fields.integer("time_ns"),
            disks=fields.counts("disks"),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the points listing."""
        return {
            "id": self.id,
            "kind": PointKind(self.kind).value,
            "name": self.name,
            "time_ns": self.time_ns,
            "disks": dict(self.disks),
        }


def points_from_json(obj: object) -> list[Point]:
    """The Points of a recovery-points answer (`{"points": [Point, ...]}`). Raises
    BadDocument."""
    listed = JsonFields("Points", obj).array("points")
    return [Point.from_json(point) for point in listed]


@dataclass(frozen=True, slots=True)
class Failover:
    """`POST /v1/groups/{group}/failover` and `.../reprotect`: the failover of a group as the
    agent records it (section 2). `requested`: the point as it was asked for (`latest`, an id,
    ...); `point`: the point chosen, None while the phase is `requested`; `point_age_seconds`:
    how old the point was when it was chosen (its time to then), None before."""

    group: str
    requested: str
    phase: str
    point: Point | None
    point_age_seconds: float | None
    requested_ns: int
    updated_ns: int

    @classmethod
    def from_json(cls, obj: object) -> Failover:
        """The Failover of `obj`. Raises BadDocument."""
        fields = JsonFields("Failover", obj)
        point = fields.raw("point") if fields.has("point") else None
        age = fields.raw("point_age_seconds") if fields.has("point_age_seconds") else None
        return cls(
            group=fields.text("group"),
            requested=fields.text("requested"),
            phase=fields.text("phase"),
            point=None if point is None else Point.from_json(point),
            point_age_seconds=_seconds("Failover", "point_age_seconds", age),
            requested_ns=fields.integer("requested_ns"),
            updated_ns=fields.integer("updated_ns"),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object the agent answers."""
        return {
            "group": self.group,
            "requested": self.requested,
            "phase": self.phase,
            "point": None if self.point is None else self.point.to_json(),
            "point_age_seconds": self.point_age_seconds,
            "requested_ns": self.requested_ns,
            "updated_ns": self.updated_ns,
        }


def _seconds(document: str, name: str, value: object) -> float | None:
    """A number of seconds or null. Raises BadDocument."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None if value is None else float(value)
    raise BadDocument(document, name, f"expected a number or null, got {type(value).__name__}")
