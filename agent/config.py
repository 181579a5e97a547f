"""The agent's configuration: one TOML file, read once, checked whole (README "Configuration
reference").

Every mistake is a `ConfigError` whose one-line message names the file, the key and what was
expected, so an operator can fix the file without reading this code. Unknown sections and keys
are errors too: a typo (`windw = "1h"`) must not silently leave a default in place.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from agent.certs import check_client_name
from agent.errors import AgentError
from agent.units import (
    DURATION_EXAMPLE,
    SIZE_EXAMPLE,
    GiB,
    InvalidValue,
    KiB,
    MiB,
    describe_value,
    parse_duration,
    parse_size,
)
from blockio.disks.discovery import BlockDisk, locate, resolve_scsi_id
from blockio.disks.identity import EXPECTED_SPELLING, canonical_scsi_uuid
from blockio.journal.segments import DEFAULT_SEGMENT_BYTES
from protocol.wire import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_FRAME_BYTES

DEFAULT_CONFIG_PATH = Path("/etc/mtagent/agent.toml")

# The frame header's length field is 32 bits, and a frame is held whole in memory while it is
# verified: 64 MiB keeps one frame of each connection affordable.
MAX_FRAME_BYTES_LIMIT = 64 * MiB

DEFAULT_LISTEN = ("0.0.0.0", 9443)
DEFAULT_METRICS_LISTEN = ("127.0.0.1", 9444)
DEFAULT_STATE_DIR = Path("/var/lib/mtagent")
DEFAULT_STALL_TIMEOUT_SECONDS = 60.0
# Long enough for a 256 MiB batch at 300 KB/s; a batch that trickles longer holds its disk.
DEFAULT_BATCH_TIMEOUT_SECONDS = 15 * 60.0
# How long a connection may wait for (the rest of) a request's headers, on each listener. The
# data port's must stay above the sender's own idle limit (protocol.client: 15 s), so that the
# agent never closes a connection the client is about to use.
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0
DEFAULT_METRICS_IDLE_TIMEOUT_SECONDS = 10.0
# Open connections: a few per disk's sender is plenty; the rest would be an abuse.
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_CONNECTIONS_PER_PEER = 64
DEFAULT_METRICS_MAX_CONNECTIONS = 32
# TLS handshakes in progress on the data port: one takes a sender milliseconds (a WAN's round
# trips at most), so a minute's wait (asyncio's) and an unbounded number only serve a flood of
# connections that never finish theirs. Half the connection caps: a burst of a peer's reconnects
# fits.
DEFAULT_HANDSHAKE_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_HANDSHAKES = 128
DEFAULT_MAX_HANDSHAKES_PER_PEER = 32
DEFAULT_HASH_READ_BYTES = 256 * MiB
"""Memory for reading targets for hash requests (resync, verify): two large direct-read
windows (blockio.scan.chunk_digests.SCAN_WINDOW_BYTES) at once; more requests read in small
windows through the page cache."""
WRITE_GROUP_BYTES = 8 * MiB
"""A batch's writes go to the target in groups of about this much, each behind its undo
records (docs/design.md, the batch path): larger means fewer journal fdatasyncs, smaller less
memory per disk."""
DEFAULT_MEMORY_BUDGET = 256 * MiB
"""What all batches in flight may hold together (agent.replication.memory_budget)."""


def batch_slot_bytes(max_frame_bytes: int) -> int:
    """The memory budget's unit: a write group that ends with a whole frame, and as much again
    for the old bytes its undo records copy."""
    return 2 * (WRITE_GROUP_BYTES + max_frame_bytes)


DEFAULT_RETENTION_WINDOW_SECONDS = 24 * 3600.0
DEFAULT_RETENTION_MAX_BYTES = 500 * GiB
DEFAULT_RETENTION_HIGH_WATER = 0.9
# Pruning deletes whole segments: smaller ones prune closer to the window, larger ones mean fewer
# files. A batch never spans segments, so a segment can end up one batch larger than this.
MIN_SEGMENT_BYTES = 64 * KiB
MAX_SEGMENT_BYTES = 4 * GiB

OnFull = Literal["shrink", "pause"]
ON_FULL_POLICIES: tuple[OnFull, ...] = ("shrink", "pause")

# What a sender may do (docs/protocol.md section 1, "Authorization"): replicate to the disks of its
# groups, or, as "admin", also call every administrative endpoint for those groups.
SenderRole = Literal["replicate", "admin"]
SENDER_ROLES: tuple[SenderRole, ...] = ("replicate", "admin")
# In a sender's `groups`: every consistency group, present and future.
ALL_GROUPS = "*"

# Disk ids and groups become file names and URL path segments: no slashes, no leading dot.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ConfigError(AgentError):
    """The configuration file is missing, is not TOML, or holds a value the agent cannot use.

    `file` is the configuration file, `key` the dotted key at fault (`retention.window`,
    `disks[2].id`; None when the file as a whole is at fault), `expected` what would have been
    accepted, `got` what was found (already formatted), `line` the TOML line when known.
    """

    def __init__(
        self,
        file: Path,
        key: str | None,
        expected: str,
        got: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        self.got = got
        self.line = line
        where = f"{file}: {key}: " if key else f"{file}: "
        message = f"{where}expected {expected}"
        if got is not None:
            message += f", got {got}"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listeners, the state directory and the per-connection limits of the daemon."""

    listen_host: str
    listen_port: int
    metrics_host: str
    metrics_port: int
    state_dir: Path
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    stall_timeout_seconds: float = DEFAULT_STALL_TIMEOUT_SECONDS
    hash_read_bytes: int = DEFAULT_HASH_READ_BYTES
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    batch_timeout_seconds: float = DEFAULT_BATCH_TIMEOUT_SECONDS
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    metrics_idle_timeout_seconds: float = DEFAULT_METRICS_IDLE_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER
    metrics_max_connections: int = DEFAULT_METRICS_MAX_CONNECTIONS
    handshake_timeout_seconds: float = DEFAULT_HANDSHAKE_TIMEOUT_SECONDS
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    max_handshakes_per_peer: int = DEFAULT_MAX_HANDSHAKES_PER_PEER


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The server's certificate and key, the CA that client certificates must chain to, the
    CA's revocation list (None: none is checked), and the key of that CA with which the agent
    signs the certificates of senders enrolled by passphrase (None: it enrolls no one)."""

    cert: Path
    key: Path
    client_ca: Path
    crl: Path | None = None
    enrollment_ca_key: Path | None = None


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Where undo data lives and how much of it is kept."""

    path: Path
    window_seconds: float = DEFAULT_RETENTION_WINDOW_SECONDS
    max_bytes: int = DEFAULT_RETENTION_MAX_BYTES
    on_full: OnFull = "shrink"
    # The fraction of the retention file system above which it counts as full.
    high_water: float = DEFAULT_RETENTION_HIGH_WATER
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    # Refuse to start unless `path` is on a mounted file system other than `/`.
    require_mount: bool = False


