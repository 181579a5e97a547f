"""`POST /v1/groups/{group}/failover` and `POST /v1/groups/{group}/reprotect`: failing one group
over while the agent replicates the others, and taking it back (`agent.recovery.failover`).

Both require a sender with role admin (docs/protocol.md, Authorization): the authorization
middleware makes every route other than the replication ones admin-only."""

from __future__ import annotations

import json

from aiohttp import web

from agent.recovery.errors import RestoreFailed, UnknownGroupName
from agent.recovery.failover import FailoverNotAllowed, NoPointForFailover, as_document
from agent.server import keys
from protocol.errors import (
    BadRequest,
    FailoverRefused,
    NoRecoveryPoint,
    TargetUnavailable,
    UnknownGroup,
)

# A failover request is one small JSON object.
_MAX_REQUEST_BYTES = 4096


async def _requested_point(request: web.Request) -> str:
    """The `point` of the request body `{"point": str}`. Raises BadRequest."""
    body = await request.read()  # bounded by the application's client_max_size (413)
    if len(body) > _MAX_REQUEST_BYTES:
        raise BadRequest("a failover request is a small JSON object", field="point")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"point"} or not isinstance(obj["point"], str):
        raise BadRequest(
            'the body must be {"point": "latest" | "latest-app" | "latest-crash" | ID}',
            field="point",
        )
    if not obj["point"]:
        raise BadRequest("the point is empty", field="point")
    return str(obj["point"])


async def post_failover(request: web.Request) -> web.Response:
    """POST /v1/groups/{group}/failover: 200 Failover once the group's disks are released."""
    group = request.match_info["group"]
    spec = await _requested_point(request)
    failovers = request.app[keys.FAILOVERS]
    try:
        record = await failovers.fail_over(group, spec)
    except UnknownGroupName:
        raise UnknownGroup(f"no disk of this agent is in group {group!r}", group=group) from None
    except NoPointForFailover as exc:
        raise NoRecoveryPoint(str(exc), group=group, point=spec) from None
    except FailoverNotAllowed as exc:
        raise FailoverRefused(str(exc), group=group) from None
    except RestoreFailed as exc:
        raise TargetUnavailable(
            f"{exc}; the failover stays where it got to: ask again to finish it"
        ) from None
    return web.json_response(as_document(record).to_json())


async def post_reprotect(request: web.Request) -> web.Response:
    """POST /v1/groups/{group}/reprotect: 200 Failover (phase `reprotected`)."""
    group = request.match_info["group"]
    failovers = request.app[keys.FAILOVERS]
    try:
        record = await failovers.reprotect(group)
    except UnknownGroupName:
        raise UnknownGroup(f"no disk of this agent is in group {group!r}", group=group) from None
    except FailoverNotAllowed as exc:
        raise FailoverRefused(str(exc), group=group) from None
    return web.json_response(as_document(record).to_json())


def add_routes(app: web.Application) -> None:
    """Register the failover endpoints."""
    app.router.add_post("/v1/groups/{group}/failover", post_failover)
    app.router.add_post("/v1/groups/{group}/reprotect", post_reprotect)
