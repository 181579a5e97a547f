"""The audit trail: each batch, hashes request and administrative call, accepted or refused, is
one log record with who sent it and what came of it, as structured fields; so is every refusal
by authorization. Listings that succeed are not audited."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.log_fields import record_fields
from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch
from tests.support.in_process_agent import InProcessAgent

MiB = 1 << 20
HASHES = json.dumps({"offset": 0, "length": MiB, "chunk_bytes": 64 * 1024}).encode()


@pytest.fixture
async def served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[InProcessAgent]:
    """d0 (group vm1) and d1 (vm2) for sender ps01 (vm1) and admin ops (every group), with an
    administrative route; audit records captured from info up."""
    agent = AgentProcess.create(tmp_path, {"d0": 4 * MiB, "d1": 4 * MiB})
    agent.groups = {"d0": "vm1", "d1": "vm2"}
    agent.senders = [
        {"name": "ps01", "groups": ["vm1"], "role": "replicate"},
        {"name": "ops", "groups": ["*"], "role": "admin"},
    ]
    agent.write_config()
    in_process = InProcessAgent(agent)

    # An administrative route beside the agent's own (a stand-in that answers at once).
    async def chore(request: web.Request) -> web.Response:
        return web.json_response({})

    in_process.app.router.add_post("/v1/groups/{group}/chore", chore)
    await in_process.start()
    caplog.set_level(logging.INFO, logger="mtagent.audit")
    yield in_process
    await in_process.stop()


def audited(caplog: pytest.LogCaptureFixture) -> list[tuple[int, dict[str, str]]]:
    """(level, fields) of each audit record so far."""
    return [(r.levelno, record_fields(r)) for r in caplog.records if r.name == "mtagent.audit"]


async def test_an_accepted_batch_is_one_record_with_sender_disk_seq_and_bytes(
    served: InProcessAgent, caplog: pytest.LogCaptureFixture
) -> None:
    body = resync_batch("d0", 1, [(0, b"a" * 4096)])

    status, _ = await served.request("ps01", "PUT", "/v1/disks/d0/batches/1", body)

    assert status == 200
    assert audited(caplog) == [
        (
            logging.INFO,
            {
                "AUDIT": "1",
                "ACTION": "batch",
                "SENDER": "ps01",
                "DISK": "d0",
                "SEQ": "1",
                "BYTES": str(len(body)),
                "RESULT": "accepted",
                "STATUS": "200",
                "REMOTE": "127.0.0.1",
            },
        )
    ]


async def test_a_refused_batch_is_one_record_with_its_code(
    served: InProcessAgent, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await served.request(
        "ps01", "PUT", "/v1/disks/d0/batches/5", resync_batch("d0", 5, [(0, b"a" * 512)])
    )

    assert status == 409
    [(level, fields)] = audited(caplog)
    assert level == logging.INFO
    assert (fields["RESULT"], fields["CODE"], fields["STATUS"]) == (
        "refused",
        "SEQUENCE_GAP",
        "409",
    )
    assert (fields["SENDER"], fields["DISK"], fields["SEQ"]) == ("ps01", "d0", "5")


async def test_a_hashes_request_is_audited(
    served: InProcessAgent, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await served.request("ps01", "POST", "/v1/disks/d0/hashes", HASHES)

    assert status == 200
    [(_, fields)] = audited(caplog)
    assert (fields["ACTION"], fields["DISK"], fields["RESULT"]) == ("hashes", "d0", "accepted")


async def test_an_administrative_call_is_audited(
    served: InProcessAgent, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await served.request("ops", "POST", "/v1/groups/vm2/chore")

    assert status == 200
    [(_, fields)] = audited(caplog)
    assert (fields["ACTION"], fields["SENDER"], fields["GROUP"]) == ("admin", "ops", "vm2")


async def test_a_refusal_by_authorization_is_one_warning_even_for_a_listing(
    served: InProcessAgent, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await served.request("ps01", "GET", "/v1/disks/d1")

    assert status == 403
    [(level, fields)] = audited(caplog)
    assert level == logging.WARNING
    assert (fields["SENDER"], fields["DISK"], fields["CODE"]) == ("ps01", "d1", "FORBIDDEN")


async def test_listings_that_succeed_are_not_audited(
    served: InProcessAgent, caplog: pytest.LogCaptureFixture
) -> None:
    for path in ("/v1/info", "/v1/disks", "/v1/disks/d0", "/v1/groups/vm1/recovery-points"):
        status, _ = await served.request("ps01", "GET", path)
        assert status == 200, path

    assert audited(caplog) == []
