"""The agent's metrics as Prometheus sees them: a real Prometheus server scrapes a real agent
while replication runs; promtool finds nothing wrong with the exposition; the alerts and the
dashboard ask only for metrics that exist."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.certs import init_pki, issue_client
from agent.sender.push import push_image
from protocol.client import client_ssl_context
from tests.support.agent_harness import REPO, AgentProcess, free_port
from tests.support.batches import batch, resync_batch
from tests.support.waiting import wait_until, wait_until_async

MiB = 1 << 20
ALERTS = REPO / "deploy" / "prometheus" / "mtagent-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "mtagent-dashboard.json"

# Counters that appear at their first increment (a hash comparison), so the busy agent below
# need not show them.
APPEAR_WHEN_USED = {"mtagent_resync_compared_bytes_total"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"{tool} is not installed: scripts/test.sh installs it (Debian package prometheus)"
        )
    return path


async def load(agent: AgentProcess) -> None:
    """Two batches acknowledged on d0, one refused on d1."""
    assert (await agent.put_batch("d0", 1, resync_batch("d0", 1, [(0, b"a" * 4096)])))[0] == 200
    d0_2 = batch("d0", 2, [(4096, b"b" * 4096), (65536, 8192)])
    assert (await agent.put_batch("d0", 2, d0_2))[0] == 200
    d1_1 = batch("d1", 1, [(0, b"c" * 512)])
    assert (await agent.put_batch("d1", 1, d1_1))[0] == 409  # no resync yet


@pytest.fixture(scope="module")
def busy_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent that has seen a bit of everything: batches, a refusal, a failed handshake."""
    agent = AgentProcess.create(tmp_path_factory.mktemp("agent"), {"d0": 4 * MiB, "d1": 4 * MiB})
    agent.start()
    try:
        asyncio.run(load(agent))
        # A sender without a client certificate: refused 401 after the handshake, and counted
        # with the failed handshakes as no_client_certificate.
        refused_without_certificate(agent, ssl.create_default_context(cafile=str(agent.ca)))
        yield agent
    finally:
        agent.stop()


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample of an exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def family_names(text: str) -> set[str]:
    return {key.partition("{")[0] for key in samples(text)}


