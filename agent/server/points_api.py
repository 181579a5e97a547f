"""`GET /v1/groups/{group}/recovery-points`: the points of `agent.recovery.points`, as the
running agent sees them. Apart from `agent.recovery.points` so that the CLI lists points without
importing aiohttp."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent.recovery.points import group_disk_ids, running_points
from agent.replication.replica import Replica
from agent.server import keys
from protocol.errors import UnknownGroup


async def get_recovery_points(request: web.Request) -> web.Response:
    """GET /v1/groups/{group}/recovery-points: `{"points": [Point, ...]}`, oldest first."""
    group = request.match_info["group"]
    app = request.app
    config = app[keys.CONFIG]
    if not group_disk_ids(config, group):
        raise UnknownGroup(f"no disk of this agent is in group {group!r}", group=group)
    replicas: dict[str, Replica] = app[keys.REPLICAS]
    points = await asyncio.to_thread(running_points, config, replicas, app[keys.STORE], group)
    return web.json_response({"points": [point.to_json() for point in points]})


def add_routes(app: web.Application) -> None:
    """Register the recovery-points endpoint."""
    app.router.add_get("/v1/groups/{group}/recovery-points", get_recovery_points)
