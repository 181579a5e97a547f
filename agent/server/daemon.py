"""`mtagent serve`: bind the listeners, run until SIGTERM/SIGINT, stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig
from agent.log_fields import log_fields
from agent.replication.instance_lock import acquire_agent_lock
from agent.server import keys
from agent.server.allocator import return_large_buffers
from agent.server.app import create_app, create_metrics_app
from agent.server.authorization import AUTHORIZATION
from agent.server.connection_limits import ConnectionLimits
from agent.server.draining import RequestDrain
from agent.server.early_reloads import EARLY_RELOADS
from agent.server.handshake_gate import (
    HandshakeGate,
    HandshakeGatedSite,
    HandshakeLimits,
    HandshakeMetrics,
)
from agent.server.health import HealthProbe, Readiness, status_line
from agent.server.http_layer import AgentAppRunner, ConnectionMetrics, ListenerGuard
from agent.server.listeners import AcceptFailureLog, bind_listeners, raise_open_file_limit
from agent.server.reload import Reloader
from agent.server.sdnotify import SystemdNotifier, notify_while_running, watchdog_interval
from agent.server.tls import ReloadableTls
from agent.server.tls_handshakes import count_handshake_failures
from agent.version import agent_version

log = logging.getLogger("mtagent")

# A batch in flight at SIGTERM gets this long to finish before it is cut off
# (and rolled back): long enough for a 256 MiB batch on a slow disk.
SHUTDOWN_GRACE_SECONDS = 30.0
# After the grace, how long aiohttp waits for the handlers it cancels (their rollback
# goes on after that: the disks are closed only once their batch is settled).
CUT_OFF_SECONDS = 10.0
# How often systemd's STATUS= line is refreshed when no watchdog sets the pace.
STATUS_INTERVAL_SECONDS = 10.0


async def run_daemon(config: AgentConfig) -> None:
    """Serve until a stop signal; every resource is released on the way out.

    Raises ServerTlsError or ListenError (one line each) before any disk is opened when a
    certificate cannot be loaded or a port cannot be bound, AgentLockHeld when another agent
    or an in-place recovery works on the same state.
    """
    raise_open_file_limit()
    return_large_buffers()
    tls = ReloadableTls(config.tls)
    # The lock first: a second agent on the same state is told so, not that its port is taken.
    lock = acquire_agent_lock(
        config.server.state_dir,
        holder="mtagent serve",
        refusal="an agent or an in-place recovery is already working on these disks",
    )
    try:
        await _serve_holding_the_lock(config, tls)
    finally:
        os.close(lock)


async def _serve_holding_the_lock(config: AgentConfig, tls: ReloadableTls) -> None:
    ssl_context = tls.context
    server = config.server
    data_sockets = bind_listeners(
        server.listen_host, server.listen_port, "data port (server.listen)"
    )
    try:
        metrics_sockets = bind_listeners(
            server.metrics_host, server.metrics_port, "metrics port (server.metrics_listen)"
        )
    except BaseException:
        for sock in data_sockets:
            sock.close()
        raise
    listening = [*data_sockets, *metrics_sockets]
    listen = _address(server.listen_host, data_sockets[0].getsockname()[1])
    metrics_listen = _address(server.metrics_host, metrics_sockets[0].getsockname()[1])
    registry = CollectorRegistry()
    app = create_app(config, registry)
    count_handshake_failures(ssl_context, app[keys.METRICS].count_handshake_failure)
    notifier = SystemdNotifier.from_environment()
    readiness = Readiness()
    drain = RequestDrain()
    app.middlewares.append(drain.middleware)  # inside create_app's error middleware
    connection_metrics = ConnectionMetrics(registry)
    runner = AgentAppRunner(
        app,
        guard=ListenerGuard(
            "data",
            ConnectionLimits(server.max_connections, server.max_connections_per_peer),
            connection_metrics,
        ),
        idle_timeout=server.idle_timeout_seconds,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=CUT_OFF_SECONDS,
    )
    metrics_runner = AgentAppRunner(
        create_metrics_app(registry, readiness),
        guard=ListenerGuard(
            "metrics", ConnectionLimits(server.metrics_max_connections), connection_metrics
        ),
        idle_timeout=server.metrics_idle_timeout_seconds,
        handle_signals=False,
        access_log=None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptFailureLog(connection_metrics.accept_failures.inc))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloader = Reloader(config, tls, app[AUTHORIZATION], registry)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    if EARLY_RELOADS.take():
        # Asked for while the agent started (before the handler above): applied now, once for
        # all of them, before the listeners serve.
        log.info("a reload was asked for during the start: reloading now")
        reloader.reload()
    notifier.notify(f"STATUS={readiness.reason}")
    supervision: asyncio.Task[None] | None = None
    try:
        await runner.setup()
        await metrics_runner.setup()
        # Only now: every refusal of a start (TLS, lock, ports, retention path, state store) is
        # behind us, and a refused start says one line on stderr, not two.
        log.info(
            "started: mtagent %s, config %s, data port %s, metrics port %s",
            agent_version(),
            config.file,
            listen,
            metrics_listen,
            extra=log_fields(
                version=agent_version(),
                config=config.file,
                listen=listen,
                metrics_listen=metrics_listen,
            ),
        )
        app[AUTHORIZATION].announce()
        for replica in app[keys.REPLICAS].values():
            replica.start_logging_state()
        gate = HandshakeGate(
            ssl_context,
            HandshakeLimits(
                server.max_handshakes,
                server.max_handshakes_per_peer,
                server.handshake_timeout_seconds,
            ),
            HandshakeMetrics(registry),
        )
        data_sites = [HandshakeGatedSite(runner, sock, gate) for sock in data_sockets]
        metrics_sites = [web.SockSite(metrics_runner, sock) for sock in metrics_sockets]
        for site in [*data_sites, *metrics_sites]:
            await site.start()
        assert runner.server is not None
        http_server = runner.server
        app[keys.METRICS].watch_connections(lambda: len(http_server.connections))
        replicas = app[keys.REPLICAS]
        app[keys.METRICS].declare_configuration(
            replicas,
            retention_window_seconds=config.retention.window_seconds,
            retention_max_bytes=config.retention.max_bytes,
        )
        readiness.set_ready(lambda: [replica.snapshot() for replica in replicas.values()])
        supervision = _supervise(notifier, app, readiness)
        log.info(
            "ready: %d disks, data on https://%s:%d, metrics on http://%s:%d",
            len(config.disks),
            server.listen_host,
            data_sockets[0].getsockname()[1],
            server.metrics_host,
            metrics_sockets[0].getsockname()[1],
            extra=log_fields(disks=len(config.disks), listen=listen, metrics_listen=metrics_listen),
        )
        await stop.wait()
        log.info("stopping: finishing or rolling back batches in flight")
        readiness.set_stopping()
        notifier.notify("STOPPING=1", f"STATUS={readiness.reason}")
        drain.close()
        for site in data_sites:
            await site.stop()
        if await drain.wait(SHUTDOWN_GRACE_SECONDS):
            # Nothing is in progress: what is left are idle connections, or ones lingering
            # to read the rest of a refused body, which need not hold up the stop.
            for connection in http_server.connections:
                connection.force_close()
        else:
            log.warning(
                "%d requests still in progress after %g s: cutting them off",
                drain.in_progress,
                SHUTDOWN_GRACE_SECONDS,
            )
    finally:
        await runner.cleanup()
        # Keep-alives go on while batches drain: a stop that takes long is no hang.
        if supervision is not None:
            supervision.cancel()
        await metrics_runner.cleanup()
        notifier.close()
        # The accept-failure handler stays until the loop closes: a listener paused by a
        # failed accept resumes up to a second after this, and that report is filtered there.
        for sock in listening:
            sock.close()  # already closed by their site once it started; not before
    log.info("stopped")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _supervise(
    notifier: SystemdNotifier, app: web.Application, readiness: Readiness
) -> asyncio.Task[None] | None:
    """Tell systemd the agent is ready; keep its watchdog fed and its STATUS= line fresh."""

    def status() -> str:
        if readiness.phase == "stopping":
            return readiness.reason
        assert readiness.disks is not None
        return status_line(readiness.disks())

    notifier.notify("READY=1", f"STATUS={status()}")
    if not notifier.enabled:
        return None
    interval = watchdog_interval()
    probe = HealthProbe(app[keys.STORE], deadline_seconds=interval or STATUS_INTERVAL_SECONDS)
    task = asyncio.create_task(
        notify_while_running(
            notifier,
            interval=interval or STATUS_INTERVAL_SECONDS,
            watchdog=interval is not None,
            healthy=probe,
            status=status,
        )
    )
    task.add_done_callback(lambda _: probe.close())
    return task
