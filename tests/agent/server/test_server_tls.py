"""Mutual TLS on the data port: only clients of our CA, only TLS 1.2 or newer, never plain HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from agent.certs import init_pki, issue_client
from protocol.client import AgentClient, TlsRefused, client_ssl_context
from tests.support.agent_harness import AgentProcess, run_mtagent
from tests.support.batches import batch
from tests.support.waiting import wait_until

REQUEST = b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path_factory.mktemp("tls"), {"d0": 1 << 20})
    agent.start()
    yield agent
    agent.stop()


def exchange(agent: AgentProcess, context: ssl.SSLContext) -> bytes:
    """Send a GET /v1/info over TLS with `context`; what came back (b"" if nothing)."""
    with (
        socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(REQUEST)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        return received


def server_trusting_context(agent: AgentProcess) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(agent.ca))
    return context


def test_a_client_of_our_ca_gets_an_answer(agent: AgentProcess) -> None:
    assert exchange(agent, agent.ssl_context()).startswith(b"HTTP/1.1 200")


def test_a_client_without_certificate_is_refused_before_its_request_is_read(
    agent: AgentProcess,
) -> None:
    # The handshake lets it in (a process server enrolling has no certificate yet); its request
    # is answered 401 before the agent reads it.
    answer = exchange(agent, server_trusting_context(agent))

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert json.loads(body)["error"]["code"] == "CLIENT_CERTIFICATE_REQUIRED"


def test_a_batch_without_certificate_touches_nothing(agent: AgentProcess) -> None:
    before = agent.target_bytes("d0")
    body = batch("d0", 1, [(0, b"\xee" * 4096)])
    request = (
        b"PUT /v1/disks/d0/batches/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with (
        socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw,
        server_trusting_context(agent).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 401")
    assert b"CLIENT_CERTIFICATE_REQUIRED" in answer
    assert agent.target_bytes("d0") == before


def test_a_certificate_from_another_ca_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    init_pki(foreign, ["127.0.0.1"])
    cert, key = issue_client(foreign, "intruder")
    context = client_ssl_context(cert, key, agent.ca)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = exchange(agent, context)
        assert answer == b""
        raise ConnectionError("closed without an answer")


def test_an_expired_client_certificate_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    import shutil

    pki = tmp_path / "pki"
    shutil.copytree(agent.pki, pki)
    cert, key = issue_client(pki, "stale", not_valid_after=yesterday)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = exchange(agent, client_ssl_context(cert, key, agent.ca))
        assert answer == b""
        raise ConnectionError("closed without an answer")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(agent: AgentProcess) -> None:
    context = agent.ssl_context()
    # Lower the client's own floor so that it is the agent that refuses.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        exchange(agent, context)


def test_tls_1_2_is_accepted(agent: AgentProcess) -> None:
    context = agent.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert exchange(agent, context).startswith(b"HTTP/1.1 200")


def test_tls_1_3_is_what_a_modern_client_gets(agent: AgentProcess) -> None:
    with (
        socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw,
        agent.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256"]
)
def test_tls_1_2_without_forward_secrecy_or_aead_is_refused(agent: AgentProcess, suite: str):
    context = agent.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")  # the client offers only this CBC or RSA-kx suite
    with pytest.raises(ssl.SSLError):
        exchange(agent, context)


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_tls_1_2_with_an_ecdhe_aead_suite_is_accepted(agent: AgentProcess, suite: str) -> None:
    context = agent.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    assert exchange(agent, context).startswith(b"HTTP/1.1 200")


def test_the_agent_refuses_a_server_key_others_can_read(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path, {"d0": 1 << 20})
    key = agent.pki / "server.key"
    key.chmod(0o640)

    result = run_mtagent("serve", "--config", agent.config_path, timeout=60)

    assert result.returncode == 1
    assert result.stderr == (
        f"mtagent: server key {key} has mode 0640: its group or others may read it; "
        f"run `chmod 600 {key}` (owned by the user the agent runs as)\n"
    )


def test_the_agent_tells_when_its_certificates_expire(agent: AgentProcess) -> None:
    for role, path in (("server", agent.pki / "server.crt"), ("client_ca", agent.ca)):
        expiry = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
        value = agent.metric("mtagent_certificate_expiry_timestamp_seconds", certificate=role)
        assert value == expiry.timestamp(), role


def test_plain_http_on_the_data_port_gets_no_answer(agent: AgentProcess) -> None:
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw:
        raw.sendall(REQUEST)
        received = b""
        try:
            while chunk := raw.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/1.1 200" not in received
    assert b'"agent"' not in received


REJECTED_BY_CLIENT = {"reason": "rejected_by_client"}
HANDSHAKE_FAILURES = "mtagent_tls_handshake_failures_total"


def test_the_mtagent_client_refusing_the_agents_certificate_is_counted_as_rejected_by_client(
    agent: AgentProcess, tmp_path: Path
) -> None:
    init_pki(tmp_path / "other", ["127.0.0.1"])
    context = client_ssl_context(agent.cert, agent.key, tmp_path / "other" / "ca.crt")
    before = agent.metric(HANDSHAKE_FAILURES, **REJECTED_BY_CLIENT)

    async def ask() -> None:
        async with AgentClient(agent.url, context, timeout=10) as client:
            await client.info()

    with pytest.raises(TlsRefused, match="certificate verify failed"):
        asyncio.run(ask())

    wait_until(
        lambda: agent.metric(HANDSHAKE_FAILURES, **REJECTED_BY_CLIENT) == before + 1,
        timeout=5,
        what="the client's refusal counted as rejected_by_client",
    )


def test_a_python_ssl_client_trusting_another_ca_is_counted_as_rejected_by_client(
    agent: AgentProcess, tmp_path: Path
) -> None:
    init_pki(tmp_path / "other", ["127.0.0.1"])
    context = ssl.create_default_context(cafile=str(tmp_path / "other" / "ca.crt"))
    before = agent.metric(HANDSHAKE_FAILURES, **REJECTED_BY_CLIENT)

    with pytest.raises(ssl.SSLCertVerificationError):
        exchange(agent, context)

    wait_until(
        lambda: agent.metric(HANDSHAKE_FAILURES, **REJECTED_BY_CLIENT) == before + 1,
        timeout=5,
        what="the client's refusal counted as rejected_by_client",
    )
