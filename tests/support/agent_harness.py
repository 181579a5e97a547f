"""A real agent for integration tests: certificates, config, `mtagent serve` as a subprocess.

Usage:
    agent = AgentProcess.create(tmp_path, {"d0": 8 << 20})  # id -> size (new file) or a Path
    agent.start()                       # returns when the agent answers on both listeners
    async with agent.client() as client: ...  # aiohttp session with the client certificate
    status, answer = await agent.put_batch("d0", 1, body)  # bytes or an async iterable
    await agent.disk("d0"); await agent.all_disks(); await agent.points("g1")
    code, out, err = agent.cli("check")  # the CLI in-process, on this agent's config
    agent.kill(); agent.start()         # SIGKILL and restart on the same state
    agent.stop()                        # SIGTERM; also done by the `agent` fixture's teardown
Everything lives under tmp_path; no global state, so tests can run side by side.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.certs import init_pki, issue_client
from agent.commands.cli import main
from protocol.client import AgentClient, client_ssl_context
from tests.support.waiting import wait_until, wait_until_async

REPO = Path(__file__).resolve().parents[2]
BATCH_CONTENT = {"Content-Type": "application/x-mtagent-batch"}
SAMPLE_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
READY_LINE = re.compile(r"data on https://[^:]+:(\d+), metrics on http://[^:]+:(\d+)")


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AgentProcess:
    """One `mtagent serve` with its own certificates, config, state and targets."""

    workdir: Path
    disks: dict[str, Path]
    port: int
    metrics_port: int
    server_options: dict[str, object] = field(default_factory=dict)
    retention_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    # Extra environment of the agent process (a umockdev testbed's: tests/support/udev_testbed.py).
    env: dict[str, str] = field(default_factory=dict)
    # Extra [retention] keys (window, max_bytes, ...): set, then write_config() again.
    retention_options: dict[str, object] = field(default_factory=dict)
    # Each disk's consistency group where it is not "g1": set, then write_config() again.
    groups: dict[str, str] = field(default_factory=dict)
    # The [[senders]] table (name, groups, role), None for none: set, then write_config() again.
    senders: list[dict[str, object]] | None = None
    # [tls] crl, None for none: set, then write_config() again.
    crl: Path | None = None
    # [tls] enrollment_ca_key, None for none: set, then write_config() again.
    enrollment_ca_key: Path | None = None
    # A command the agent runs under (["prlimit", "--nofile=64:64", "--"]), before its next start.
    wrapper: list[str] = field(default_factory=list)
    # Where state.db lives when not in `workdir` (on a power-loss file system: support/powerfs.py).
    state_dir: Path | None = None

    @classmethod
    def create(
        cls,
        workdir: Path,
        disks: dict[str, int | Path],
        *,
        retention_path: Path | None = None,
        **server_options: object,
    ) -> AgentProcess:
        """Certificates, targets (new sparse files for sizes) and a config in `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        pki = workdir / "pki"
        init_pki(pki, ["127.0.0.1", "localhost"])
        issue_client(pki, "sender")
        targets: dict[str, Path] = {}
        for disk_id, spec in disks.items():
            if isinstance(spec, Path):
                targets[disk_id] = spec
            else:
                path = workdir / "targets" / f"{disk_id}.img"
                path.parent.mkdir(exist_ok=True)
                with open(path, "wb") as f:
                    f.truncate(spec)
                targets[disk_id] = path
        agent = cls(workdir, targets, 0, 0, dict(server_options), retention_path)
        agent.write_config()
        return agent

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def cert(self) -> Path:
        return self.pki / "sender.crt"

    @property
    def key(self) -> Path:
        return self.pki / "sender.key"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def write_config(self) -> None:
        retention = self.retention_path or self.workdir / "retention"
        lines = [
            "[server]",
            f'listen = "127.0.0.1:{self.port}"',
            f'metrics_listen = "127.0.0.1:{self.metrics_port}"',
            f'state_dir = "{self.state_dir or self.workdir / "state"}"',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.server_options.items()]
        lines += [
            "",
            "[tls]",
            f'cert = "{self.pki / "server.crt"}"',
            f'key = "{self.pki / "server.key"}"',
            f'client_ca = "{self.pki / "ca.crt"}"',
            *([f'crl = "{self.crl}"'] if self.crl is not None else []),
            *(
                [f'enrollment_ca_key = "{self.enrollment_ca_key}"']
                if self.enrollment_ca_key is not None
                else []
            ),
            "",
            "[retention]",
            f'path = "{retention}"',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.retention_options.items()]
        for disk_id, path in self.disks.items():
            group = self.groups.get(disk_id, "g1")
            lines += [
                "",
                "[[disks]]",
                f'id = "{disk_id}"',
                f'group = "{group}"',
                f'path = "{path}"',
            ]
        for sender in self.senders or ():
            lines += ["", "[[senders]]"]
            lines += [f"{key} = {json.dumps(value)}" for key, value in sender.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> None:
        """Start `mtagent serve` and wait until it is ready.

        Ports 0 let the agent pick free ports (no race with other tests); the ports it
        bound are read from its "ready" log line and kept for later restarts.
        """
        self.wait_ready(self.spawn(), timeout)

    def spawn(self) -> int:
        """Start `mtagent serve` and return at once (with where its log starts, for
        `wait_ready`): for a test that acts while the agent starts."""
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        self.process = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "agent",
                "serve",
                "--config",
                str(self.config_path),
            ],
            cwd=REPO,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
        )
        log.close()
        return log_start

    def wait_ready(self, log_start: int, timeout: float = 30.0) -> None:
        """Wait until the agent `spawn` started (its log from `log_start`) is ready."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            if 0 in (self.port, self.metrics_port):
                self._learn_ports(log_start)
                return False
            try:
                with urllib.request.urlopen(f"{self.metrics_url}/healthz", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout=timeout, what=lambda: f"the agent to be ready:\n{self.log()}")

    def _learn_ports(self, log_start: int) -> None:
        with open(self.log_path, "rb") as f:
            f.seek(log_start)
            found = READY_LINE.search(f.read().decode(errors="replace"))
        if found:
            self.port, self.metrics_port = int(found.group(1)), int(found.group(2))
            self.write_config()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it was not running)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def reload(self, timeout: float = 15.0) -> str:
        """SIGHUP, as `systemctl reload` sends; returns the agent's log line that says whether the
        reload was applied ("reloaded ...") or refused ("reload refused ...")."""
        assert self.process is not None
        log_start = len(self.log())
        self.process.send_signal(signal.SIGHUP)

        def said() -> str | None:
            for line in self.log()[log_start:].splitlines():
                if "reloaded " in line or "reload refused" in line:
                    return line
            return None

        return wait_until(said, timeout=timeout, what="the agent to say how its reload went")

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would stop it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ssl_context(self, name: str = "sender") -> ssl.SSLContext:
        """A client TLS context with the certificate of client `name` (made by this agent's CA
        the first time it is asked for), trusting this agent's CA."""
        cert, key = self.pki / f"{name}.crt", self.pki / f"{name}.key"
        if not cert.exists():
            issue_client(self.pki, name)
        return client_ssl_context(cert, key, self.ca)

    def client(self, name: str = "sender", **kwargs: object) -> aiohttp.ClientSession:
        """An aiohttp session that speaks mutual TLS to this agent, as client `name`."""
        connector = aiohttp.TCPConnector(ssl=self.ssl_context(name))
        return aiohttp.ClientSession(self.url, connector=connector, **kwargs)  # type: ignore[arg-type]

    def sender_client(self, timeout: float = 30, name: str = "sender") -> AgentClient:
        """The project's own client (what `mtagent push` uses) for this agent, with the
        certificate of client `name`; use it as an async context manager."""
        return AgentClient(self.url, self.ssl_context(name), timeout=timeout)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of the sample `name` with exactly `labels` in the agent's metrics now; 0.0
        when it is not exposed (a labelled counter that never counted)."""
        for line in self.metrics_text().splitlines():
            found = SAMPLE_LINE.match(line)
            if (
                found
                and found["name"] == name
                and dict(LABEL.findall(found["labels"] or "")) == labels
            ):
                return float(found["value"])
        return 0.0

    def target_bytes(self, disk_id: str) -> bytes:
        return self.disks[disk_id].read_bytes()

    async def put_batch(
        self, disk_id: str, seq: int, body: bytes | AsyncIterable[bytes], *, name: str = "sender"
    ) -> tuple[int, dict[str, Any]]:
        """PUT batch `seq` of `disk_id` (whole bytes, or streamed from an async iterable) as a
        sender (client `name`) does; returns the HTTP status and the agent's JSON answer."""
        path = f"/v1/disks/{disk_id}/batches/{seq}"
        async with (
            self.client(name) as session,
            session.put(path, data=body, headers=BATCH_CONTENT) as response,
        ):
            return response.status, dict(await response.json())

    async def get_json(self, path: str, *, name: str = "sender") -> tuple[int, Any]:
        """GET `path` of the data listener as client `name`: the HTTP status and the JSON
        answer."""
        async with self.client(name) as session, session.get(path) as response:
            return response.status, await response.json()

    async def post_json(
        self, path: str, obj: object, timeout: float = 120, *, name: str = "sender"
    ) -> tuple[int, Any]:
        """POST the JSON `obj` to `path` of the data listener as client `name`: the HTTP status
        and the JSON answer."""
        async with (
            self.client(name, timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(path, json=obj) as response,
        ):
            return response.status, await response.json()

    async def disk(self, disk_id: str = "d0") -> dict[str, Any]:
        """The Disk JSON of `disk_id`; fails unless the agent answers 200."""
        status, body = await self.get_json(f"/v1/disks/{disk_id}")
        assert status == 200, body
        return dict(body)

    async def all_disks(self) -> list[dict[str, Any]]:
        """The Disk JSON of every configured disk; fails unless the agent answers 200."""
        status, body = await self.get_json("/v1/disks")
        assert status == 200, body
        return list(body["disks"])

    async def wait_for_disk(
        self, disk_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The Disk JSON of `disk_id` once `condition` holds for it; fails after `timeout` s
        with the last one seen and the agent's log."""
        seen: list[dict[str, Any]] = []

        async def reached() -> dict[str, Any] | None:
            seen.append(await self.disk(disk_id))
            return seen[-1] if condition(seen[-1]) else None

        return await wait_until_async(
            reached,
            timeout=timeout,
            what=lambda: f"{disk_id} to reach the expected state, last {seen[-1:]}\n{self.log()}",
        )

    async def points(self, group: str = "g1") -> list[dict[str, Any]]:
        """The recovery points of `group` as the agent lists them; fails unless it answers 200."""
        status, body = await self.get_json(f"/v1/groups/{group}/recovery-points")
        assert status == 200, body
        return list(body["points"])

    def cli(self, command: str, *args: str | Path) -> tuple[int, str, str]:
        """`mtagent COMMAND --config <this agent's config> ARGS` in this process."""
        return cli(command, "--config", self.config_path, *args)

    def cli_points(self, group: str = "g1") -> list[dict[str, Any]]:
        """The recovery points of `group` as `mtagent points --json` lists them from the files."""
        code, out, err = self.cli("points", "--group", group, "--json")
        assert code == 0, err
        return list(json.loads(out)["points"])


async def until_on_target(target: Path, offset: int, data: bytes, timeout: float = 10.0) -> None:
    """Returns once `target` holds `data` at `offset`: the agent wrote that part of a batch
    still in flight. Fails after `timeout` seconds."""

    def holds_it() -> bool:
        with open(target, "rb") as f:
            f.seek(offset)
            return f.read(len(data)) == data

    await wait_until_async(
        holds_it, timeout=timeout, interval=0.025, what=f"the batch to reach {target} at {offset}"
    )


def cli(*argv: str | Path) -> tuple[int, str, str]:
    """Run `mtagent ARGV` in this process: (exit code, stdout, stderr). Faster than
    `run_mtagent`, for commands that do not run an event loop of their own."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return code, out.getvalue(), err.getvalue()


def run_mtagent(
    *args: str | Path, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m agent ARGS` from the repository, its output captured, never raising on its
    exit code (subprocess.TimeoutExpired after `timeout` seconds). `env`: the child's whole
    environment, when it is not this process's."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        cwd=REPO,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
