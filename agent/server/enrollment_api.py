"""`POST /v1/enroll/challenge` and `POST /v1/enroll`: a process server without a certificate
proves a one-time passphrase (protocol.enrollment) and gets a client certificate bound to the
passphrase's groups (docs/protocol.md section 2.1).

These are the only routes a client without a certificate reaches (agent.server.authorization),
so they guard themselves: bodies are small and read within a deadline; a challenge's nonce is
kept in memory, used once and for NONCE_SECONDS at most, and at most MAX_NONCES wait; every
failed proof (a wrong passphrase, an unknown passphrase id or nonce) is counted, and
LOCK_FAILURES of them within LOCK_SECONDS lock both routes for everyone for LOCK_SECONDS (429
ENROLLMENT_LOCKED). Each attempt is one record of the audit trail (agent.server.audit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from prometheus_client import Counter

from agent import enrollment
from agent.certs import PkiError, load_ca_files, sign_client_csr
from agent.config import AgentConfig, SenderConfig
from agent.log_fields import log_fields
from agent.server import keys
from agent.server.authorization import AUTHORIZATION
from protocol.enrollment import EnrollChallenge, Enrolled, EnrollRequest, proof_matches
from protocol.errors import (
    BadDocument,
    BadRequest,
    EnrollmentDisabled,
    EnrollmentLocked,
    EnrollmentRefused,
    ProtocolError,
    SenderExists,
)

log = logging.getLogger("mtagent.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NONCE_SECONDS = 60.0
MAX_NONCES = 64
NONCE_BYTES = 32
LOCK_FAILURES = 5
LOCK_SECONDS = 600.0
# A CSR and a few short fields: a few KiB. Read within a deadline, as nobody vouches for it.
MAX_BODY_BYTES = 16 * 1024
BODY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class _Nonce:
    enrollment: str
    expires: float


class EnrollmentGate:
    """The nonces handed out and the recent failures, in memory (a restart forgets both: an
    attacker gains at most LOCK_FAILURES guesses a restart, each against 125 random bits)."""

    def __init__(self) -> None:
        self._nonces: OrderedDict[bytes, _Nonce] = OrderedDict()
        self._failures: deque[float] = deque()
        self._locked_until = 0.0
        # One enrollment at a time: checking, using up and signing is one step.
        self.lock = asyncio.Lock()

    def check_open(self) -> None:
        """Raises EnrollmentLocked while locked."""
        now = time.monotonic()
        if now < self._locked_until:
            wait = int(self._locked_until - now) + 1
            raise EnrollmentLocked(
                f"enrollment is locked after {LOCK_FAILURES} failed proofs; try again in {wait} s",
                retry_after_seconds=wait,
            )

    def failed(self) -> None:
        """Count one failed proof; the LOCK_FAILURES-th within LOCK_SECONDS locks."""
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - LOCK_SECONDS:
            self._failures.popleft()
        if len(self._failures) >= LOCK_FAILURES:
            self._failures.clear()
            self._locked_until = now + LOCK_SECONDS
            log.warning(
                "enrollment locked for %g s after %d failed proofs",
                LOCK_SECONDS,
                LOCK_FAILURES,
                extra=log_fields(audit=1, action="enroll", result="locked"),
            )

    def new_nonce(self, enrollment_id: str) -> bytes:
        now = time.monotonic()
        while self._nonces and (
            len(self._nonces) >= MAX_NONCES or next(iter(self._nonces.values())).expires < now
        ):
            self._nonces.popitem(last=False)  # the oldest goes first
        nonce = secrets.token_bytes(NONCE_BYTES)
        self._nonces[nonce] = _Nonce(enrollment_id, now + NONCE_SECONDS)
        return nonce

    def take_nonce(self, nonce: bytes, enrollment_id: str) -> bool:
        """Whether `nonce` was handed out for `enrollment_id` and is still fresh; used up."""
        found = self._nonces.pop(nonce, None)
        return (
            found is not None
            and found.enrollment == enrollment_id
            and found.expires >= time.monotonic()
        )


ENROLLMENT_GATE = web.AppKey("enrollment_gate", EnrollmentGate)


class EnrollmentResult(StrEnum):
    """The `result` label of mtagent_enrollment_attempts_total."""

    ENROLLED = "enrolled"
    FAILED_PROOF = "failed_proof"  # ENROLLMENT_REFUSED: counts towards the lock
    LOCKED = "locked"  # ENROLLMENT_LOCKED
    REFUSED = "refused"  # any other refusal (used, expired, name taken, disabled, malformed)


def add_routes(app: web.Application) -> None:
    app[ENROLLMENT_GATE] = EnrollmentGate()
    attempts = Counter(
        "mtagent_enrollment_attempts",
        "Enrollment requests by passphrase (challenges that succeed aside), by result.",
        ["result"],
        registry=app[keys.REGISTRY],
    )
    for result in EnrollmentResult:
        attempts.labels(result.value)  # from zero, so that increase() sees the first
    app.router.add_post("/v1/enroll/challenge", _guarded(post_challenge, attempts))
    app.router.add_post("/v1/enroll", _guarded(post_enroll, attempts))


def _guarded(handler: Handler, attempts: Counter) -> Handler:
    """Count each outcome; an enrollment file the agent cannot read or write is said in the
    log, naming it, and answered ENROLLMENT_DISABLED without the path (the caller is nobody
    yet)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except enrollment.EnrollmentStoreError as exc:
            log.error("enrollment refused: %s", exc)
            attempts.labels(EnrollmentResult.REFUSED.value).inc()
            raise EnrollmentDisabled(
                "this agent cannot use its enrollment files now; its log says why"
            ) from None
        except ProtocolError as exc:
            result = {
                EnrollmentRefused.code: EnrollmentResult.FAILED_PROOF,
                EnrollmentLocked.code: EnrollmentResult.LOCKED,
            }.get(exc.code, EnrollmentResult.REFUSED)
            attempts.labels(result.value).inc()
            raise
        if handler is post_enroll:
            attempts.labels(EnrollmentResult.ENROLLED.value).inc()
        return response

    return guarded


