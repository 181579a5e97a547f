"""The documents ship with the code and stay true to it: every error code the agent can send is in
docs/protocol.md with its status, and the README links only inside the repository."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol.errors
from protocol.decoder import lz4_payload_bound
from protocol.errors import ProtocolError
from tests.support.agent_harness import AgentProcess

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "docs" / "protocol.md"
# [text](target) of Markdown, the target up to a space or the closing parenthesis.
LINK = re.compile(r"\]\(([^)\s]+)")


def documented(status: int, code: str) -> bool:
    """Whether docs/protocol.md's table of error codes has a row for `code` with `status`."""
    row = re.compile(rf"^\| {status} \| `{re.escape(code)}` \|", re.MULTILINE)
    return row.search(PROTOCOL.read_text()) is not None


def protocol_errors() -> list[type[ProtocolError]]:
    """Every ProtocolError subclass of protocol/errors.py the agent can send, at any depth."""
    found: list[type[ProtocolError]] = []
    todo = list(ProtocolError.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        # Statuses below 400 are the client's own (BAD_DOCUMENT): the agent never sends them.
        if inspect.getmodule(cls) is protocol.errors and cls.status >= 400:
            found.append(cls)
    return sorted(found, key=lambda cls: cls.code)


@pytest.mark.parametrize("error", protocol_errors(), ids=lambda cls: cls.code)
def test_every_protocol_error_is_in_the_contract_with_its_status(
    error: type[ProtocolError],
) -> None:
    assert documented(error.status, error.code)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess.create(tmp_path_factory.mktemp("docs"), {"d0": 1 << 20})
    agent.start()
    yield agent
    agent.stop()


# Requests that aiohttp refuses before or while a handler runs; the error middleware turns each
# refusal into a JSON code of its own.
HTTP_REFUSALS = {
    "no such endpoint": ("GET", "/v1/no-such-endpoint", b""),
    "method not taken": ("DELETE", "/v1/info", b""),
    "request body over the limit": ("POST", "/v1/disks/d0/hashes", bytes(2 << 20)),
    "header line over the limit": ("GET", "/v1/info", b""),
}
# Headers of each case beyond aiohttp's own.
HTTP_REFUSAL_HEADERS = {"header line over the limit": {"X-Filler": "a" * 20000}}


async def refusal(
    agent: AgentProcess, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    async with (
        agent.client() as session,
        session.request(method, path, data=body, headers=headers) as response,
    ):
        answer = await response.json()
        return response.status, answer["error"]["code"]


@pytest.mark.parametrize("case", HTTP_REFUSALS)
def test_every_http_refusal_the_agent_sends_is_in_the_contract(
    agent: AgentProcess, case: str
) -> None:
    status, code = asyncio.run(
        refusal(agent, *HTTP_REFUSALS[case], HTTP_REFUSAL_HEADERS.get(case, {}))
    )
    assert status >= 400
    assert documented(status, code), f"{status} {code}"


def test_the_contract_states_the_lz4_bound_the_decoder_applies() -> None:
    text = PROTOCOL.read_text()
    assert "LZ4_COMPRESSBOUND(length) = length + floor(length / 255) + 16" in text
    assert f"{lz4_payload_bound(64 * 1024):,}" in text


def links(document: Path) -> list[str]:
    return [target for target in LINK.findall(document.read_text()) if "://" not in target]


def test_the_readme_links_nothing_outside_the_repository() -> None:
    outside = [
        target
        for target in links(REPO / "README.md")
        if target.startswith("/") or REPO not in (REPO / target).resolve().parents
    ]
    assert outside == []


@pytest.mark.parametrize("document", ["README.md", "docs/protocol.md", "docs/design.md"])
def test_every_link_of_a_document_leads_to_a_file_of_the_repository(document: str) -> None:
    here = (REPO / document).parent
    broken = [
        target
        for target in links(REPO / document)
        if not (here / target.split("#")[0]).exists()
        if not target.startswith("#")
    ]
    assert broken == []


def test_the_client_side_document_error_is_explained_in_the_contract() -> None:
    assert "`BAD_DOCUMENT`" in PROTOCOL.read_text()