@dataclass(frozen=True, slots=True)
class DiskConfig:
    """One replication target: exactly one of `path` and `scsi_uuid` is set.

    `scsi_uuid` is canonical (lowercase NAA hex, `blockio.disks.identity.canonical_scsi_uuid`),
    whatever spelling the file used. `source_size_bytes`: the source disk's size when the
    operator states it; a smaller target is `protected`. `direct_io`: write with O_DIRECT.
    """

    id: str
    group: str
    path: Path | None
    scsi_uuid: str | None
    source_size_bytes: int | None = None
    direct_io: bool = False


def target_location(
    disk: DiskConfig, disks_on_host: Sequence[BlockDisk] | None = None
) -> tuple[Path, Path | None]:
    """Where `disk`'s target is now: (its file or device node, its sysfs directory when known).

    A `path` is taken as written (None for the sysfs directory). A `scsi_uuid` is looked up
    afresh, among `disks_on_host` when given, else among the disks udev enumerates now: a
    re-attached disk may come back under another node. Raises TargetUnavailable (blockio's:
    DiskNotFound, AmbiguousDisk) when no single disk carries it or udev cannot be read.
    """
    if disk.path is not None:
        return disk.path, None
    assert disk.scsi_uuid is not None
    if disks_on_host is None:
        found = resolve_scsi_id(disk.scsi_uuid)
    else:
        found = locate(disk.scsi_uuid, disks_on_host)
    return found.node, found.sys_path


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """One `[[senders]]` entry: the client certificate named `name` (its CN, as `mtagent certs
    issue --name` gave it; compared without regard to case) may reach the disks of `groups`
    (ALL_GROUPS among them: every group) with `role`."""

    name: str
    groups: frozenset[str]
    role: SenderRole = "replicate"

    def reaches(self, group: str) -> bool:
        """Whether this sender may act on consistency group `group`."""
        return ALL_GROUPS in self.groups or group in self.groups


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole configuration, as loaded from `file` (an absolute path).

    `senders`: the `[[senders]]` table, None when the file has none (every client certificate
    of the CA may then do everything: see agent.server.authorization).
    """

    file: Path
    server: ServerConfig
    tls: TlsConfig
    retention: RetentionConfig
    disks: tuple[DiskConfig, ...]
    senders: tuple[SenderConfig, ...] | None = None

    def disk(self, disk_id: str) -> DiskConfig | None:
        """The disk with this id, or None if no disk has it."""
        for disk in self.disks:
            if disk.id == disk_id:
                return disk
        return None


def load_config(path: Path | str) -> AgentConfig:
    """Read and check the configuration file at `path`.

    Relative paths inside the file resolve against the file's directory (as named, symlinks
    not followed), so a configuration and its certificates can move together.
    Raises ConfigError when the file cannot be read, is not valid TOML (the line is in the
    message and in `.line`), or holds an unknown, missing or unusable key.
    """
    named = Path(path)
    try:
        raw = named.read_bytes()
    except OSError as exc:
        raise ConfigError(named, None, "a readable configuration file", exc.strerror) from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(named, None, "UTF-8 text", f"a byte that is not ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        line_match = re.search(r"at line (\d+)", str(exc))
        line = int(line_match.group(1)) if line_match else None
        raise ConfigError(named, None, "valid TOML", str(exc), line=line) from exc
    return _ConfigReader(named).read(document)


class _ConfigReader:
    """Walks one parsed document; knows the file name for error messages."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.base_dir = file.absolute().parent

    def error(self, key: str | None, expected: str, got: str | None = None) -> ConfigError:
        return ConfigError(self.file, key, expected, got)

    def read(self, document: dict[str, Any]) -> AgentConfig:
        self.check_keys(None, document, ("server", "tls", "retention", "disks", "senders"))
        return AgentConfig(
            file=self.file.absolute(),
            server=self.read_server(self.table(document, "server", required=False)),
            tls=self.read_tls(self.table(document, "tls", required=True)),
            retention=self.read_retention(self.table(document, "retention", required=True)),
            disks=self.read_disks(document.get("disks", [])),
            senders=self.read_senders(document["senders"]) if "senders" in document else None,
        )

    def read_server(self, table: dict[str, Any]) -> ServerConfig:
        self.check_keys(
            "server",
            table,
            (
                "listen",
                "metrics_listen",
                "state_dir",
                "max_frame_bytes",
                "max_batch_bytes",
                "stall_timeout",
                "hash_read_bytes",
                "memory_budget",
                "batch_timeout",
                "idle_timeout",
                "metrics_idle_timeout",
                "max_connections",
                "max_connections_per_peer",
                "metrics_max_connections",
                "handshake_timeout",
                "max_handshakes",
                "max_handshakes_per_peer",
            ),
        )
        listen_host, listen_port = self.address(table, "server", "listen", DEFAULT_LISTEN)
        metrics_host, metrics_port = self.address(
            table, "server", "metrics_listen", DEFAULT_METRICS_LISTEN
        )
        max_frame_bytes = self.size(table, "server", "max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
        if not 0 < max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
            raise self.error(
                "server.max_frame_bytes",
                "a size above 0 and at most 64MiB",
                describe_value(table["max_frame_bytes"]),
            )
        max_batch_bytes = self.size(table, "server", "max_batch_bytes", DEFAULT_MAX_BATCH_BYTES)
        if max_batch_bytes < max_frame_bytes:
            # A batch must be able to carry at least one full frame.
            raise self.error(
                "server.max_batch_bytes",
                f"a size of at least server.max_frame_bytes ({max_frame_bytes} bytes)",
                describe_value(table.get("max_batch_bytes", max_batch_bytes)),
            )
        memory_budget = self.size(table, "server", "memory_budget", DEFAULT_MEMORY_BUDGET)
        if memory_budget < batch_slot_bytes(max_frame_bytes):
            # One batch at a time must fit, or nothing could ever be written.
            raise self.error(
                "server.memory_budget",
                f"a size of at least {batch_slot_bytes(max_frame_bytes)} bytes "
                "(2 x (8MiB + server.max_frame_bytes): one write group in flight)",
                describe_value(table["memory_budget"]),
            )
        state_dir = self.path(table, "server", "state_dir", default=DEFAULT_STATE_DIR)
        if state_dir.exists() and not state_dir.is_dir():
            raise self.error(
                "server.state_dir", "a directory (or a path where one can be made)", "a file"
            )
        return ServerConfig(
            listen_host=listen_host,
            listen_port=listen_port,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
            state_dir=state_dir,
            max_frame_bytes=max_frame_bytes,
            max_batch_bytes=max_batch_bytes,
            stall_timeout_seconds=self.duration(
                table, "server", "stall_timeout", DEFAULT_STALL_TIMEOUT_SECONDS
            ),
            hash_read_bytes=self.size(table, "server", "hash_read_bytes", DEFAULT_HASH_READ_BYTES),
            memory_budget=memory_budget,
            batch_timeout_seconds=self.duration(
                table, "server", "batch_timeout", DEFAULT_BATCH_TIMEOUT_SECONDS
            ),
            idle_timeout_seconds=self.duration(
                table, "server", "idle_timeout", DEFAULT_IDLE_TIMEOUT_SECONDS
            ),
            metrics_idle_timeout_seconds=self.duration(
                table, "server", "metrics_idle_timeout", DEFAULT_METRICS_IDLE_TIMEOUT_SECONDS
            ),
            max_connections=self.count(table, "server", "max_connections", DEFAULT_MAX_CONNECTIONS),
            max_connections_per_peer=self.count(
                table, "server", "max_connections_per_peer", DEFAULT_MAX_CONNECTIONS_PER_PEER
            ),
            metrics_max_connections=self.count(
                table, "server", "metrics_max_connections", DEFAULT_METRICS_MAX_CONNECTIONS
            ),
            handshake_timeout_seconds=self.duration(
                table, "server", "handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT_SECONDS
            ),
            max_handshakes=self.count(table, "server", "max_handshakes", DEFAULT_MAX_HANDSHAKES),
            max_handshakes_per_peer=self.count(
                table, "server", "max_handshakes_per_peer", DEFAULT_MAX_HANDSHAKES_PER_PEER
            ),
        )

    def read_tls(self, table: dict[str, Any]) -> TlsConfig:
        self.check_keys("tls", table, ("cert", "key", "client_ca", "crl", "enrollment_ca_key"))
        return TlsConfig(
            cert=self.path(table, "tls", "cert"),
            key=self.path(table, "tls", "key"),
            client_ca=self.path(table, "tls", "client_ca"),
            crl=self.path(table, "tls", "crl") if "crl" in table else None,
            enrollment_ca_key=(
                self.path(table, "tls", "enrollment_ca_key")
                if "enrollment_ca_key" in table
                else None
            ),
        )

    def read_retention(self, table: dict[str, Any]) -> RetentionConfig:
        self.check_keys(
            "retention",
            table,
            (
                "path",
                "window",
                "max_bytes",
                "on_full",
                "high_water",
                "segment_bytes",
                "require_mount",
            ),
        )
        segment_bytes = self.size(table, "retention", "segment_bytes", DEFAULT_SEGMENT_BYTES)
        if not MIN_SEGMENT_BYTES <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise self.error(
                "retention.segment_bytes",
                f"{SIZE_EXAMPLE}, from 64KiB to 4GiB",
                describe_value(table["segment_bytes"]),
            )
        high_water = table.get("high_water", DEFAULT_RETENTION_HIGH_WATER)
        if isinstance(high_water, str) and re.fullmatch(r"\d+(\.\d+)?%", high_water):
            high_water = float(high_water[:-1]) / 100
        if (
            isinstance(high_water, bool)
            or not isinstance(high_water, int | float)
            or not 0 < high_water <= 1
        ):
            raise self.error(
                "retention.high_water",
                'a fraction of the file system above 0 and at most 1, like 0.9 or "90%"',
                describe_value(table["high_water"]),
            )
        max_bytes = self.size(table, "retention", "max_bytes", DEFAULT_RETENTION_MAX_BYTES)
        if max_bytes <= 0:
            raise self.error(
                "retention.max_bytes",
                f"{SIZE_EXAMPLE}, above 0",
                describe_value(table["max_bytes"]),
            )
        on_full = table.get("on_full", "shrink")
        if on_full not in ON_FULL_POLICIES:
            raise self.error("retention.on_full", '"shrink" or "pause"', describe_value(on_full))
        return RetentionConfig(
            path=self.path(table, "retention", "path"),
            window_seconds=self.duration(
                table, "retention", "window", DEFAULT_RETENTION_WINDOW_SECONDS
            ),
            max_bytes=max_bytes,
            on_full=cast(OnFull, on_full),
            high_water=float(high_water),
            segment_bytes=segment_bytes,
            require_mount=self.boolean(table, "retention", "require_mount", default=False),
        )

    def read_disks(self, entries: object) -> tuple[DiskConfig, ...]:
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.error("disks", "an array of tables ([[disks]])", describe_value(entries))
        disks: list[DiskConfig] = []
        first_index_of: dict[str, int] = {}
        first_index_of_target: dict[tuple[str, str], int] = {}
        for index, table in enumerate(entries):
            section = f"disks[{index}]"
            self.check_keys(
                section,
                table,
                ("id", "group", "path", "scsi_uuid", "direct_io", "source_size"),
            )
            disk_id = self.identifier(table, section, "id", default=None)
            if disk_id in first_index_of:
                raise self.error(
                    f"{section}.id",
                    f"an id no other disk has (disks[{first_index_of[disk_id]}] has it)",
                    describe_value(disk_id),
                )
            first_index_of[disk_id] = index
            group = self.identifier(table, section, "group", default=disk_id)
            has_path, has_uuid = "path" in table, "scsi_uuid" in table
            if has_path == has_uuid:
                raise self.error(
                    section,
                    'exactly one of "path" and "scsi_uuid"',
                    "both" if has_path else "neither",
                )
            disk = DiskConfig(
                id=disk_id,
                group=group,
                path=self.path(table, section, "path") if has_path else None,
                scsi_uuid=self.scsi_uuid(table, section) if has_uuid else None,
                source_size_bytes=(
                    self.size(table, section, "source_size", 0) if "source_size" in table else None
                ),
                direct_io=self.boolean(table, section, "direct_io", default=False),
            )
            # Two streams writing one device would corrupt it whatever the journal does.
            # (blockio compares canonical SCSI identities too; this catches the plain copy-paste.)
            target_key, target = (
                ("path", str(disk.path)) if has_path else ("scsi_uuid", str(disk.scsi_uuid))
            )
            if (target_key, target) in first_index_of_target:
                raise self.error(
                    f"{section}.{target_key}",
                    f"a target no other disk has "
                    f"(disks[{first_index_of_target[target_key, target]}] has it)",
                    describe_value(table[target_key]),
                )
            first_index_of_target[target_key, target] = index
            disks.append(disk)
        return tuple(disks)

    def read_senders(self, entries: object) -> tuple[SenderConfig, ...]:
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.error("senders", "an array of tables ([[senders]])", describe_value(entries))
        senders: list[SenderConfig] = []
        first_index_of: dict[str, int] = {}
        for index, table in enumerate(entries):
            section = f"senders[{index}]"
            self.check_keys(section, table, ("name", "groups", "role"))
            name = self.string(table, section, "name")
            try:
                check_client_name(name)
            except ValueError as exc:
                raise self.error(f"{section}.name", str(exc).removeprefix("expected ")) from None
            if name.lower() in first_index_of:
                raise self.error(
                    f"{section}.name",
                    f"a name no other sender has (senders[{first_index_of[name.lower()]}] has "
                    "it; names are compared without regard to case)",
                    describe_value(name),
                )
            first_index_of[name.lower()] = index
            role = table.get("role", "replicate")
            if role not in SENDER_ROLES:
                raise self.error(f"{section}.role", '"replicate" or "admin"', describe_value(role))
            senders.append(
                SenderConfig(
                    name=name, groups=self.groups(table, section), role=cast(SenderRole, role)
                )
            )
        return tuple(senders)

    def groups(self, table: Mapping[str, Any], section: str) -> frozenset[str]:
        expected = (
            f'an array of consistency groups (like ["vm1", "vm2"]; "{ALL_GROUPS}" for every group)'
        )
        if "groups" not in table:
            raise self.error(f"{section}.groups", expected, "nothing (it is required)")
        value = table["groups"]
        if not isinstance(value, list):
            raise self.error(f"{section}.groups", expected, describe_value(value))
        for item in value:
            if item != ALL_GROUPS and (
                not isinstance(item, str) or ID_PATTERN.fullmatch(item) is None
            ):
                raise self.error(f"{section}.groups", expected, f"an item {describe_value(item)}")
        return frozenset(value)

    # -- one value each ---------------------------------------------------------------------

    def check_keys(
        self, section: str | None, table: Mapping[str, Any], known: tuple[str, ...]
    ) -> None:
        for key in table:
            if key in known:
                continue
            dotted = f"{section}.{key}" if section else key
            expected = "one of " + ", ".join(known)
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                expected += f' (did you mean "{close[0]}"?)'
            what = "key" if section else "section"
            raise self.error(dotted, expected, f"an unknown {what} {describe_value(key)}")

    def table(self, document: dict[str, Any], name: str, *, required: bool) -> dict[str, Any]:
        if name not in document:
            if required:
                raise self.error(name, f"a [{name}] section", "nothing (it is required)")
            return {}
        value = document[name]
        if not isinstance(value, dict):
            raise self.error(name, f"a [{name}] section", describe_value(value))
        return value

    def string(self, table: Mapping[str, Any], section: str, key: str) -> str:
        value = table.get(key)
        if value is None:
            raise self.error(f"{section}.{key}", "a string", "nothing (it is required)")
        if not isinstance(value, str) or not value:
            raise self.error(f"{section}.{key}", "a non-empty string", describe_value(value))
        return value

    def scsi_uuid(self, table: Mapping[str, Any], section: str) -> str:
        value = self.string(table, section, "scsi_uuid")
        try:
            return canonical_scsi_uuid(value)
        except ValueError:
            raise self.error(
                f"{section}.scsi_uuid", EXPECTED_SPELLING, describe_value(value)
            ) from None

    def boolean(self, table: Mapping[str, Any], section: str, key: str, *, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{section}.{key}", "true or false", describe_value(value))
        return value

    def path(
        self, table: Mapping[str, Any], section: str, key: str, default: Path | None = None
    ) -> Path:
        if key not in table and default is not None:
            return default
        value = table.get(key)
        expected = "a path (absolute, or relative to the configuration file)"
        if value is None:
            raise self.error(f"{section}.{key}", expected, "nothing (it is required)")
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.error(f"{section}.{key}", expected, describe_value(value))
        return self.base_dir / value

    def identifier(
        self, table: Mapping[str, Any], section: str, key: str, default: str | None
    ) -> str:
        if key not in table and default is not None:
            return default
        value = table.get(key)
        expected = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        if value is None:
            raise self.error(f"{section}.{key}", expected, "nothing (it is required)")
        if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
            raise self.error(f"{section}.{key}", expected, describe_value(value))
        return value

    def address(
        self, table: Mapping[str, Any], section: str, key: str, default: tuple[str, int]
    ) -> tuple[str, int]:
        if key not in table:
            return default
        value = table[key]
        parsed = parse_address(value) if isinstance(value, str) else None
        if parsed is None:
            raise self.error(
                f"{section}.{key}",
                'an address like "0.0.0.0:9443" or "[::1]:9443" (port 0 to 65535)',
                describe_value(value),
            )
        return parsed

    def size(self, table: Mapping[str, Any], section: str, key: str, default: int) -> int:
        if key not in table:
            return default
        try:
            return parse_size(table[key])
        except InvalidValue as exc:
            raise self.error(f"{section}.{key}", exc.expected, exc.got) from exc

    def count(self, table: Mapping[str, Any], section: str, key: str, default: int) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(
                f"{section}.{key}", "a whole number of at least 1", describe_value(value)
            )
        return value

    def duration(self, table: Mapping[str, Any], section: str, key: str, default: float) -> float:
        if key not in table:
            return default
        value = table[key]
        try:
            seconds = parse_duration(value)
        except InvalidValue as exc:
            raise self.error(f"{section}.{key}", exc.expected, exc.got) from exc
        if seconds <= 0:
            raise self.error(
                f"{section}.{key}", f"{DURATION_EXAMPLE}, above zero", describe_value(value)
            )
        return seconds


def parse_address(text: str) -> tuple[str, int] | None:
    """(host, port) from "host:port" or "[v6]:port"; None when the text is not one.

    Port 0 is accepted: the system picks a free port (tests use it).
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        return None
    port = int(port_text)
    if port > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host, port
    # An IPv6 address without brackets would be ambiguous about where the port starts.
    if ":" in host or any(c.isspace() for c in host) or "[" in host or "]" in host:
        return None
    return host, port
