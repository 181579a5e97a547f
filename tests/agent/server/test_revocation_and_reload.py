"""Revocation and reload: a certificate in the CA's revocation list (`mtagent certs revoke`,
`[tls] crl`) is refused at the handshake; SIGHUP re-reads the certificates, the CA, the list and
`[[senders]]` without cutting what is in flight, and a reload that would fail changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.certs import CRL_FILE, issue_client, revoke_client
from protocol.client import TlsRefused
from tests.support.agent_harness import AgentProcess, cli
from tests.support.batches import resync_batch
from tests.support.waiting import wait_until_async

MiB = 1 << 20


@pytest.fixture
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent checking its CA's revocation list, in which `gone` is; `ps01` and `ps02` are
    good; the senders table lets ps01 and ps02 reach group g1."""
    agent = AgentProcess.create(tmp_path_factory.mktemp("revocation"), {"d0": 4 * MiB})
    for name in ("gone", "ps01", "ps02"):
        issue_client(agent.pki, name)
    revoke_client(agent.pki, "gone")
    agent.senders = [{"name": name, "groups": ["g1"]} for name in ("ps01", "ps02", "sender")]
    agent.crl = agent.pki / CRL_FILE
    agent.write_config()
    agent.start()
    yield agent
    agent.stop()


async def handshake(agent: AgentProcess, name: str) -> str:
    """ "ok" when client `name` gets /v1/info answered, "refused" when its handshake fails."""
    try:
        async with agent.sender_client(name=name) as client:
            await client.info()
    except TlsRefused:
        return "refused"
    return "ok"


async def test_a_revoked_certificate_is_refused_at_the_handshake(agent: AgentProcess) -> None:
    assert await handshake(agent, "gone") == "refused"
    assert await handshake(agent, "ps01") == "ok"


def test_certs_revoke_adds_to_the_list_and_says_so(agent: AgentProcess) -> None:
    code, out, err = cli("certs", "revoke", "--dir", agent.pki, "--name", "ps02")

    assert (code, err) == (0, "")
    assert "ps02" in out and "lists 2 certificate(s)" in out
    assert "was already revoked" in cli("certs", "revoke", "--dir", agent.pki, "--name", "gone")[1]


async def test_after_sighup_a_newly_revoked_certificate_is_refused_while_a_batch_goes_on(
    agent: AgentProcess,
) -> None:
    body = resync_batch("d0", 1, [(0, b"f" * 64 * 1024)])
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield body[:100]
        await release.wait()
        yield body[100:]

    in_flight = asyncio.create_task(agent.put_batch("d0", 1, held(), name="ps02"))
    await wait_until_async(
        lambda: agent.metric("mtagent_received_bytes_total", disk="d0") > 0,
        timeout=10,
        what="ps02's batch to be in flight",
    )
    revoke_client(agent.pki, "ps01")

    assert "reloaded" in await asyncio.to_thread(agent.reload)

    assert await handshake(agent, "ps01") == "refused"
    release.set()
    status, answer = await in_flight
    assert status == 200, answer


async def test_a_reload_with_a_bad_file_keeps_the_running_settings(agent: AgentProcess) -> None:
    config = agent.config_path.read_text()
    agent.config_path.write_text(config.replace("[tls]", "[tls"))  # not TOML any more
    try:
        assert "reload refused" in await asyncio.to_thread(agent.reload)
    finally:
        agent.config_path.write_text(config)
    (agent.pki / CRL_FILE).write_text("not a list\n")

    line = await asyncio.to_thread(agent.reload)

    assert "reload refused" in line and CRL_FILE in line
    assert await handshake(agent, "gone") == "refused"  # the old list still holds
    assert await handshake(agent, "ps01") == "ok"
    assert agent.metric("mtagent_config_reloads_total", result="refused") == 2


async def test_a_reload_applies_a_new_senders_table(agent: AgentProcess) -> None:
    disk_body = resync_batch("d0", 1, [(0, b"s" * 4096)])
    agent.senders = [{"name": "ps01", "groups": ["other"]}]
    agent.write_config()

    assert "reloaded" in await asyncio.to_thread(agent.reload)

    status, answer = await agent.put_batch("d0", 1, disk_body, name="ps01")
    assert (status, answer["error"]["code"]) == (403, "FORBIDDEN")
    status, answer = await agent.get_json("/v1/info", name="ps02")
    assert (status, answer["error"]["reason"]) == (403, "unknown_sender")
