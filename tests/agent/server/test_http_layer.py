"""aiohttp's own answers are JSON too: a request that is not valid HTTP/1.1 (a bad request line,
an over-long header) on either listener is a 400 BAD_HTTP_REQUEST body, logged in one line
without a traceback; a failure inside the agent is a 500 INTERNAL body."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.agent_harness import AgentProcess
from tests.support.in_process_agent import InProcessAgent

NOT_HTTP = b"HELLO THERE\r\n\r\n"
LONG_HEADER = b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"


DISKS = ["d0"]
DISK_BYTES = 1 << 20


@pytest.fixture
def agent(shared_agent: AgentProcess) -> AgentProcess:
    return shared_agent


def raw_exchange(port: int, request: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Send `request` bytes as they are (over TLS with `context`); everything that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = raw if context is None else context.wrap_socket(raw, server_hostname="127.0.0.1")
        with sock:
            sock.sendall(request)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received


def json_answer(answer: bytes) -> tuple[int, str, dict[str, object]]:
    """(status, Content-Type, JSON body) of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    content_type = headers["Content-Type"].split(";")[0]
    return int(lines[0].split()[1]), content_type, json.loads(body)


@pytest.mark.parametrize("request_bytes", [NOT_HTTP, LONG_HEADER], ids=["not-http", "long-header"])
def test_the_data_port_answers_a_malformed_request_with_json_and_one_log_line(
    agent: AgentProcess, request_bytes: bytes
) -> None:
    log_before = len(agent.log())

    answer = raw_exchange(agent.port, request_bytes, agent.ssl_context())

    status, content_type, body = json_answer(answer)
    assert (status, content_type) == (400, "application/json")
    assert body["error"]["code"] == "BAD_HTTP_REQUEST"  # type: ignore[index]
    logged = agent.log()[log_before:]
    assert "Traceback" not in logged
    assert len([line for line in logged.splitlines() if "BAD_HTTP_REQUEST" in line]) == 1


def test_the_metrics_port_answers_a_malformed_request_with_json(agent: AgentProcess) -> None:
    status, content_type, body = json_answer(raw_exchange(agent.metrics_port, NOT_HTTP))

    assert (status, content_type) == (400, "application/json")
    assert body["error"]["code"] == "BAD_HTTP_REQUEST"  # type: ignore[index]


async def test_a_failure_inside_the_agent_is_a_json_500_logged_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = InProcessAgent(AgentProcess.create(tmp_path, {"d0": 1 << 20}))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    served.app.router.add_get("/v1/broken", broken)
    await served.start()
    try:
        status, answer = await served.request("sender", "GET", "/v1/broken")
    finally:
        await served.stop()

    assert status == 500
    assert answer["error"]["code"] == "INTERNAL"  # type: ignore[index]
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["a bug"]
