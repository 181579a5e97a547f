"""Enrollment by passphrase, through the real agent and the real CLI: `mtagent certs passphrase`
on the agent's side, `mtagent enroll` on the process server's, and what crosses the wire."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.certs import CRL_FILE, issue_client, revoke_client
from protocol.client import AgentClient, TlsRefused, client_ssl_context, pinned_ssl_context
from protocol.enrollment import EnrollRequest, Passphrase, enrollment_proof, passphrase_key
from protocol.errors import EnrollmentRefused, Forbidden
from tests.support.agent_harness import AgentProcess, cli
from tests.support.batches import resync_batch
from tests.support.waiting import wait_until

PASSPHRASE_LINE = re.compile(r"passphrase:\s+(\S+)")
FINGERPRINT_LINE = re.compile(r"fingerprint:\s+([0-9a-f]{64})")


def enrolling_agent(workdir: Path, *, crl: bool = False) -> AgentProcess:
    """An agent with disk d1 in group vm1 and d2 in vm2, an admin `sender`, and enrollment on;
    `crl`: checking the CA's revocation list (which lists a certificate `gone`)."""
    agent = AgentProcess.create(workdir, {"d1": 1 << 20, "d2": 1 << 20})
    agent.groups = {"d1": "vm1", "d2": "vm2"}
    agent.senders = [{"name": "sender", "groups": ["*"], "role": "admin"}]
    agent.enrollment_ca_key = agent.pki / "ca.key"
    if crl:
        issue_client(agent.pki, "gone")
        revoke_client(agent.pki, "gone")
        agent.crl = agent.pki / CRL_FILE
    agent.write_config()
    agent.start()
    return agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = enrolling_agent(tmp_path_factory.mktemp("enroll"))
    yield agent
    agent.stop()


def new_passphrase(agent: AgentProcess, groups: str = "vm1", ttl: str = "1h") -> tuple[str, str]:
    """`mtagent certs passphrase`: (the passphrase, the fingerprint) it printed."""
    code, out, err = cli(
        "certs", "passphrase", "--config", agent.config_path, "--groups", groups, "--ttl", ttl
    )
    assert code == 0, err
    found, fingerprint = PASSPHRASE_LINE.search(out), FINGERPRINT_LINE.search(out)
    assert found and fingerprint, out
    return found.group(1), fingerprint.group(1)


def enroll(
    agent: AgentProcess, passphrase: str, fingerprint: str, name: str, out: Path
) -> tuple[int, str, str]:
    return cli(
        "enroll",
        "--server",
        agent.url,
        "--passphrase",
        passphrase,
        "--name",
        name,
        "--fingerprint",
        fingerprint,
        "--out",
        out,
    )


