"""agent/certs.py and `mtagent certs`: the CA, server and client certificates for mutual TLS."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.certs import (
    PkiError,
    PkiPaths,
    check_client_name,
    init_pki,
    issue_client,
    issue_server,
    make_ca,
    parse_hostname,
)
from agent.errors import AgentError

REPO = Path(__file__).resolve().parents[2]
HOSTNAMES = ["localhost", "127.0.0.1", "::1", "mt.example.com"]


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def store_of(ca_cert: Path) -> verification.Store:
    return verification.Store([load_cert(ca_cert)])


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return init_pki(tmp_path / "tls", HOSTNAMES)


# -- init_pki -------------------------------------------------------------------------------------


def test_init_writes_exactly_the_four_files(pki: PkiPaths) -> None:
    assert sorted(os.listdir(pki.directory)) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    assert pki == PkiPaths.in_directory(pki.directory)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_keys_are_0600_and_certificates_0644_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        paths = init_pki(tmp_path, ["localhost"])
        client_cert, client_key = issue_client(tmp_path, "ps1")
    finally:
        os.umask(previous)

    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {
        paths.ca_key.name: 0o600,
        paths.server_key.name: 0o600,
        client_key.name: 0o600,
        paths.ca_cert.name: 0o644,
        paths.server_cert.name: 0o644,
        client_cert.name: 0o644,
    }


def test_keys_are_unencrypted_pkcs8_p256(pki: PkiPaths) -> None:
    for path in (pki.ca_key, pki.server_key):
        pem = path.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"


def test_ca_is_self_signed_path_length_zero_signing_only_for_ten_years(pki: PkiPaths) -> None:
    ca = load_cert(pki.ca_cert)

    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = extension(ca, x509.KeyUsage).value
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, False)
    lifetime = ca.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=3649) < lifetime <= timedelta(days=3650)


def test_server_certificate_verifies_against_the_ca_for_every_hostname(pki: PkiPaths) -> None:
    server = load_cert(pki.server_cert)
    builder = verification.PolicyBuilder().store(store_of(pki.ca_cert))

    for subject in (
        verification.DNSName("localhost"),
        verification.DNSName("mt.example.com"),
        verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
        verification.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = builder.build_server_verifier(subject).verify(server, [])
        assert chain[-1] == load_cert(pki.ca_cert)


def test_server_certificate_does_not_verify_for_a_name_not_given(pki: PkiPaths) -> None:
    verifier = (
        verification.PolicyBuilder()
        .store(store_of(pki.ca_cert))
        .build_server_verifier(verification.DNSName("other.example.com"))
    )

    with pytest.raises(verification.VerificationError, match="subjectAltName"):
        verifier.verify(load_cert(pki.server_cert), [])


def test_server_san_holds_every_hostname_and_nothing_implicit(tmp_path: Path) -> None:
    paths = init_pki(tmp_path, ["mt.example.com", "10.1.2.3", "[fd00::7]", "mt.example.com"])
    san = extension(load_cert(paths.server_cert), x509.SubjectAlternativeName).value

    assert list(san) == [
        x509.DNSName("mt.example.com"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
        x509.IPAddress(ipaddress.ip_address("fd00::7")),
    ]


def test_server_certificate_is_for_server_auth_for_397_days(pki: PkiPaths) -> None:
    server = load_cert(pki.server_cert)

    assert list(extension(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert extension(server, x509.BasicConstraints).value.ca is False
    lifetime = server.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=396) < lifetime <= timedelta(days=397)
    server.verify_directly_issued_by(load_cert(pki.ca_cert))


def test_server_days_are_honoured(tmp_path: Path) -> None:
    paths = init_pki(tmp_path, ["localhost"], days=30)

    lifetime = load_cert(paths.server_cert).not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=29) < lifetime <= timedelta(days=30)


def test_server_certificate_outliving_the_ca_is_refused_and_nothing_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(PkiError, match="would outlive its CA"):
        init_pki(tmp_path, ["localhost"], days=4000)

    assert list(tmp_path.iterdir()) == []


def test_init_refuses_to_overwrite_and_leaves_files_untouched(pki: PkiPaths) -> None:
    before = {p: p.read_bytes() for p in pki.directory.iterdir()}
    pki.server_key.unlink()

    with pytest.raises(PkiError) as caught:
        init_pki(pki.directory, ["localhost"])

    assert caught.value.path == pki.ca_cert
    assert str(caught.value) == f"{pki.ca_cert}: already exists; use --force to replace it"
    assert {p: p.read_bytes() for p in pki.directory.iterdir()} == {
        p: data for p, data in before.items() if p != pki.server_key
    }


def test_init_with_force_replaces_every_file(pki: PkiPaths) -> None:
    before = {p: p.read_bytes() for p in pki.directory.iterdir()}

    init_pki(pki.directory, ["localhost"], force=True)

    after = {p: p.read_bytes() for p in pki.directory.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[p] != before[p] for p in before)


def test_init_refuses_no_hostname_or_a_bad_one(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="at least one hostname"):
        init_pki(tmp_path, [])
    with pytest.raises(PkiError, match="got 'bad host'"):
        init_pki(tmp_path, ["localhost", "bad host"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("mt.example.com", x509.DNSName("mt.example.com")),
        ("localhost", x509.DNSName("localhost")),
        ("*.example.com", x509.DNSName("*.example.com")),
        ("xn--caf-dma.example", x509.DNSName("xn--caf-dma.example")),
        ("192.0.2.1", x509.IPAddress(ipaddress.ip_address("192.0.2.1"))),
        ("2001:db8::1", x509.IPAddress(ipaddress.ip_address("2001:db8::1"))),
        ("[2001:db8::1]", x509.IPAddress(ipaddress.ip_address("2001:db8::1"))),
    ],
)
def test_parse_hostname(text: str, name: x509.GeneralName) -> None:
    assert parse_hostname(text) == name


@pytest.mark.parametrize(
    "text", ["", "bad host", "café.example", "-a.example", "a..b", "a.", "x" * 64, "a.*.b", "[x]"]
)
def test_parse_hostname_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a host name"):
        parse_hostname(text)


# -- issue_server ---------------------------------------------------------------------------------


def test_issue_server_renews_under_the_same_ca(pki: PkiPaths) -> None:
    ca_before = pki.ca_cert.read_bytes()

    issue_server(pki.directory, ["new.example.com"], force=True)

    assert pki.ca_cert.read_bytes() == ca_before
    server = load_cert(pki.server_cert)
    server.verify_directly_issued_by(load_cert(pki.ca_cert))
    assert list(extension(server, x509.SubjectAlternativeName).value) == [
        x509.DNSName("new.example.com")
    ]


# -- issue_client ---------------------------------------------------------------------------------


def test_client_certificate_is_client_auth_for_its_name(pki: PkiPaths) -> None:
    cert_path, key_path = issue_client(pki.directory, "ps1")

    assert (cert_path, key_path) == (pki.directory / "ps1.crt", pki.directory / "ps1.key")
    client = load_cert(cert_path)
    assert list(extension(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ps1"
    assert list(extension(client, x509.SubjectAlternativeName).value) == [x509.DNSName("ps1")]
    lifetime = client.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=396) < lifetime <= timedelta(days=397)


def test_client_certificate_verifies_as_a_client_of_the_ca(pki: PkiPaths) -> None:
    cert_path, _ = issue_client(pki.directory, "ps1.example.com")
    verifier = verification.PolicyBuilder().store(store_of(pki.ca_cert)).build_client_verifier()

    verified = verifier.verify(load_cert(cert_path), [])

    assert verified.subjects == [x509.DNSName("ps1.example.com")]


def test_client_key_belongs_to_its_certificate(pki: PkiPaths) -> None:
    cert_path, key_path = issue_client(pki.directory, "ps1")

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == load_cert(
        cert_path
    ).public_key().public_bytes(der, spki)


def test_client_of_a_foreign_ca_does_not_verify(pki: PkiPaths, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    make_ca(foreign, "foreign CA")
    cert_path, _ = issue_client(foreign, "intruder")
    verifier = verification.PolicyBuilder().store(store_of(pki.ca_cert)).build_client_verifier()

    with pytest.raises(verification.VerificationError):
        verifier.verify(load_cert(cert_path), [])


def test_expired_client_certificate_can_be_made_and_does_not_verify(pki: PkiPaths) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    cert_path, _ = issue_client(pki.directory, "old", not_valid_after=yesterday)
    client = load_cert(cert_path)
    verifier = verification.PolicyBuilder().store(store_of(pki.ca_cert)).build_client_verifier()

    assert client.not_valid_after_utc == yesterday.replace(microsecond=0)
    assert client.not_valid_before_utc < client.not_valid_after_utc
    with pytest.raises(verification.VerificationError, match="not valid at validation time"):
        verifier.verify(client, [])


def test_issue_refuses_to_overwrite_a_client(pki: PkiPaths) -> None:
    cert_path, key_path = issue_client(pki.directory, "ps1")
    before = (cert_path.read_bytes(), key_path.read_bytes())

    with pytest.raises(PkiError, match=r"ps1\.crt: already exists"):
        issue_client(pki.directory, "ps1")

    assert (cert_path.read_bytes(), key_path.read_bytes()) == before
    issue_client(pki.directory, "ps1", force=True)
    assert cert_path.read_bytes() != before[0]


def test_issue_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as caught:
        issue_client(tmp_path, "ps1")

    assert caught.value.path == tmp_path / "ca.crt"
    assert "mtagent certs init" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_issue_refuses_a_ca_key_of_another_ca(pki: PkiPaths, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    _, foreign_key = make_ca(foreign, "foreign CA")
    pki.ca_key.write_bytes(foreign_key.read_bytes())

    with pytest.raises(PkiError, match="does not belong to the certificate"):
        issue_client(pki.directory, "ps1")


@pytest.mark.parametrize("name", ["ps1", "ps-1", "ps1.example.com", "a" * 30 + "." + "b" * 33])
def test_client_names_accepted(name: str) -> None:
    assert check_client_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b",
        "../x",
        ".hidden",
        "a b",
        "a_b",
        "a" * 30 + "." + "b" * 34,
        "a" * 64,
        "ca",
        "server",
        "CA",
        "*.x",
    ],
)
def test_client_names_refused_before_anything_is_written(pki: PkiPaths, name: str) -> None:
    before = sorted(os.listdir(pki.directory))

    with pytest.raises(PkiError):
        issue_client(pki.directory, name)

    assert sorted(os.listdir(pki.directory)) == before


def test_pki_errors_fail_commands_with_exit_code_1(tmp_path: Path) -> None:
    with pytest.raises(AgentError):
        issue_client(tmp_path, "ps1")


# -- the real command line ------------------------------------------------------------------------


def run_mtagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_init_and_issue_write_files_and_list_them(tmp_path: Path) -> None:
    directory = tmp_path / "tls"

    init = run_mtagent(
        "certs", "init", "--dir", str(directory), "--hostname", "localhost", "--hostname", "::1"
    )
    issue = run_mtagent("certs", "issue", "--dir", str(directory), "--name", "ps1", "--days", "7")

    assert (init.returncode, init.stderr) == (0, "")
    assert (issue.returncode, issue.stderr) == (0, "")
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        assert str(directory / name) in init.stdout
    assert str(directory / "ps1.crt") in issue.stdout
    assert str(directory / "ps1.key") in issue.stdout
    assert '[[senders]]\n  name = "ps1"' in issue.stdout  # what the agent's config needs
    san = extension(load_cert(directory / "server.crt"), x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("::1"))]
    lifetime = load_cert(directory / "ps1.crt").not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=6) < lifetime <= timedelta(days=7)


def test_cli_without_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = run_mtagent("certs", "init", "--hostname", "localhost")

    assert result.returncode == 2
    assert "--dir" in result.stderr


def test_cli_refusing_to_overwrite_fails_with_one_line(pki: PkiPaths) -> None:
    result = run_mtagent("certs", "init", "--dir", str(pki.directory), "--hostname", "localhost")

    assert result.returncode == 1
    assert result.stderr == f"mtagent: {pki.ca_cert}: already exists; use --force to replace it\n"


@pytest.mark.parametrize(
    "args", [("certs",), ("certs", "init"), ("certs", "issue")], ids=["certs", "init", "issue"]
)
def test_cli_help_is_there_for_each_command(args: tuple[str, ...]) -> None:
    result = run_mtagent(*args, "--help")

    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: mtagent {' '.join(args)}")


# -- a real TLS handshake on loopback -------------------------------------------------------------


def server_context(pki: PkiPaths) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


def client_context(ca_cert: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_cert)
    context.load_cert_chain(cert, key)
    return context


@contextmanager
def tls_echo_server(context: ssl.SSLContext) -> Iterator[tuple[int, dict[str, object]]]:
    """One-connection TLS server on loopback; the outcome (peer CN or error) lands in `result`."""
    result: dict[str, object] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as tls:
                peer = tls.getpeercert()
                result["peer"] = dict(item for rdn in peer["subject"] for item in rdn)
                tls.sendall(tls.recv(100))
        except (OSError, ssl.SSLError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], result
    finally:
        thread.join(timeout=10)
        listener.close()


def test_tls_handshake_between_server_and_client_certificates(pki: PkiPaths) -> None:
    cert, key = issue_client(pki.directory, "ps1")
    context = client_context(pki.ca_cert, cert, key)

    with (
        tls_echo_server(server_context(pki)) as (port, result),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"ping")
        assert tls.recv(100) == b"ping"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")

    assert result == {"peer": {"commonName": "ps1"}}


def test_tls_client_checks_the_server_ip_san(pki: PkiPaths) -> None:
    cert, key = issue_client(pki.directory, "ps1")
    context = client_context(pki.ca_cert, cert, key)

    with (
        tls_echo_server(server_context(pki)) as (port, result),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"ip")
        assert tls.recv(100) == b"ip"
    assert result == {"peer": {"commonName": "ps1"}}


def attempt_handshake(pki: PkiPaths, client: ssl.SSLContext) -> dict[str, object]:
    with tls_echo_server(server_context(pki)) as (port, result):
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                # TLS 1.3: the server judges the client certificate after the client's side of
                # the handshake is done; the refusal arrives on the first read.
                tls.sendall(b"x")
                tls.recv(100)
        except (OSError, ssl.SSLError):
            pass
    return result


def test_tls_refuses_a_client_of_a_foreign_ca(pki: PkiPaths, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    make_ca(foreign, "foreign CA")
    cert, key = issue_client(foreign, "intruder")

    result = attempt_handshake(pki, client_context(pki.ca_cert, cert, key))

    assert "peer" not in result
    assert isinstance(result["error"], ssl.SSLError)
    assert "certificate verify failed" in str(result["error"])


def test_tls_refuses_an_expired_client(pki: PkiPaths) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    cert, key = issue_client(pki.directory, "old", not_valid_after=yesterday)

    result = attempt_handshake(pki, client_context(pki.ca_cert, cert, key))

    assert "peer" not in result
    assert "certificate has expired" in str(result["error"])


def test_tls_refuses_the_server_certificate_used_as_a_client(pki: PkiPaths) -> None:
    # Same CA, but serverAuth only: OpenSSL checks the client's purpose (extended key usage).
    client = client_context(pki.ca_cert, pki.server_cert, pki.server_key)

    result = attempt_handshake(pki, client)

    assert "peer" not in result
    assert "unsuitable certificate purpose" in str(result["error"])