async def post_challenge(request: web.Request) -> web.Response:
    """POST /v1/enroll/challenge `{"enrollment": id}`: 200 EnrollChallenge."""
    gate = request.app[ENROLLMENT_GATE]
    gate.check_open()
    config = request.app[keys.CONFIG]
    _check_enabled(request)
    obj = await _json_body(request)
    enrollment_id = obj.get("enrollment") if isinstance(obj, dict) else None
    if not isinstance(enrollment_id, str):
        raise BadRequest('the body must be {"enrollment": ID}', field="enrollment")
    verifier = await asyncio.to_thread(
        enrollment.find_verifier, config.server.state_dir, enrollment_id
    )
    if verifier is None:
        gate.failed()
        raise EnrollmentRefused("no such passphrase on this agent")
    challenge = EnrollChallenge(gate.new_nonce(enrollment_id), verifier.salt, verifier.scrypt)
    return web.json_response(challenge.to_json())


async def post_enroll(request: web.Request) -> web.Response:
    """POST /v1/enroll EnrollRequest: 200 Enrolled, the passphrase used up."""
    gate = request.app[ENROLLMENT_GATE]
    gate.check_open()
    config = request.app[keys.CONFIG]
    _check_enabled(request)
    try:
        asked = EnrollRequest.from_json(await _json_body(request))
    except BadDocument as exc:
        raise BadRequest(str(exc), field=exc.field) from None
    try:
        csr = x509.load_pem_x509_csr(asked.csr.encode())
    except ValueError:
        raise BadRequest("csr is not a PEM certificate signing request", field="csr") from None
    state_dir = config.server.state_dir
    async with gate.lock:
        verifier = await asyncio.to_thread(enrollment.find_verifier, state_dir, asked.enrollment)
        csr_der = csr.public_bytes(serialization.Encoding.DER)
        if (
            not gate.take_nonce(asked.nonce, asked.enrollment)
            or verifier is None
            or not proof_matches(verifier.key, asked.nonce, csr_der, asked.proof)
        ):
            gate.failed()
            raise EnrollmentRefused(
                "the proof does not match: a wrong passphrase, or a challenge that is not "
                "this agent's, used or older than a minute"
            )
        authorization = request.app[AUTHORIZATION]
        if authorization.knows(asked.name):
            raise SenderExists(
                f"a sender named {asked.name!r} is known already; enroll under another name",
                name=asked.name,
            )
        ca_cert, ca_key = _enrollment_ca(config)
        try:
            certificate = sign_client_csr(ca_cert, ca_key, csr, asked.name)
        except PkiError as exc:
            raise BadRequest(str(exc), field="csr") from None
        # Used up before the certificate leaves: a crash from here on costs the passphrase,
        # never lets it work twice.
        used = await asyncio.to_thread(
            enrollment.use_passphrase, state_dir, asked.enrollment, asked.name
        )
        sender = SenderConfig(asked.name, used.groups, used.role)
        certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        await asyncio.to_thread(
            enrollment.add_enrolled_sender, state_dir, sender, asked.enrollment, certificate_pem
        )
        authorization.enrolled(sender)
    log.info(
        "enrolled %s by passphrase %s: groups %s, role %s",
        sender.name,
        asked.enrollment,
        ", ".join(sorted(sender.groups)) or "none",
        sender.role,
        extra=log_fields(audit=1, action="enroll", sender=sender.name, enrollment=asked.enrollment),
    )
    answer = Enrolled(
        certificate_pem.decode(),
        ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
    )
    return web.json_response(answer.to_json())


def _check_enabled(request: web.Request) -> None:
    if request.app[keys.CONFIG].tls.enrollment_ca_key is None:
        raise EnrollmentDisabled("this agent enrolls no one: it has no [tls] enrollment_ca_key")
    # The table as the last reload left it, not as the agent started.
    if request.app[AUTHORIZATION].is_open:
        raise EnrollmentDisabled(
            "this agent enrolls no one: without a [[senders]] table every certificate may do "
            "everything, so no groups could be bound to a new one"
        )


def _enrollment_ca(
    config: AgentConfig,
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    assert config.tls.enrollment_ca_key is not None
    try:
        return load_ca_files(config.tls.client_ca, config.tls.enrollment_ca_key, "see [tls]")
    except PkiError as exc:
        log.error("cannot enroll: %s", exc)
        raise EnrollmentDisabled(f"this agent cannot use its enrollment CA key: {exc}") from None


async def _json_body(request: web.Request) -> object:
    if request.content_length is None or request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"an enrollment request is a JSON body of at most {MAX_BODY_BYTES} bytes")
    try:
        async with asyncio.timeout(BODY_SECONDS):
            body = await request.read()
        return json.loads(body)
    except TimeoutError:
        raise BadRequest(f"the body did not come within {BODY_SECONDS:g} s") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
