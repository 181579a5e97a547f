"""Enrollment by passphrase (docs/protocol.md section 2.1), sans-I/O: the form of a one-time
passphrase, the key a slow KDF makes of it, the proof a process server sends, and the documents
of the two enrollment endpoints.

The passphrase never crosses the wire, nor anything from which it follows without the KDF's
work: the process server asks for a challenge (a fresh single-use nonce and the passphrase's
salt), then sends HMAC-SHA256 keyed by scrypt(passphrase, salt) over the nonce and its CSR. A
captured exchange can be neither replayed (the nonce is used up, and the proof covers the CSR,
whose key the eavesdropper does not hold) nor turned back into the passphrase faster than by
running scrypt on every guess, against 125 random bits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import BadDocument, JsonFields

# RFC 4648 base32: no 0/1/8/9, so nothing a person confuses with O, I, L or B.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
GROUPS = 6
GROUP_CHARS = 5
# Binds a proof to this protocol and its purpose, whatever else one day HMACs with the same key.
PROOF_CONTEXT = b"mtagent enrollment proof v1\0"
KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt's cost: 2**15 rounds of 1 KiB blocks take 32 MiB and about 0.1 s a guess."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def to_json(self) -> dict[str, int]:
        return {"n": self.n, "r": self.r, "p": self.p}

    @classmethod
    def from_json(cls, fields: JsonFields) -> ScryptParams:
        """Raises BadDocument, also for a cost this client will not pay (a hostile agent could
        ask for any amount of memory)."""
        params = cls(fields.integer("n"), fields.integer("r"), fields.integer("p"))
        if not (2 <= params.n <= 2**20 and params.n & (params.n - 1) == 0):
            raise BadDocument(fields.document, "scrypt.n", "is not a power of 2 up to 2**20")
        if not (1 <= params.r <= 32 and 1 <= params.p <= 16):
            raise BadDocument(fields.document, "scrypt", "asks for more work than allowed")
        return params


@dataclass(frozen=True, slots=True)
class Passphrase:
    """A one-time passphrase: GROUPS groups of GROUP_CHARS base32 characters. The first group
    is the enrollment's id, sent in the clear so that the agent knows which verifier to use;
    the other groups (125 bits) are the secret. `text` is the whole, without separators."""

    enrollment: str
    text: str = field(repr=False)

    @classmethod
    def new(cls) -> Passphrase:
        """A fresh passphrase from the operating system's random source."""
        return cls.parse("".join(secrets.choice(ALPHABET) for _ in range(GROUPS * GROUP_CHARS)))

    @classmethod
    def parse(cls, written: str) -> Passphrase:
        """The passphrase `written` (any case, groups separated by '-' or spaces, or not at all).
        Raises ValueError saying what is wrong, never repeating the passphrase."""
        text = "".join(written.upper().replace("-", " ").split())
        if len(text) != GROUPS * GROUP_CHARS or any(c not in ALPHABET for c in text):
            raise ValueError(
                f"a passphrase is {GROUPS} groups of {GROUP_CHARS} letters A-Z and digits 2-7, "
                "as `mtagent certs passphrase` printed it"
            )
        return cls(text[:GROUP_CHARS], text)

    def __str__(self) -> str:
        return "-".join(
            self.text[at : at + GROUP_CHARS] for at in range(0, len(self.text), GROUP_CHARS)
        )


def passphrase_key(passphrase: Passphrase, salt: bytes, params: ScryptParams) -> bytes:
    """scrypt(passphrase, salt): the key proofs are made with, and what the agent stores in
    place of the passphrase."""
    return hashlib.scrypt(
        passphrase.text.encode(),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=2 * 128 * params.r * params.n * params.p + (1 << 20),
        dklen=KEY_BYTES,
    )


def enrollment_proof(key: bytes, nonce: bytes, csr_der: bytes) -> bytes:
    """HMAC-SHA256 under `key` of the challenge's nonce and the CSR (DER)."""
    message = PROOF_CONTEXT + len(nonce).to_bytes(2, "big") + nonce + csr_der
    return hmac.new(key, message, hashlib.sha256).digest()


def proof_matches(key: bytes, nonce: bytes, csr_der: bytes, proof: bytes) -> bool:
    """Whether `proof` is the proof of `key` over `nonce` and `csr_der` (in constant time)."""
    return hmac.compare_digest(enrollment_proof(key, nonce, csr_der), proof)


@dataclass(frozen=True, slots=True)
class EnrollChallenge:
    """`POST /v1/enroll/challenge`'s answer: a single-use nonce, and the passphrase's salt and
    scrypt cost."""

    nonce: bytes
    salt: bytes
    scrypt: ScryptParams

    def to_json(self) -> dict[str, Any]:
        return {"nonce": _b64(self.nonce), "salt": _b64(self.salt), "scrypt": self.scrypt.to_json()}

    @classmethod
    def from_json(cls, obj: object) -> EnrollChallenge:
        """Raises BadDocument."""
        fields = JsonFields("EnrollChallenge", obj)
        return cls(
            nonce=_unb64(fields, "nonce"),
            salt=_unb64(fields, "salt"),
            scrypt=ScryptParams.from_json(fields.fields("scrypt")),
        )


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """`POST /v1/enroll`'s body: the name to enroll under, the passphrase's id, the CSR (PEM)
    and the proof over the challenge's nonce."""

    name: str
    enrollment: str
    nonce: bytes
    csr: str
    proof: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enrollment": self.enrollment,
            "nonce": _b64(self.nonce),
            "csr": self.csr,
            "proof": _b64(self.proof),
        }

    @classmethod
    def from_json(cls, obj: object) -> EnrollRequest:
        """Raises BadDocument."""
        fields = JsonFields("EnrollRequest", obj)
        return cls(
            name=fields.text("name"),
            enrollment=fields.text("enrollment"),
            nonce=_unb64(fields, "nonce"),
            csr=fields.text("csr"),
            proof=_unb64(fields, "proof"),
        )


@dataclass(frozen=True, slots=True)
class Enrolled:
    """`POST /v1/enroll`'s answer: the client certificate and the CA to trust, both PEM."""

    certificate: str
    ca: str

    def to_json(self) -> dict[str, Any]:
        return {"certificate": self.certificate, "ca": self.ca}

    @classmethod
    def from_json(cls, obj: object) -> Enrolled:
        """Raises BadDocument."""
        fields = JsonFields("Enrolled", obj)
        return cls(certificate=fields.text("certificate"), ca=fields.text("ca"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(fields: JsonFields, name: str) -> bytes:
    try:
        return base64.b64decode(fields.text(name), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadDocument(fields.document, name, "is not base64") from exc
