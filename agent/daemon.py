"""`mtagent serve`: bind the listeners, run until SIGTERM/SIGINT, stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig
from agent.server import create_app, create_metrics_app
from agent.tls import server_ssl_context

log = logging.getLogger("mtagent")

# A batch in flight at SIGTERM gets this long to finish before it is cut off
# (and rolled back): long enough for a 256 MiB batch on a slow disk.
SHUTDOWN_GRACE_SECONDS = 30.0


async def run_daemon(config: AgentConfig) -> None:
    """Serve until a stop signal; every resource is released on the way out."""
    ssl_context = server_ssl_context(config.tls)
    registry = CollectorRegistry()
    app = create_app(config, registry)
    ready = False
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    metrics_runner = web.AppRunner(
        create_metrics_app(registry, lambda: ready), handle_signals=False, access_log=None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    await metrics_runner.setup()
    try:
        server = config.server
        data_site = web.TCPSite(
            runner,
            server.listen_host,
            server.listen_port,
            ssl_context=ssl_context,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        )
        metrics_site = web.TCPSite(metrics_runner, server.metrics_host, server.metrics_port)
        await data_site.start()
        await metrics_site.start()
        ready = True
        log.info(
            "ready: %d disks, data on https://%s:%d, metrics on http://%s:%d",
            len(config.disks),
            server.listen_host,
            _bound_port(data_site),
            server.metrics_host,
            _bound_port(metrics_site),
        )
        await stop.wait()
        log.info("stopping: finishing or rolling back batches in flight")
        ready = False
    finally:
        await runner.cleanup()
        await metrics_runner.cleanup()
    log.info("stopped")


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; the port may have been 0
    if server is not None and getattr(server, "sockets", None):
        return int(server.sockets[0].getsockname()[1])
    return int(site._port)
