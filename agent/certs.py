"""The small private CA of one agent: its CA, its server certificate, its clients' certificates.

Mutual TLS (docs/protocol.md section 1) needs the agent to present a server certificate and to
accept only client certificates chaining to its client CA. `init_pki` writes both halves in one
directory; `issue_client` signs one certificate per process server with that CA.

Keys are ECDSA P-256 (cheap handshakes), PKCS8 PEM, unencrypted (the daemon starts unattended),
created mode 0600 from the first byte; certificates are 0644. Every file is written atomically
(temporary file in the same directory, fsync, rename, fsync of the directory), so a crash leaves
the old file or the new one, never half of one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import AgentError
from blockio.durable import DirectoryNotSynced, write_atomically

log = logging.getLogger(__name__)

CA_DAYS = 3650
# The longest a publicly trusted TLS certificate may live (CA/Browser Forum, 398 days), less a day
# for the backdate: what TLS scanners hold a server certificate to. `certs renew` and the expiry
# alert make the yearly renewal one command.
LEAF_DAYS = 397
# The process server's clock and the agent's disagree a little: a certificate made a moment ago
# must not be "not yet valid" on the other side.
BACKDATE = timedelta(minutes=5)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.crt"
SERVER_KEY_FILE = "server.key"
# The certificate revocation list of the directory's CA (`revoke_client` writes it).
CRL_FILE = "crl.pem"
# A client named like these would overwrite the CA's or the server's files.
RESERVED_CLIENT_NAMES = frozenset({"ca", "server"})

KEY_MODE = 0o600
CERT_MODE = 0o644

# X.509 upper bound for a common name (RFC 5280 ub-common-name).
MAX_COMMON_NAME = 64
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class PkiError(AgentError):
    """A certificate or key could not be made, read or written; `path` is the file at fault."""

    def __init__(self, path: Path | None, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """The four files `init_pki` writes."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path | str) -> PkiPaths:
        """The standard file names inside `directory`."""
        directory = Path(directory)
        return cls(
            directory=directory,
            ca_cert=directory / CA_CERT_FILE,
            ca_key=directory / CA_KEY_FILE,
            server_cert=directory / SERVER_CERT_FILE,
            server_key=directory / SERVER_KEY_FILE,
        )


