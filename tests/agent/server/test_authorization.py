"""Who may do what: a sender reaches the disks of its own groups only, administrative routes need
the admin role, and every refusal is a 403 FORBIDDEN answered before anything is read or
written, counted and logged with the sender's name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import SenderConfig
from agent.server.authorization import (
    ENROLLMENT_ROUTES,
    REPLICATION_ROUTES,
    Refusal,
    Target,
    judge,
)
from tests.support.agent_harness import AgentProcess
from tests.support.batches import resync_batch
from tests.support.in_process_agent import InProcessAgent

MiB = 1 << 20
DISK = 4 * MiB
HASHES = {"offset": 0, "length": MiB, "chunk_bytes": 64 * 1024}
SENDERS: list[dict[str, object]] = [
    {"name": "ps01", "groups": ["vm1"], "role": "replicate"},
    {"name": "ops", "groups": ["vm1"], "role": "admin"},
    {"name": "root", "groups": ["*"], "role": "admin"},
]


def two_groups(workdir: Path) -> AgentProcess:
    """An agent with disk vm1-d0 in group vm1 and vm2-d0 in vm2, and SENDERS."""
    agent = AgentProcess.create(workdir, {"vm1-d0": DISK, "vm2-d0": DISK})
    agent.groups = {"vm1-d0": "vm1", "vm2-d0": "vm2"}
    agent.senders = SENDERS
    agent.write_config()
    return agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """The two-group agent, vm2-d0 replicated once (by root) so that it has a point."""
    agent = two_groups(tmp_path_factory.mktemp("authz"))
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
async def vm2_replicated(agent: AgentProcess) -> AgentProcess:
    """The agent, once root has replicated vm2-d0, so that it has a point."""
    _, disk = await agent.get_json("/v1/disks/vm2-d0", name="root")
    if disk["last_seq"] == 0:
        body = resync_batch("vm2-d0", 1, [(0, b"v" * 4096)])
        status, answer = await agent.put_batch("vm2-d0", 1, body, name="root")
        assert status == 200, answer
    return agent


def forbidden(status: int, answer: object) -> str:
    """The reason of a 403 FORBIDDEN answer; fails on any other answer."""
    assert status == 403, answer
    assert isinstance(answer, dict)
    assert answer["error"]["code"] == "FORBIDDEN"
    return str(answer["error"]["reason"])


async def test_a_sender_writes_a_disk_of_its_group(agent: AgentProcess) -> None:
    status, answer = await agent.put_batch(
        "vm1-d0", 1, resync_batch("vm1-d0", 1, [(0, b"a" * 4096)]), name="ps01"
    )

    assert status == 200, answer
    assert agent.target_bytes("vm1-d0")[:4096] == b"a" * 4096


async def test_a_sender_writing_a_disk_of_another_group_is_refused_and_nothing_changes(
    vm2_replicated: AgentProcess,
) -> None:
    agent = vm2_replicated
    before = (
        agent.target_bytes("vm2-d0"),
        await agent.get_json("/v1/disks/vm2-d0", name="root"),
        await agent.get_json("/v1/groups/vm2/recovery-points", name="root"),
        agent.metric("mtagent_received_bytes_total", disk="vm2-d0"),
    )
    refused = agent.metric("mtagent_forbidden_requests_total", reason="group")

    status, answer = await agent.put_batch(
        "vm2-d0", 2, resync_batch("vm2-d0", 2, [(0, b"x" * 4096)]), name="ps01"
    )

    assert forbidden(status, answer) == "group"
    assert "'vm2-d0'" in answer["error"]["message"] and "ps01" in answer["error"]["message"]
    after = (
        agent.target_bytes("vm2-d0"),
        await agent.get_json("/v1/disks/vm2-d0", name="root"),
        await agent.get_json("/v1/groups/vm2/recovery-points", name="root"),
        agent.metric("mtagent_received_bytes_total", disk="vm2-d0"),
    )
    assert after == before  # not a byte of the body was taken in
    assert agent.metric("mtagent_forbidden_requests_total", reason="group") == refused + 1


async def test_a_refusal_is_logged_with_the_sender_name(agent: AgentProcess) -> None:
    status, answer = await agent.put_batch(
        "vm2-d0", 7, resync_batch("vm2-d0", 7, [(0, b"y" * 512)]), name="ps01"
    )

    forbidden(status, answer)
    assert any(
        "/v1/disks/vm2-d0/batches/7 from ps01: refused 403 FORBIDDEN" in line
        for line in agent.log().splitlines()
    )


async def test_the_hashes_of_a_disk_of_another_group_are_refused(agent: AgentProcess) -> None:
    async with (
        agent.client("ps01") as session,
        session.post("/v1/disks/vm2-d0/hashes", json=HASHES) as response,
    ):
        assert forbidden(response.status, await response.json()) == "group"


async def test_a_sender_lists_only_the_disks_of_its_groups(agent: AgentProcess) -> None:
    _, mine = await agent.get_json("/v1/disks", name="ps01")
    _, everything = await agent.get_json("/v1/disks", name="root")

    assert [disk["id"] for disk in mine["disks"]] == ["vm1-d0"]
    assert sorted(disk["id"] for disk in everything["disks"]) == ["vm1-d0", "vm2-d0"]


@pytest.mark.parametrize(
    "path", ["/v1/disks/vm2-d0", "/v1/groups/vm2/recovery-points", "/v1/disks/no-such-disk"]
)
async def test_a_disk_or_group_outside_the_sender_groups_is_forbidden(
    agent: AgentProcess, path: str
) -> None:
    # A disk that does not exist looks the same: a sender learns nothing of other groups.
    assert forbidden(*await agent.get_json(path, name="ps01")) == "group"


async def test_a_sender_of_every_group_is_told_a_disk_does_not_exist(agent: AgentProcess) -> None:
    status, answer = await agent.get_json("/v1/disks/no-such-disk", name="root")

    assert (status, answer["error"]["code"]) == (404, "UNKNOWN_DISK")


async def test_a_certificate_without_a_senders_entry_is_refused_everything(
    agent: AgentProcess,
) -> None:
    refused = agent.metric("mtagent_forbidden_requests_total", reason="unknown_sender")

    assert forbidden(*await agent.get_json("/v1/info", name="stranger")) == "unknown_sender"
    assert agent.metric("mtagent_forbidden_requests_total", reason="unknown_sender") == (
        refused + 1
    )


async def test_sender_names_match_the_certificate_whatever_their_case(
    agent: AgentProcess,
) -> None:
    status, answer = await agent.get_json("/v1/disks", name="PS01")

    assert status == 200, answer
    assert [disk["id"] for disk in answer["disks"]] == ["vm1-d0"]


async def test_a_configuration_without_senders_is_open_and_says_so(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path, {"d0": DISK})
    agent.start()
    try:
        status, answer = await agent.get_json("/v1/disks", name="anyone")

        assert status == 200, answer
        assert agent.metric("mtagent_authorization_open") == 1
        assert "has no [[senders]]" in agent.log()
    finally:
        agent.stop()


async def test_a_configuration_with_senders_is_not_open(agent: AgentProcess) -> None:
    assert agent.metric("mtagent_authorization_open") == 0


# -- every route other than replication's is administrative, including routes added later ------


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[InProcessAgent]:
    served = InProcessAgent(two_groups(tmp_path))

    async def group_chore(request: web.Request) -> web.Response:
        return web.json_response({"done": request.match_info["group"]})

    async def whole_agent(request: web.Request) -> web.Response:
        return web.json_response({"done": True})

    # Beside the agent's own administrative routes (failover, reprotect): one more per kind.
    served.app.router.add_post("/v1/groups/{group}/chore", group_chore)
    served.app.router.add_post("/v1/maintenance", whole_agent)
    await served.start()
    yield served
    await served.stop()


def concrete(path: str) -> str:
    return path.format(disk="vm1-d0", group="vm1", seq="1")


async def test_every_route_outside_the_replication_table_is_refused_to_a_replicate_sender(
    in_process: InProcessAgent,
) -> None:
    administrative = [
        (route.method, route.resource.canonical)
        for route in in_process.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
        # Enrollment's routes are open to clients without a certificate (test_enrollment.py).
        if (route.method, route.resource.canonical) not in REPLICATION_ROUTES | ENROLLMENT_ROUTES
    ]
    assert ("POST", "/v1/groups/{group}/failover") in administrative

    for method, path in administrative:
        status, answer = await in_process.request("ps01", method, concrete(path))
        assert forbidden(status, answer) == "role", (method, path)


async def test_an_admin_calls_an_administrative_route_of_its_group(
    in_process: InProcessAgent,
) -> None:
    status, answer = await in_process.request("ops", "POST", "/v1/groups/vm1/chore")

    assert (status, answer) == (200, {"done": "vm1"})


async def test_an_admin_of_another_group_is_refused(in_process: InProcessAgent) -> None:
    status, answer = await in_process.request("ops", "POST", "/v1/groups/vm2/chore")

    assert forbidden(status, answer) == "group"


async def test_a_route_on_the_whole_agent_needs_an_admin_of_every_group(
    in_process: InProcessAgent,
) -> None:
    assert forbidden(*await in_process.request("ops", "POST", "/v1/maintenance")) == "group"
    assert await in_process.request("root", "POST", "/v1/maintenance") == (200, {"done": True})


# -- the policy alone: who may call what, as a table ------------------------------------------

PS01 = SenderConfig("ps01", frozenset({"vm1"}), "replicate")
OPS = SenderConfig("ops", frozenset({"vm1"}), "admin")
ROOT = SenderConfig("root", frozenset({"*"}), "admin")


@pytest.mark.parametrize(
    ("sender", "replication", "target", "refused"),
    [
        (PS01, True, Target("vm1-d0", "vm1"), None),
        (PS01, True, Target("vm2-d0", "vm2"), Refusal.GROUP),
        (PS01, True, Target("ghost", None), Refusal.GROUP),
        (ROOT, True, Target("ghost", None), None),  # the handler says UNKNOWN_DISK
        (PS01, True, Target(group="vm1"), None),
        (PS01, True, Target(group="vm2"), Refusal.GROUP),
        (PS01, True, Target(), None),  # info, the listing
        (PS01, False, Target(group="vm1"), Refusal.ROLE),
        (OPS, False, Target(group="vm1"), None),
        (OPS, False, Target(group="vm2"), Refusal.GROUP),
        (OPS, False, Target(), Refusal.GROUP),  # the whole agent
        (ROOT, False, Target(), None),
        (None, True, Target(), Refusal.UNKNOWN_SENDER),
    ],
)
def test_judge(
    sender: SenderConfig | None, replication: bool, target: Target, refused: Refusal | None
) -> None:
    denial = judge(sender, "someone", replication=replication, target=target)

    assert (denial.reason if denial else None) == refused
