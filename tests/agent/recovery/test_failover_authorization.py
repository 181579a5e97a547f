"""Failover and reprotect are administrative: only an admin of the group may call them, and a
refusal changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch

MiB = 1 << 20
SENDERS: list[dict[str, object]] = [
    {"name": "ps01", "groups": ["vm1"], "role": "replicate"},
    {"name": "ops", "groups": ["vm1"], "role": "admin"},
]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path, {"vm1-d0": 4 * MiB, "vm2-d0": 4 * MiB})
    agent.groups = {"vm1-d0": "vm1", "vm2-d0": "vm2"}
    agent.senders = SENDERS
    agent.write_config()
    agent.start()
    yield agent
    agent.stop()


async def replicated(agent: AgentProcess) -> None:
    body = resync_batch("vm1-d0", 1, [(0, b"a" * 4096)])
    status, answer = await agent.put_batch("vm1-d0", 1, body, name="ps01")
    assert status == 200, answer


async def test_a_replicate_sender_cannot_fail_its_group_over(agent: AgentProcess) -> None:
    await replicated(agent)

    status, answer = await agent.post_json(
        "/v1/groups/vm1/failover", {"point": "latest"}, name="ps01"
    )

    assert status == 403 and answer["error"]["code"] == "FORBIDDEN", answer
    assert (await agent.get_json("/v1/disks/vm1-d0", name="ops"))[1]["state"] == "ok"
    body = resync_batch("vm1-d0", 2, [(4096, b"b" * 4096)])
    assert (await agent.put_batch("vm1-d0", 2, body, name="ps01"))[0] == 200


async def test_an_admin_of_another_group_cannot_fail_it_over(agent: AgentProcess) -> None:
    status, answer = await agent.post_json(
        "/v1/groups/vm2/failover", {"point": "latest"}, name="ops"
    )

    assert status == 403 and answer["error"]["reason"] == "group", answer


async def test_an_admin_of_the_group_fails_it_over_and_reprotects_it(agent: AgentProcess) -> None:
    await replicated(agent)

    status, answer = await agent.post_json(
        "/v1/groups/vm1/failover", {"point": "latest"}, name="ops"
    )
    assert status == 200, answer
    assert answer["phase"] == "released"
    assert (await agent.get_json("/v1/disks/vm1-d0", name="ops"))[1]["state"] == "failed_over"

    status, answer = await agent.post_json("/v1/groups/vm1/reprotect", {}, name="ps01")
    assert status == 403, answer
    status, answer = await agent.post_json("/v1/groups/vm1/reprotect", {}, name="ops")
    assert status == 200 and answer["phase"] == "reprotected", answer
