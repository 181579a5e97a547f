"""`mtagent enroll`: on a process server, get a client certificate from an agent with a
one-time passphrase (docs/protocol.md section 2.1). The key is made here and never sent; the
passphrase is never sent either, only a proof over the agent's challenge and the CSR."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import certs
from agent.commands.certs import client_name_argument
from agent.errors import CommandFailed
from blockio.durable import write_atomically
from protocol.client import AgentClient, TransportError, pinned_ssl_context
from protocol.enrollment import (
    Enrolled,
    EnrollRequest,
    Passphrase,
    enrollment_proof,
    passphrase_key,
)
from protocol.errors import ProtocolError

TIMEOUT_SECONDS = 60.0
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `enroll` command to `subparsers`."""
    parser = subparsers.add_parser(
        "enroll",
        help="get this process server's client certificate from an agent with a passphrase",
        description=(
            "Make a key here (it never leaves this host), prove the one-time passphrase that "
            "`mtagent certs passphrase` printed on the agent without sending it, and write "
            "DIR/NAME.key (mode 0600), DIR/NAME.crt and DIR/ca.crt: what `mtagent push` takes "
            "as --key, --cert and --ca. The agent is trusted on first contact by the SHA-256 "
            "fingerprint of its certificate, printed with the passphrase."
        ),
    )
    parser.add_argument("--server", required=True, metavar="URL", help="https://HOST:PORT")
    parser.add_argument(
        "--passphrase", required=True, type=_passphrase, help="the one-time passphrase"
    )
    parser.add_argument(
        "--name",
        required=True,
        type=client_name_argument,
        help="this process server's name, like ps01",
    )
    parser.add_argument(
        "--fingerprint",
        required=True,
        type=_fingerprint,
        metavar="SHA256",
        help="the SHA-256 fingerprint of the agent's certificate (hex; colons allowed)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    parser.set_defaults(run=run_enroll)


def run_enroll(args: argparse.Namespace) -> int:
    """Enroll and write the files. Raises CommandFailed (exit code 1)."""
    name: str = args.name
    out: Path = args.out
    key_path, cert_path, ca_path = out / f"{name}.key", out / f"{name}.crt", out / "ca.crt"
    for path in (key_path, cert_path):
        if path.exists():
            raise CommandFailed(f"{path} exists already; choose another --out or --name")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    try:
        enrolled = asyncio.run(_enroll(args.server, args.passphrase, name, args.fingerprint, csr))
    except ProtocolError as exc:
        raise CommandFailed(f"the agent refused: {exc}") from exc
    except (TransportError, TimeoutError) as exc:
        raise CommandFailed(f"cannot enroll at {args.server}: {exc}") from exc
    except ValueError as exc:  # a URL that is not one
        raise CommandFailed(str(exc)) from exc
    try:
        certificate = x509.load_pem_x509_certificate(enrolled.certificate.encode())
        ca = x509.load_pem_x509_certificate(enrolled.ca.encode())
    except ValueError as exc:
        raise CommandFailed(f"the agent's answer holds no PEM certificate: {exc}") from exc
    if _public_der(certificate.public_key()) != _public_der(key.public_key()):
        raise CommandFailed("the agent sent a certificate for another key than ours")
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(key_path, key_pem, mode=certs.KEY_MODE)
        write_atomically(cert_path, certificate.public_bytes(pem), mode=certs.CERT_MODE)
        write_atomically(ca_path, ca.public_bytes(pem), mode=certs.CERT_MODE)
    except OSError as exc:
        raise CommandFailed(f"cannot write into {out}: {exc.strerror or exc}") from exc
    print(
        f"enrolled as {name}; wrote:\n"
        f"  {key_path}  private key, mode 0600 (made here, never sent)\n"
        f"  {cert_path}  client certificate, valid until "
        f"{certificate.not_valid_after_utc:%Y-%m-%d}\n"
        f"  {ca_path}  the agent's CA\n"
        f"send with: mtagent push --server {args.server} --cert {cert_path} --key {key_path} "
        f"--ca {ca_path} ..."
    )
    return 0


async def _enroll(
    server: str,
    passphrase: Passphrase,
    name: str,
    fingerprint: bytes,
    csr: x509.CertificateSigningRequest,
) -> Enrolled:
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    context = pinned_ssl_context()
    async with AgentClient(
        server, context, timeout=TIMEOUT_SECONDS, pinned_sha256=fingerprint
    ) as client:
        challenge = await client.enroll_challenge(passphrase.enrollment)
        # scrypt's work is the point of it: off the event loop, like any other long step.
        key = await asyncio.to_thread(passphrase_key, passphrase, challenge.salt, challenge.scrypt)
        request = EnrollRequest(
            name=name,
            enrollment=passphrase.enrollment,
            nonce=challenge.nonce,
            csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
            proof=enrollment_proof(key, challenge.nonce, csr_der),
        )
        return await client.enroll(request)


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _passphrase(text: str) -> Passphrase:
    try:
        return Passphrase.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fingerprint(text: str) -> bytes:
    hexdigits = text.replace(":", "").lower()
    if _FINGERPRINT.fullmatch(hexdigits) is None:
        raise argparse.ArgumentTypeError(
            f"expected a SHA-256 fingerprint, 64 hex digits (colons allowed), got {text!r}"
        )
    return bytes.fromhex(hexdigits)
