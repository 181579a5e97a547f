"""The HTTP API of docs/protocol.md section 2, and the plain-HTTP metrics listener."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.certs import not_after_timestamps
from agent.config import AgentConfig, batch_slot_bytes
from agent.metrics import AgentMetrics
from agent.replication.apply import ApplyLimits, apply_batch
from agent.replication.memory_budget import MemoryBudget
from agent.replication.replica import Replica
from agent.server import (
    audit,
    authorization,
    enrollment_api,
    failover_api,
    hashes_api,
    keys,
    points_api,
)
from agent.server.contexts import open_replicas, run_failovers, run_retention, watch_disks
from agent.server.health import Readiness
from agent.server.http_layer import INTERNAL
from agent.version import agent_version
from protocol.documents import Info
from protocol.errors import BadRequest, ErrorBody, ProtocolError, UnknownDisk
from protocol.wire import PROTOCOL_VERSION

log = logging.getLogger(__name__)

# Written only in pyproject.toml (agent.version).
AGENT_VERSION = agent_version()


def create_app(config: AgentConfig, registry: CollectorRegistry) -> web.Application:
    """The data-port application; its state and disks are opened by its cleanup context, once
    the caller holds the agent lock (`run_daemon` does)."""
    # The audit sees each final answer; the error middleware turns every refusal of the
    # others (and of the handlers) into JSON.
    app = web.Application(
        middlewares=[audit.middleware, error_middleware, authorization.middleware]
    )
    app[keys.CONFIG] = config
    app[keys.REGISTRY] = registry
    app[authorization.AUTHORIZATION] = authorization.Authorization(config, registry)
    app[keys.METRICS] = AgentMetrics(registry, version=AGENT_VERSION)
    app[keys.METRICS].declare_certificates(
        not_after_timestamps(config.tls.cert, config.tls.client_ca)
    )
    app[keys.LIMITS] = ApplyLimits(
        max_frame_bytes=config.server.max_frame_bytes,
        max_batch_bytes=config.server.max_batch_bytes,
        stall_timeout_seconds=config.server.stall_timeout_seconds,
        batch_timeout_seconds=config.server.batch_timeout_seconds,
    )
    budget = MemoryBudget(
        config.server.memory_budget, batch_slot_bytes(config.server.max_frame_bytes)
    )
    app[keys.MEMORY_BUDGET] = budget
    app[keys.METRICS].watch_memory_budget(
        budget.budget_bytes, lambda: budget.held_bytes, lambda: budget.waiting
    )
    app.cleanup_ctx.append(open_replicas)
    app.cleanup_ctx.append(watch_disks)
    app.cleanup_ctx.append(run_retention)
    app.cleanup_ctx.append(run_failovers)
    app.router.add_get("/v1/info", get_info)
    app.router.add_get("/v1/disks", get_disks)
    app.router.add_get("/v1/disks/{disk}", get_disk)
    app.router.add_put("/v1/disks/{disk}/batches/{seq}", put_batch)
    hashes_api.add_routes(app)
    points_api.add_routes(app)
    failover_api.add_routes(app)
    enrollment_api.add_routes(app)
    return app


# The codes docs/protocol.md gives aiohttp's own refusals, pinned: they were named after the
# status's reason phrase, which Python renames (413 is "Content Too Large" from 3.13 on).
HTTP_LAYER_CODES = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_ENTITY_TOO_LARGE",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], object]
) -> web.StreamResponse:
    """Every error as docs/protocol.md's JSON body, with its status; the error is left in
    `request[audit.ERROR]` for the audit trail."""
    try:
        return await handler(request)  # type: ignore[misc]
    except ProtocolError as exc:
        return _error_answer(request, exc.body(), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_LAYER_CODES.get(exc.status) or exc.reason.upper().replace(" ", "_")
        body = ErrorBody(code, f"{request.method} {request.path}: {exc.reason}")
        return _error_answer(request, body, exc.status, headers=_allow_header(exc))
    except Exception:
        # A fault of the agent, not of the sender: the one case that deserves a traceback.
        log.exception("%s %s failed inside the agent", request.method, request.path)
        body = ErrorBody(INTERNAL, "the agent failed to handle this request; it is logged")
        return _error_answer(request, body, 500)


def _error_answer(
    request: web.Request, body: ErrorBody, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    request[audit.ERROR] = body
    return web.json_response(body.to_json(), status=status, headers=headers)


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _replica(request: web.Request) -> Replica:
    disk = request.match_info["disk"]
    replica = request.app[keys.REPLICAS].get(disk)
    if replica is None:
        raise UnknownDisk(f"no disk {disk!r} is configured on this agent", disk=disk)
    return replica


async def get_info(request: web.Request) -> web.Response:
    limits = request.app[keys.LIMITS]
    info = Info(
        version=AGENT_VERSION,
        protocol=PROTOCOL_VERSION,
        max_frame_bytes=limits.max_frame_bytes,
        max_batch_bytes=limits.max_batch_bytes,
    )
    return web.json_response(info.to_json())


async def get_disks(request: web.Request) -> web.Response:
    sender = request[authorization.SENDER]
    replicas = [r for r in request.app[keys.REPLICAS].values() if sender.reaches(r.config.group)]
    return web.json_response({"disks": [replica.describe().to_json() for replica in replicas]})


async def get_disk(request: web.Request) -> web.Response:
    return web.json_response(_replica(request).describe().to_json())


async def put_batch(request: web.Request) -> web.Response:
    replica = _replica(request)
    try:
        seq = int(request.match_info["seq"])
    except ValueError:
        seq = 0
    if seq < 1:
        raise BadRequest(f"batch sequence numbers start at 1, got {request.match_info['seq']!r}")
    app = request.app
    result = await apply_batch(
        replica,
        app[keys.STORE],
        seq,
        request.content,
        app[keys.LIMITS],
        app[keys.METRICS],
        gate=app.get(keys.RETENTION_GATE),
        budget=app[keys.MEMORY_BUDGET],
    )
    return web.json_response(result.to_json())


def create_metrics_app(registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    """The plain-HTTP listener: `/metrics` for Prometheus, `/healthz` for probes.

    /healthz answers 200 once the agent is ready, 503 before and while it stops; its
    JSON body says which (`status`), why not ready (`reason`) and disks by state.
    """

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(readiness.describe(), status=200 if readiness.is_ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
