"""What the agent keeps of enrollment by passphrase: each one-time passphrase as a verifier
(`<state_dir>/enrollments.json`) and the senders enrolled with them
(`<state_dir>/enrolled-senders.json`, and each one's certificate in `<state_dir>/enrolled/`, for
`mtagent certs revoke --cert`).

A verifier is the passphrase's salt and scrypt key (protocol.enrollment), never the passphrase;
with the groups and role it enrolls into, its expiry, and whom it enrolled once used. Both files
are mode 0600 and replaced atomically and durably (blockio.durable); every change is a read,
modify and write under a lock file, so that `mtagent certs passphrase` and the running agent
never lose each other's changes. A passphrase is marked used before its certificate is signed:
a crash in between uses it up rather than letting it work twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from agent.config import SENDER_ROLES, SenderConfig, SenderRole
from agent.errors import AgentError
from blockio.durable import write_atomically
from protocol.enrollment import Passphrase, ScryptParams, passphrase_key
from protocol.errors import EnrollmentExpired, EnrollmentRefused, EnrollmentUsed

log = logging.getLogger(__name__)

ENROLLMENTS_FILE = "enrollments.json"
ENROLLED_SENDERS_FILE = "enrolled-senders.json"
ENROLLED_CERTIFICATES_DIR = "enrolled"
LOCK_FILE = "enrollments.lock"
SALT_BYTES = 16


class EnrollmentStoreError(AgentError):
    """An enrollment file cannot be read, parsed or written; the message names it."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """One passphrase as the agent keeps it. `used_by`: the name it enrolled (None: unused)."""

    enrollment: str
    salt: bytes
    key: bytes
    scrypt: ScryptParams
    groups: frozenset[str]
    role: SenderRole
    expires_ns: int
    used_by: str | None = None
    used_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "enrollment": self.enrollment,
            "salt": self.salt.hex(),
            "key": self.key.hex(),
            "scrypt": self.scrypt.to_json(),
            "groups": sorted(self.groups),
            "role": self.role,
            "expires_ns": self.expires_ns,
            "used_by": self.used_by,
            "used_ns": self.used_ns,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Verifier:
        """Raises KeyError, TypeError or ValueError for an entry that is not one."""
        role = obj["role"]
        if role not in SENDER_ROLES:
            raise ValueError(f"role {role!r}")
        scrypt = obj["scrypt"]
        return cls(
            enrollment=str(obj["enrollment"]),
            salt=bytes.fromhex(obj["salt"]),
            key=bytes.fromhex(obj["key"]),
            scrypt=ScryptParams(int(scrypt["n"]), int(scrypt["r"]), int(scrypt["p"])),
            groups=frozenset(str(g) for g in obj["groups"]),
            role=cast(SenderRole, role),
            expires_ns=int(obj["expires_ns"]),
            used_by=None if obj.get("used_by") is None else str(obj["used_by"]),
            used_ns=None if obj.get("used_ns") is None else int(obj["used_ns"]),
        )


def add_passphrase(
    state_dir: Path, groups: frozenset[str], role: SenderRole, ttl_seconds: float
) -> tuple[Passphrase, Verifier]:
    """A new passphrase for `groups` and `role`, valid `ttl_seconds`; only its verifier is kept.
    Raises EnrollmentStoreError."""
    with _locked(state_dir):
        verifiers = _read_verifiers(state_dir)
        taken = {v.enrollment for v in verifiers}
        passphrase = Passphrase.new()
        while passphrase.enrollment in taken:
            passphrase = Passphrase.new()
        salt, params = secrets.token_bytes(SALT_BYTES), ScryptParams()
        verifier = Verifier(
            enrollment=passphrase.enrollment,
            salt=salt,
            key=passphrase_key(passphrase, salt, params),
            scrypt=params,
            groups=groups,
            role=role,
            expires_ns=time.time_ns() + int(ttl_seconds * 1e9),
        )
        _write(state_dir / ENROLLMENTS_FILE, {"passphrases": [*map(_json, verifiers), verifier]})
    return passphrase, verifier


def find_verifier(state_dir: Path, enrollment: str) -> Verifier | None:
    """The verifier of passphrase id `enrollment`, None when there is none. Raises
    EnrollmentStoreError."""
    with _locked(state_dir):
        return next((v for v in _read_verifiers(state_dir) if v.enrollment == enrollment), None)


def use_passphrase(state_dir: Path, enrollment: str, name: str) -> Verifier:
    """Mark passphrase `enrollment` used by `name`, durably; returns its verifier as it was.
    Raises EnrollmentUsed, EnrollmentExpired, EnrollmentRefused (no such passphrase), or
    EnrollmentStoreError."""
    with _locked(state_dir):
        verifiers = _read_verifiers(state_dir)
        found = next((v for v in verifiers if v.enrollment == enrollment), None)
        if found is None:
            raise EnrollmentRefused("no such passphrase")
        if found.used_by is not None:
            raise EnrollmentUsed(f"this passphrase enrolled {found.used_by!r} already")
        now = time.time_ns()
        if now >= found.expires_ns:
            raise EnrollmentExpired("this passphrase has expired; ask for a new one")
        used = replace(found, used_by=name, used_ns=now)
        _write(
            state_dir / ENROLLMENTS_FILE,
            {"passphrases": [_json(used if v is found else v) for v in verifiers]},
        )
    return found


def read_enrolled_senders(state_dir: Path) -> tuple[SenderConfig, ...]:
    """The senders enrolled by passphrase. A file that cannot be read lets none in (and says
    so): authorization fails closed."""
    path = state_dir / ENROLLED_SENDERS_FILE
    try:
        entries = _read_json(path).get("senders", [])
        return tuple(
            SenderConfig(str(e["name"]), frozenset(map(str, e["groups"])), e["role"])
            for e in entries
        )
    except (EnrollmentStoreError, KeyError, TypeError, AttributeError) as exc:
        log.error("enrolled senders are not let in: %s: %s", path, exc)
        return ()


def add_enrolled_sender(
    state_dir: Path, sender: SenderConfig, enrollment: str, certificate_pem: bytes
) -> None:
    """Write down `sender`, enrolled with passphrase `enrollment`, and its certificate (as
    `enrolled/<name>.crt`). Raises EnrollmentStoreError."""
    path = state_dir / ENROLLED_SENDERS_FILE
    certificate = state_dir / ENROLLED_CERTIFICATES_DIR / f"{sender.name}.crt"
    with _locked(state_dir):
        try:
            certificate.parent.mkdir(mode=0o700, exist_ok=True)
            write_atomically(certificate, certificate_pem, mode=0o644)
        except OSError as exc:
            raise EnrollmentStoreError(f"{certificate}: cannot write: {exc.strerror}") from exc
        entries = list(_read_json(path).get("senders", []))
        entries.append(
            {
                "name": sender.name,
                "groups": sorted(sender.groups),
                "role": sender.role,
                "enrollment": enrollment,
                "enrolled_ns": time.time_ns(),
            }
        )
        _write(path, {"senders": entries})


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise EnrollmentStoreError(f"{state_dir / LOCK_FILE}: cannot open: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_verifiers(state_dir: Path) -> list[Verifier]:
    path = state_dir / ENROLLMENTS_FILE
    try:
        return [Verifier.from_json(e) for e in _read_json(path).get("passphrases", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EnrollmentStoreError(f"{path}: not an enrollments file: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise EnrollmentStoreError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise EnrollmentStoreError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise EnrollmentStoreError(f"{path}: not a JSON object")
    return document


def _json(item: Verifier | dict[str, Any]) -> dict[str, Any]:
    return item.to_json() if isinstance(item, Verifier) else item


def _write(path: Path, document: dict[str, Any]) -> None:
    document = {
        key: [_json(i) for i in value] if isinstance(value, list) else value
        for key, value in document.items()
    }
    try:
        write_atomically(path, json.dumps(document, indent=1).encode() + b"\n", mode=0o600)
    except OSError as exc:
        raise EnrollmentStoreError(f"{path}: cannot write: {exc.strerror}") from exc