class SentBytes:
    """Every byte the process server writes into its TLS connections, before encryption:
    what an eavesdropper who broke TLS would see."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.chunks: list[bytes] = []
        chunks = self.chunks

        class Recording(ssl.SSLObject):
            def write(self, data: bytes) -> int:  # type: ignore[override]
                chunks.append(bytes(data))
                return super().write(data)

        monkeypatch.setattr(ssl.SSLContext, "sslobject_class", Recording)

    @property
    def all(self) -> bytes:
        return b"".join(self.chunks)


async def put(ssl_context: ssl.SSLContext, agent: AgentProcess, disk: str) -> object:
    async with AgentClient(agent.url, ssl_context, timeout=30) as client:
        return await client.put_batch(disk, 1, resync_batch(disk, 1, [(0, b"\x5a" * 4096)]))


def test_the_right_passphrase_yields_a_certificate_bound_to_its_groups(
    agent: AgentProcess, tmp_path: Path
) -> None:
    passphrase, fingerprint = new_passphrase(agent, "vm1")
    out = tmp_path / "tls"

    code, printed, err = enroll(agent, passphrase, fingerprint, "ps01", out)

    assert code == 0, err
    assert "enrolled as ps01" in printed
    assert "enrolled ps01 by passphrase" in agent.log()
    assert stat.S_IMODE((out / "ps01.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "ps01.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ps01"
    assert (out / "ca.crt").read_bytes() == agent.ca.read_bytes()
    source = tmp_path / "source.img"
    source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, the size of d1 and d2
    vm2_before = agent.target_bytes("d2")

    pushed = push(agent, out, "ps01", "d1", source)
    refused = push(agent, out, "ps01", "d2", source)

    assert pushed[0] == 0, pushed[2]
    assert agent.target_bytes("d1") == source.read_bytes()
    assert refused[0] == 1 and "FORBIDDEN" in refused[2]
    assert agent.target_bytes("d2") == vm2_before
    # The binding is kept in the agent's state: a restart does not forget it.
    agent.stop()
    agent.start()
    context = client_ssl_context(out / "ps01.crt", out / "ps01.key", out / "ca.crt")
    with pytest.raises(Forbidden):
        asyncio.run(put(context, agent, "d2"))
    assert agent.target_bytes("d2") == vm2_before


def push(
    agent: AgentProcess, tls: Path, name: str, disk: str, source: Path
) -> tuple[int, str, str]:
    """`mtagent push --mode full` of `source` to `disk` with the enrolled files in `tls`."""
    return cli(
        "push",
        "--server",
        agent.url,
        "--cert",
        tls / f"{name}.crt",
        "--key",
        tls / f"{name}.key",
        "--ca",
        tls / "ca.crt",
        "--disk",
        disk,
        "--source",
        source,
        "--mode",
        "full",
    )


def test_a_captured_exchange_does_not_reveal_the_passphrase(
    agent: AgentProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase, fingerprint = new_passphrase(agent, "vm1")
    parsed = Passphrase.parse(passphrase)
    sent = SentBytes(monkeypatch)

    code, _, err = enroll(agent, passphrase, fingerprint, "ps02", tmp_path / "tls")

    assert code == 0, err
    wire = sent.all
    assert b"POST /v1/enroll " in wire
    for form in (passphrase, parsed.text, parsed.text[5:], parsed.text.lower()):
        assert form.encode() not in wire
    key = (tmp_path / "tls" / "ps02.key").read_bytes()
    assert key not in wire and b"PRIVATE KEY" not in wire
    # Replaying the captured request is refused: its nonce was used once.
    body = json.loads(wire[wire.index(b"POST /v1/enroll ") :].split(b"\r\n\r\n", 1)[1])
    monkeypatch.undo()
    with pytest.raises(EnrollmentRefused):
        asyncio.run(ask_enroll(agent, fingerprint, EnrollRequest.from_json(body)))


async def ask_enroll(agent: AgentProcess, fingerprint: str, request: EnrollRequest) -> object:
    pin = bytes.fromhex(fingerprint)
    async with AgentClient(agent.url, pinned_ssl_context(), pinned_sha256=pin) as client:
        return await client.enroll(request)


def test_the_proof_differs_for_every_challenge(agent: AgentProcess) -> None:
    passphrase, fingerprint = new_passphrase(agent, "vm1")
    parsed = Passphrase.parse(passphrase)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ps03")]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )

    async def two_challenges() -> list[bytes]:
        pin = bytes.fromhex(fingerprint)
        async with AgentClient(agent.url, pinned_ssl_context(), pinned_sha256=pin) as client:
            proofs = []
            for _ in range(2):
                challenge = await client.enroll_challenge(parsed.enrollment)
                key = passphrase_key(parsed, challenge.salt, challenge.scrypt)
                proofs.append(enrollment_proof(key, challenge.nonce, csr))
            return proofs

    first, second = asyncio.run(two_challenges())

    assert first != second


def test_a_wrong_passphrase_is_refused_and_writes_nothing(
    agent: AgentProcess, tmp_path: Path
) -> None:
    right, fingerprint = new_passphrase(agent, "vm1")
    wrong = right[:6] + ("A" if right[6] != "A" else "B") + right[7:]

    code, _, err = enroll(agent, wrong, fingerprint, "ps04", tmp_path / "tls")

    assert code == 1
    assert err.startswith("mtagent: the agent refused: ENROLLMENT_REFUSED: ")
    assert err.count("\n") == 1
    assert not (tmp_path / "tls" / "ps04.crt").exists()
    wait_until(
        lambda: (
            "enroll POST /v1/enroll from (no certificate, 127.0.0.1): refused 403 "
            "ENROLLMENT_REFUSED" in agent.log()
        ),
        timeout=10,
        what="the refused attempt in the audit trail",
    )


def test_a_used_passphrase_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    passphrase, fingerprint = new_passphrase(agent, "vm1")
    assert enroll(agent, passphrase, fingerprint, "ps05", tmp_path / "a")[0] == 0

    code, _, err = enroll(agent, passphrase, fingerprint, "ps06", tmp_path / "b")

    assert code == 1
    assert "ENROLLMENT_USED" in err


def test_an_expired_passphrase_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    passphrase, fingerprint = new_passphrase(agent, "vm1", ttl="1ms")

    code, _, err = enroll(agent, passphrase, fingerprint, "ps07", tmp_path / "tls")

    assert code == 1
    assert "ENROLLMENT_EXPIRED" in err


def test_a_name_already_known_is_refused_and_the_passphrase_stays_good(
    agent: AgentProcess, tmp_path: Path
) -> None:
    passphrase, fingerprint = new_passphrase(agent, "vm1")

    code, _, err = enroll(agent, passphrase, fingerprint, "sender", tmp_path / "a")

    assert code == 1
    assert "SENDER_EXISTS" in err
    assert enroll(agent, passphrase, fingerprint, "ps08", tmp_path / "b")[0] == 0


def test_another_fingerprint_stops_the_client_before_it_sends_anything(
    agent: AgentProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase, _ = new_passphrase(agent, "vm1")
    sent = SentBytes(monkeypatch)

    code, _, err = enroll(agent, passphrase, "ab" * 32, "ps09", tmp_path / "tls")

    assert code == 1
    assert "fingerprint" in err and "not the agent it should be" in err
    assert sent.all == b""


def test_five_failed_proofs_lock_enrollment(tmp_path: Path) -> None:
    agent = enrolling_agent(tmp_path / "agent")
    try:
        right, fingerprint = new_passphrase(agent, "vm1")
        wrong = right[:6] + ("A" if right[6] != "A" else "B") + right[7:]
        for attempt in range(5):
            code, _, err = enroll(agent, wrong, fingerprint, "ps10", tmp_path / "tls")
            assert "ENROLLMENT_REFUSED" in err, attempt

        code, _, err = enroll(agent, right, fingerprint, "ps10", tmp_path / "tls")

        assert code == 1
        assert "ENROLLMENT_LOCKED" in err
        assert "enrollment locked" in agent.log()
        assert agent.metric("mtagent_enrollment_attempts_total", result="failed_proof") == 5
        assert agent.metric("mtagent_enrollment_attempts_total", result="locked") == 1
    finally:
        agent.stop()


def test_a_passphrase_needs_a_senders_table(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path, {"d1": 1 << 20})
    agent.enrollment_ca_key = agent.pki / "ca.key"
    agent.write_config()

    code, out, err = cli("certs", "passphrase", "--config", agent.config_path, "--groups", "g1")

    assert code == 1 and out == ""
    assert "has no [[senders]] table" in err


def test_an_enrolled_sender_is_revoked_with_the_certificate_the_agent_kept(
    tmp_path: Path,
) -> None:
    agent = enrolling_agent(tmp_path / "agent", crl=True)
    try:
        passphrase, fingerprint = new_passphrase(agent, "vm1")
        out = tmp_path / "tls"
        assert enroll(agent, passphrase, fingerprint, "ps11", out)[0] == 0
        kept = agent.workdir / "state" / "enrolled" / "ps11.crt"
        assert kept.read_bytes() == (out / "ps11.crt").read_bytes()

        code, _, err = cli("certs", "revoke", "--dir", agent.pki, "--name", "ps11", "--cert", kept)
        assert code == 0, err
        assert "reloaded" in agent.reload()

        context = client_ssl_context(out / "ps11.crt", out / "ps11.key", out / "ca.crt")
        with pytest.raises(TlsRefused):
            asyncio.run(put(context, agent, "d1"))
    finally:
        agent.stop()