def parse_hostname(text: str) -> x509.GeneralName:
    """The SAN entry for one --hostname: an IPAddress for an IP literal, else a DNSName.

    IPv6 may be written with or without brackets. A DNS name must be ASCII letters, digits and
    hyphens in dot-separated labels (a leading "*." wildcard is allowed), 253 characters at most.
    Raises ValueError saying what is wrong.
    """
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return x509.IPAddress(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if not _is_dns_name(text, allow_wildcard=True):
        raise ValueError(
            f"expected a host name (ASCII letters, digits, '-' in dot-separated labels; "
            f"international names in their xn-- form) or an IP address, got {text!r}"
        )
    return x509.DNSName(text)


def check_client_name(name: str) -> str:
    """`name` if it can name a client certificate, its files and its SAN; else ValueError.

    A client name is a DNS-style name of at most 64 characters (the CN limit), and not one of
    the names the CA and server files use.
    """
    if len(name) > MAX_COMMON_NAME or not _is_dns_name(name, allow_wildcard=False):
        raise ValueError(
            f"expected a client name of 1 to {MAX_COMMON_NAME} ASCII letters, digits, '-' "
            f"and '.' (like ps1 or ps1.example.com), got {name!r}"
        )
    if name.lower() in RESERVED_CLIENT_NAMES:
        raise ValueError(f"the name {name!r} is reserved for the CA and server files")
    return name


def make_ca(
    directory: Path | str,
    common_name: str,
    *,
    days: int = CA_DAYS,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write a new self-signed CA, `ca.crt` and `ca.key`, in `directory`; return their paths.

    The CA may sign end-entity certificates only (path length 0). Tests use this to make a
    second, foreign CA whose clients the agent must refuse.
    Raises PkiError if a file exists (unless `force`) or cannot be written.
    """
    paths = PkiPaths.in_directory(directory)
    _refuse_existing((paths.ca_cert, paths.ca_key), force)
    key, cert = _new_ca(common_name, days)
    _write_key(paths.ca_key, key)
    _write_cert(paths.ca_cert, cert)
    return paths.ca_cert, paths.ca_key


def init_pki(
    directory: Path | str,
    hostnames: Iterable[str],
    days: int = LEAF_DAYS,
    *,
    force: bool = False,
    ca_common_name: str | None = None,
    not_valid_after: datetime | None = None,
) -> PkiPaths:
    """Write a new CA and a server certificate for `hostnames` in `directory` (made if needed).

    The server certificate's SAN holds every hostname and nothing else: IP literals as
    IPAddress entries, names as DNSName entries. It is valid for `days`, or until
    `not_valid_after` if given (in the past makes an expired certificate, for tests).
    Nothing is written if any of the four files exists, unless `force`.
    Raises PkiError for no or invalid hostnames, an existing file, or a failed write.
    """
    paths = PkiPaths.in_directory(directory)
    names = _subject_alt_names(hostnames)
    _refuse_existing((paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key), force)
    first_name = _general_name_text(names[0])
    ca_key, ca_cert = _new_ca(ca_common_name or f"mtagent CA {first_name}", CA_DAYS)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _sign_leaf(
        ca_cert,
        ca_key,
        server_key,
        common_name=first_name,
        names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=_validity(days, not_valid_after, ca_cert, paths.server_cert),
    )
    _write_key(paths.ca_key, ca_key)
    _write_cert(paths.ca_cert, ca_cert)
    _write_key(paths.server_key, server_key)
    _write_cert(paths.server_cert, server_cert)
    return paths


def issue_server(
    directory: Path | str,
    hostnames: Iterable[str],
    days: int = LEAF_DAYS,
    *,
    force: bool = False,
    not_valid_after: datetime | None = None,
) -> tuple[Path, Path]:
    """Write a new `server.crt` and `server.key` in `directory`, signed by its existing CA.

    For renewing the server certificate (or changing its names) without a new CA, which would
    force every client to be reissued. Same SAN rules and raises as `init_pki`.
    """
    paths = PkiPaths.in_directory(directory)
    names = _subject_alt_names(hostnames)
    _refuse_existing((paths.server_cert, paths.server_key), force)
    ca_cert, ca_key = _load_ca(paths)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _sign_leaf(
        ca_cert,
        ca_key,
        server_key,
        common_name=_general_name_text(names[0]),
        names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=_validity(days, not_valid_after, ca_cert, paths.server_cert),
    )
    _write_key(paths.server_key, server_key)
    _write_cert(paths.server_cert, server_cert)
    return paths.server_cert, paths.server_key


def renew_server(directory: Path | str, days: int = LEAF_DAYS) -> tuple[Path, Path]:
    """A new key and certificate for the server, for the same names, signed by the same CA:
    what `mtagent certs renew` does. Raises PkiError when there is no readable server
    certificate to renew, or as `issue_server`."""
    paths = PkiPaths.in_directory(directory)
    try:
        current = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except FileNotFoundError as exc:
        raise PkiError(paths.server_cert, "no server certificate to renew here") from exc
    except OSError as exc:
        raise PkiError(paths.server_cert, f"cannot read: {exc.strerror}") from exc
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise PkiError(paths.server_cert, "not a server certificate with names to renew") from exc
    hostnames = [_general_name_text(name) for name in names]
    return issue_server(directory, hostnames, days, force=True)


def issue_client(
    directory: Path | str,
    name: str,
    days: int = LEAF_DAYS,
    *,
    force: bool = False,
    not_valid_after: datetime | None = None,
) -> tuple[Path, Path]:
    """Write `<name>.crt` and `<name>.key` in `directory`: a client certificate signed by its CA.

    The certificate has CN=name, a DNSName SAN name, and clientAuth as its only extended key
    usage. Valid for `days`, or until `not_valid_after` if given (in the past makes an expired
    certificate, for tests). Returns (certificate path, key path).
    Raises PkiError for an invalid name, a missing or unusable CA, an existing file (unless
    `force`), or a failed write.
    """
    try:
        check_client_name(name)
    except ValueError as exc:
        raise PkiError(None, str(exc)) from exc
    paths = PkiPaths.in_directory(directory)
    cert_path, key_path = paths.directory / f"{name}.crt", paths.directory / f"{name}.key"
    _refuse_existing((cert_path, key_path), force)
    ca_cert, ca_key = _load_ca(paths)
    client_key = ec.generate_private_key(ec.SECP256R1())
    validity = _validity(days, not_valid_after, ca_cert, cert_path)
    client_cert = _sign_client(ca_cert, ca_key, client_key.public_key(), name, validity)
    _write_key(key_path, client_key)
    _write_cert(cert_path, client_cert)
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class Revocation:
    """What `revoke_client` did: the CRL file, the serial revoked, whether it already was, and
    how many certificates the CRL lists now."""

    crl: Path
    serial: int
    already: bool
    revoked_count: int


def revoke_client(directory: Path | str, name: str, cert_path: Path | None = None) -> Revocation:
    """Add client certificate `<name>.crt` of `directory` (or `cert_path`, for one made
    elsewhere: a sender enrolled by passphrase) to the CRL its CA signs, `crl.pem` in
    `directory` (made if missing; the certificates it already lists stay). The CRL is valid
    until the CA expires, so that an agent that checks it never refuses every client for a
    stale list; each revocation writes a new one. Revoking a revoked certificate again changes
    nothing.

    Raises PkiError for an invalid name, a missing or unusable CA, certificate or CRL, a
    certificate the CA did not sign, or a failed write.
    """
    try:
        check_client_name(name)
    except ValueError as exc:
        raise PkiError(None, str(exc)) from exc
    paths = PkiPaths.in_directory(directory)
    ca_cert, ca_key = _load_ca(paths)
    cert_path = cert_path or paths.directory / f"{name}.crt"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise PkiError(cert_path, f"cannot read the certificate to revoke: {exc.strerror}") from exc
    except ValueError as exc:
        raise PkiError(cert_path, "not a PEM certificate") from exc
    if cert.issuer != ca_cert.subject:
        raise PkiError(cert_path, f"was not issued by the CA {paths.ca_cert}")
    crl_path = paths.directory / CRL_FILE
    listed = _revoked_entries(crl_path, ca_cert)
    serial = cert.serial_number
    if any(entry.serial_number == serial for entry in listed):
        return Revocation(crl_path, serial, already=True, revoked_count=len(listed))
    now = datetime.now(UTC)
    listed.append(
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(ca_cert.not_valid_after_utc)
    )
    for entry in listed:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, _signature_hash(ca_key))
    _write_atomically(crl_path, crl.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return Revocation(crl_path, serial, already=False, revoked_count=len(listed))


def _revoked_entries(crl_path: Path, ca_cert: x509.Certificate) -> list[x509.RevokedCertificate]:
    """The entries of the CRL at `crl_path` ([] when there is none), checked to be `ca_cert`'s."""
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PkiError(crl_path, f"cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise PkiError(crl_path, "not a PEM certificate revocation list") from exc
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise PkiError(crl_path, "was not signed by this directory's CA")
    return list(crl)


# -- building certificates --------------------------------------------------------------------


def _new_ca(common_name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if days <= 0:
        raise PkiError(None, f"expected a positive number of days, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(common_name))])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    not_before, not_after = validity
    public = key if isinstance(key, ec.EllipticCurvePublicKey) else key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(common_name))])
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                # ECDSA keys sign the (EC)DHE handshake; they never encrypt or agree keys.
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, _signature_hash(ca_key))
    )


