"""The data-port application served inside the test's own process, over real TLS on loopback:
for tests that add routes the agent does not have (yet), or read its log records whole.

Usage:
    served = InProcessAgent(AgentProcess.create(tmp_path, {...}))  # its config, pki, targets
    served.app.router.add_post(...)      # before start
    await served.start(); status, answer = await served.request("ps01", "GET", "/v1/info")
    await served.stop()
"""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.config import load_config
from agent.server.app import create_app
from agent.server.http_layer import AgentAppRunner
from agent.server.tls import server_ssl_context
from tests.support.agent_harness import BATCH_CONTENT, AgentProcess


class InProcessAgent:
    """The data-port application of `agent`'s configuration, served in this process."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.app = create_app(load_config(agent.config_path), CollectorRegistry())
        self.runner = AgentAppRunner(self.app, access_log=None)
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        ssl_context = server_ssl_context(load_config(self.agent.config_path).tls)
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        assert self.runner.server is not None and site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def request(
        self, name: str, method: str, path: str, body: bytes = b"{}"
    ) -> tuple[int, object]:
        """`method path` with `body` as client `name`: the status and the JSON answer (the raw
        bytes when the answer is not JSON)."""
        connector = aiohttp.TCPConnector(ssl=self.agent.ssl_context(name))
        async with (
            aiohttp.ClientSession(f"https://127.0.0.1:{self.port}", connector=connector) as s,
            s.request(method, path, data=body, headers=BATCH_CONTENT) as response,
        ):
            body = await response.read()
            return response.status, json.loads(body) if body.startswith(b"{") else body

    async def stop(self) -> None:
        await self.runner.cleanup()