def test_promtool_finds_nothing_wrong_with_the_metrics(busy_agent: AgentProcess) -> None:
    result = subprocess.run(
        [require("promtool"), "check", "metrics"],
        input=busy_agent.metrics_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_metrics_answer_what_an_operator_asks(busy_agent: AgentProcess) -> None:
    values = samples(busy_agent.metrics_text())
    assert values['mtagent_applied_bytes_total{disk="d0"}'] == 4096 + 4096 + 8192
    assert values['mtagent_batches_total{disk="d0"}'] == 2
    assert values['mtagent_received_bytes_total{disk="d1"}'] > 0
    assert values['mtagent_rejected_batches_total{code="RESYNC_REQUIRED",disk="d1"}'] == 1
    assert values['mtagent_checksum_failures_total{disk="d0"}'] == 0
    assert values['mtagent_batch_apply_seconds_count{disk="d0"}'] == 2
    assert values['mtagent_disk_last_seq{disk="d0"}'] == 2
    assert values['mtagent_disk_rpo_seconds{disk="d0"}'] > 0
    assert values['mtagent_disk_state{disk="d0",state="ok"}'] == 1
    assert values['mtagent_disks{state="ok"}'] == 1
    assert values['mtagent_disks{state="resync_required"}'] == 1
    assert values['mtagent_disks{state="missing"}'] == 0
    assert values['mtagent_disk_info{disk="d1",group="g1"}'] == 1
    assert values['mtagent_tls_handshake_failures_total{reason="no_client_certificate"}'] == 1
    assert values["mtagent_open_connections"] == 0
    assert values["mtagent_retention_window_target_seconds"] == 24 * 3600
    build = [key for key in values if key.startswith("mtagent_build_info{")]
    assert len(build) == 1 and 'version="' in build[0] and 'protocol="1"' in build[0]
    assert values["process_resident_memory_bytes"] > 0


def refused_without_certificate(agent: AgentProcess, context: ssl.SSLContext) -> None:
    with (
        socket.create_connection(("127.0.0.1", agent.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /v1/info HTTP/1.1\r\nHost: agent\r\n\r\n")
        assert tls.recv(12) == b"HTTP/1.1 401"


def handshake(agent: AgentProcess, context: ssl.SSLContext | None) -> None:
    """Connect to the data port and ask for /v1/info (over TLS if `context`), expecting refusal."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as raw:
        if context is None:
            raw.sendall(b"GET /v1/info HTTP/1.1\r\nHost: agent\r\n\r\n")
            raw.recv(100)
            return
        with pytest.raises((ssl.SSLError, ConnectionError)):  # noqa: SIM117 - raises while wrapping
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /v1/info HTTP/1.1\r\nHost: agent\r\n\r\n")
                if not tls.recv(1):  # TLS 1.3: the refusal arrives after the client's handshake
                    raise ConnectionError("closed by the agent")


def test_failed_handshakes_are_counted_by_reason(busy_agent: AgentProcess, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger-pki"
    init_pki(stranger, ["127.0.0.1"])
    issue_client(stranger, "impostor")
    # A client certificate from another CA; a client that does not trust the agent; plain HTTP.
    handshake(
        busy_agent,
        client_ssl_context(stranger / "impostor.crt", stranger / "impostor.key", busy_agent.ca),
    )
    handshake(busy_agent, client_ssl_context(busy_agent.cert, busy_agent.key, stranger / "ca.crt"))
    handshake(busy_agent, None)
    expected = {
        "no_client_certificate": 1,  # the busy agent's own
        "client_certificate_rejected": 1,
        "rejected_by_client": 1,
        "protocol": 1,
    }
    counted: dict[str, float] = {}

    def counted_as_expected() -> bool:
        values = samples(busy_agent.metrics_text())
        counted.update(
            (reason, values[f'mtagent_tls_handshake_failures_total{{reason="{reason}"}}'])
            for reason in expected
        )
        return counted == expected

    # The agent may read a client's alert after the client has moved on.
    wait_until(
        counted_as_expected,
        timeout=5,
        what=lambda: f"the failed handshakes counted as {expected}, counted {counted}",
    )


def queried_metrics(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", without_strings))
    return {w for w in words if w.startswith(("mtagent_", "process_")) or w == "up"}


def exposed_names(text: str) -> set[str]:
    names = family_names(text)
    return names | {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


def test_alerts_and_dashboard_ask_only_for_metrics_that_exist(busy_agent: AgentProcess) -> None:
    known = exposed_names(busy_agent.metrics_text()) | APPEAR_WHEN_USED | {"up"}
    expressions = re.findall(r"expr: >-\n((?:\s{10}.*\n)+)|expr: (.*)\n", ALERTS.read_text())
    rules = [block or line for block, line in expressions]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(rules) >= 10 and len(panels) >= 20
    for expression in rules + panels:
        unknown = queried_metrics(expression) - known
        assert not unknown, f"{expression!r} asks for {sorted(unknown)}"


# -- a real Prometheus server ------------------------------------------------------------


class PrometheusServer:
    """`prometheus` on loopback scraping one agent every second, its data in a temp dir."""

    def __init__(self, workdir: Path, metrics_port: int) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(ALERTS))}]\n"
            "scrape_configs:\n"
            "  - job_name: mtagent\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n"
        )
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    require("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1):
                    return True
            except OSError:
                return False

        wait_until(
            ready,
            timeout=timeout,
            interval=0.1,
            what=lambda: f"prometheus to be ready:\n{self.log.read_text()}",
        )

    def wait_scraping(self, timeout: float = 30) -> None:
        """Until the agent has been scraped once (service discovery takes a few seconds)."""
        wait_until(
            lambda: self.value('up{job="mtagent"}') == 1,
            timeout=timeout,
            interval=0.2,
            what=lambda: f"prometheus to scrape the agent:\n{self.log.read_text()}",
        )

    def value(self, query: str) -> float | None:
        result = self.api("/api/v1/query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def replicate(agent: AgentProcess, source: Path, seconds: float) -> int:
    """A full push, then a delta push every half second for `seconds`: what a process server
    does. Returns the disk bytes acknowledged."""
    base = source.with_suffix(".base")
    sent = 0
    async with agent.sender_client() as client:

        async def push(mode: str) -> int:
            result = await push_image(
                client,
                "d0",
                source,
                mode=mode,
                base=base if mode == "delta" else None,
                frame_bytes=MiB,
                batch_bytes=2 * MiB,
                compress=True,
                tag=None,
                retries=3,
                progress=None,
            )
            return result.disk_bytes

        sent += await push("full")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            shutil.copyfile(source, base)
            with open(source, "r+b") as f:  # the protected machine writes 1 MiB
                f.seek(os.urandom(1)[0] % 16 * MiB)
                f.write(os.urandom(MiB))
            sent += await push("delta")
            await asyncio.sleep(0.5)  # the cadence of a process server, not a wait
    return sent


async def test_prometheus_scrapes_the_agent_and_sees_applied_bytes_grow(tmp_path: Path) -> None:
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 16 * MiB})
    agent.start()
    prometheus = PrometheusServer(tmp_path, agent.metrics_port)
    try:
        await asyncio.to_thread(prometheus.wait_ready)
        await asyncio.to_thread(prometheus.wait_scraping)
        source = tmp_path / "source.img"
        source.write_bytes(os.urandom(16 * MiB))
        query = 'mtagent_applied_bytes_total{job="mtagent", disk="d0"}'
        seen: list[float] = []

        async def watch() -> None:
            while True:
                value = await asyncio.to_thread(prometheus.value, query)
                if value is not None and (not seen or value != seen[-1]):
                    seen.append(value)
                await asyncio.sleep(0.25)  # a sampling rate: each value is kept, not waited on

        watching = asyncio.create_task(watch())
        try:
            sent = await replicate(agent, source, seconds=3)
            await wait_until_async(
                lambda: seen and seen[-1] == sent,
                timeout=10,
                interval=0.25,
                what=lambda: f"the last scrape after the last push ({sent}), seen {seen}",
            )
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        assert len(seen) >= 3, f"Prometheus saw {seen}"
        assert seen == sorted(seen) and seen[-1] == sent
        groups = prometheus.api("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) >= 10
        assert all(rule["health"] == "ok" for rule in rules), rules
        # Every dashboard query is PromQL this Prometheus evaluates, with Grafana's variables
        # as Grafana fills them in.
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                query = target["expr"].replace("$__rate_interval", "1m")
                query = query.replace("$instance", ".*").replace("$disk", ".*")
                prometheus.api("/api/v1/query", query=query)
    finally:
        prometheus.stop()
        agent.stop()