def _validity(
    days: int, not_valid_after: datetime | None, ca_cert: x509.Certificate, path: Path
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    if not_valid_after is not None:
        if not_valid_after.tzinfo is None:
            raise PkiError(path, "not_valid_after must carry a time zone")
        # An already expired certificate still needs a validity period that makes sense.
        return min(now - BACKDATE, not_valid_after - timedelta(days=1)), not_valid_after
    if days <= 0:
        raise PkiError(path, f"expected a positive number of days, got {days}")
    not_after = now + timedelta(days=days)
    ca_expiry = ca_cert.not_valid_after_utc
    if not_after > ca_expiry:
        # Past the CA's expiry the chain no longer verifies: the extra days would be a lie.
        raise PkiError(
            path,
            f"a certificate valid for {days} days would outlive its CA "
            f"(which expires {ca_expiry:%Y-%m-%d}); choose fewer days or a new CA",
        )
    return now - BACKDATE, not_after


def _subject_alt_names(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    # One bare string is one hostname, not a sequence of one-letter names.
    if isinstance(hostnames, str):
        hostnames = [hostnames]
    names: list[x509.GeneralName] = []
    for hostname in hostnames:
        try:
            name = parse_hostname(hostname)
        except ValueError as exc:
            raise PkiError(None, str(exc)) from exc
        if name not in names:
            names.append(name)
    if not names:
        raise PkiError(None, "expected at least one hostname for the server certificate")
    return names


def _general_name_text(name: x509.GeneralName) -> str:
    return str(name.value)


def _common_name(text: str) -> str:
    # The SAN carries the names that TLS checks; the CN is only a label for people.
    return text[:MAX_COMMON_NAME]


def _is_dns_name(text: str, *, allow_wildcard: bool) -> bool:
    if not text or len(text) > 253 or not text.isascii():
        return False
    labels = text.split(".")
    if allow_wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return all(_DNS_LABEL.fullmatch(label) for label in labels)


def _signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519 and Ed448 hash internally and refuse an external hash; an operator's own CA may
    # use them, or RSA, as well as our P-256.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


# -- files ------------------------------------------------------------------------------------


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    return load_ca_files(
        paths.ca_cert, paths.ca_key, f"run `mtagent certs init --dir {paths.directory}` first"
    )


def load_ca_files(
    cert_path: Path, key_path: Path, hint: str
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The CA of `cert_path` (a PEM file; of several certificates, the one `key_path`'s key
    belongs to) and its key. Raises PkiError naming the file at fault; `hint` says what to do
    about a missing one."""
    try:
        cert_pem = cert_path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(cert_path, f"no CA certificate here; {hint}") from exc
    except OSError as exc:
        raise PkiError(cert_path, f"cannot read: {exc.strerror}") from exc
    try:
        key_pem = key_path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(key_path, f"no CA key here; {hint}") from exc
    except OSError as exc:
        raise PkiError(key_path, f"cannot read: {exc.strerror}") from exc
    try:
        candidates = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise PkiError(cert_path, "not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(key_path, "not an unencrypted PEM private key") from exc
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
        | rsa.RSAPrivateKey,
    ):
        raise PkiError(key_path, f"a {type(key).__name__} cannot sign certificates here")
    public = _public_der(key.public_key())
    cert = next((c for c in candidates if _public_der(c.public_key()) == public), None)
    if cert is None:
        raise PkiError(key_path, f"does not belong to the certificate {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PkiError(cert_path, "not a CA certificate (no BasicConstraints with ca=True)")
    try:
        # Leaves name their issuer's key by it (AuthorityKeyIdentifier); verifiers require that.
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise PkiError(cert_path, "a CA without a SubjectKeyIdentifier cannot sign here") from exc
    _warn_if_exposed(key_path)
    return cert, key


def sign_client_csr(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    csr: x509.CertificateSigningRequest,
    name: str,
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    """A client certificate for `name` (as `issue_client` makes them) over the public key of
    `csr`, whose own subject and extensions are ignored. Raises PkiError for an invalid name, a
    CSR whose signature does not verify or whose key is not ECDSA P-256."""
    try:
        check_client_name(name)
    except ValueError as exc:
        raise PkiError(None, str(exc)) from exc
    key = csr.public_key()
    if not csr.is_signature_valid:
        raise PkiError(None, "the CSR's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(None, "the CSR's key is not an ECDSA P-256 key")
    return _sign_client(ca_cert, ca_key, key, name, _validity(days, None, ca_cert, Path(name)))


def _sign_client(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    key: ec.EllipticCurvePublicKey,
    name: str,
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    """A client certificate: CN=name, a DNSName SAN name, clientAuth its only extended usage."""
    return _sign_leaf(
        ca_cert,
        ca_key,
        key,
        common_name=name,
        names=[x509.DNSName(name)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        validity=validity,
    )


def _warn_if_exposed(key: Path) -> None:
    """A CA key others can read lets them issue certificates the agent accepts: said, not
    refused (the operator may be about to move it off this host)."""
    mode = stat.S_IMODE(os.stat(key).st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "CA key %s has mode %04o: whoever can read it can issue certificates this agent "
            "accepts; run `chmod 600 %s`, or better, keep it off this host",
            key,
            mode,
            key,
        )


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    # Checked for every file before any is written, so a refusal leaves the directory as it was.
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise PkiError(path, "already exists; use --force to replace it")


def _write_key(path: Path, key: CertificateIssuerPrivateKeyTypes) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, pem, KEY_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`, mode `mode` from creation on; old or new survives a crash."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, mode=mode)
    except DirectoryNotSynced as exc:
        message = f"written, but its directory could not be synced: {exc.strerror}"
        raise PkiError(path, message) from exc
    except OSError as exc:
        raise PkiError(path, f"cannot write: {exc.strerror}") from exc


def not_after_timestamps(server_cert: Path, client_ca: Path) -> dict[str, float]:
    """When the server certificate and the client CA expire (Unix seconds; for a CA file of
    several certificates, the first to expire), keyed "server" and "client_ca". A file that
    cannot be read or parsed is left out (loading the TLS context reports it)."""
    found: dict[str, float] = {}
    for name, path in (("server", server_cert), ("client_ca", client_ca)):
        try:
            certificates = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            continue
        found[name] = min(c.not_valid_after_utc.timestamp() for c in certificates)
    return found
