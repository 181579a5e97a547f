"""`mtagent certs renew`: a new key and certificate in place of the old, and a warning for a
CA key others can read."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from agent.certs import init_pki, issue_client
from tests.support.agent_harness import run_mtagent


def names(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def test_renew_gives_the_server_a_new_key_and_certificate_for_the_same_names(tmp_path: Path):
    pki = init_pki(tmp_path, ["mt01.example.com", "192.0.2.7"], days=10)
    old_key, old_cert = pki.server_key.read_bytes(), pki.server_cert.read_bytes()

    result = run_mtagent("certs", "renew", "--dir", tmp_path, "--days", "400")

    assert result.returncode == 0, result.stderr
    assert pki.server_key.read_bytes() != old_key and pki.server_cert.read_bytes() != old_cert
    assert names(pki.server_cert) == ["mt01.example.com", "192.0.2.7"]
    renewed = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    assert (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days >= 400
    assert pki.server_key.stat().st_mode & 0o777 == 0o600
    assert str(pki.server_cert) in result.stdout


def test_renew_of_a_client_replaces_its_files(tmp_path: Path) -> None:
    init_pki(tmp_path, ["mt01"])
    cert, key = issue_client(tmp_path, "ps01")
    old_cert, old_key = cert.read_bytes(), key.read_bytes()

    result = run_mtagent("certs", "renew", "--dir", tmp_path, "--name", "ps01")

    assert result.returncode == 0, result.stderr
    assert cert.read_bytes() != old_cert and key.read_bytes() != old_key
    assert names(cert) == ["ps01"]


def test_renew_of_a_client_never_issued_is_one_line(tmp_path: Path) -> None:
    init_pki(tmp_path, ["mt01"])

    result = run_mtagent("certs", "renew", "--dir", tmp_path, "--name", "ps09")

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "ps09.crt" in result.stderr
    assert not (tmp_path / "ps09.crt").exists() and not (tmp_path / "ps09.key").exists()


def test_renew_with_no_server_certificate_is_one_line(tmp_path: Path) -> None:
    result = run_mtagent("certs", "renew", "--dir", tmp_path)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no server certificate to renew" in result.stderr


def test_certs_warns_about_a_ca_key_others_can_read(tmp_path: Path) -> None:
    pki = init_pki(tmp_path, ["mt01"])
    pki.ca_key.chmod(0o644)

    result = run_mtagent("certs", "issue", "--dir", tmp_path, "--name", "ps01")

    assert result.returncode == 0
    assert result.stderr.count("\n") == 1
    assert f"CA key {pki.ca_key} has mode 0644" in result.stderr
    assert (tmp_path / "ps01.crt").exists()
