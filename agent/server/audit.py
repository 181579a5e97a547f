"""The audit trail of the data port: one log record for each batch, hashes request and
administrative call, accepted or refused, for every enrollment attempt, and for every request
refused by authorization.

Each record carries its facts as structured fields (agent.log_fields: `SENDER=`, `DISK=`,
`SEQ=`, `BYTES=`, `RESULT=`, `CODE=`, ... in the journal under systemd), at info; a refusal by
authorization (403 FORBIDDEN) at warning, being a sign of a misconfigured or misused
certificate. The listings (info, disks, points) are not audited when they succeed: senders poll
them, and they change nothing.

The middleware stands outside the error middleware, so that it sees each request's final
answer: the error middleware leaves the error it answered in `request[ERROR]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum

from aiohttp import web

from agent.log_fields import log_fields
from agent.server.authorization import (
    ENROLLMENT_ROUTES,
    certificate_name,
    has_certificate,
    is_replication_route,
)
from protocol.errors import ErrorBody, Forbidden

log = logging.getLogger("mtagent.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The error a request was answered with, set by whoever turned the error into the answer.
ERROR = web.RequestKey("error", ErrorBody)

BATCH_ROUTE = ("PUT", "/v1/disks/{disk}/batches/{seq}")
HASHES_ROUTE = ("POST", "/v1/disks/{disk}/hashes")


class Action(StrEnum):
    """What an audited request was (the `ACTION=` field)."""

    BATCH = "batch"
    HASHES = "hashes"
    ADMIN = "admin"
    ENROLL = "enroll"  # enrollment by passphrase, by a client without a certificate
    READ = "read"  # a listing: audited only when refused by authorization


def action_of(request: web.Request) -> Action | None:
    """What `request` is, from its route; None for a request that matched no route."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    route = (request.method, resource.canonical)
    if route == BATCH_ROUTE:
        return Action.BATCH
    if route == HASHES_ROUTE:
        return Action.HASHES
    if route in ENROLLMENT_ROUTES:
        return Action.ENROLL
    return Action.READ if is_replication_route(*route) else Action.ADMIN


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log the request's audit record once it is answered (see the module docstring). Place
    first, outside the error middleware."""
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        record(request, None, ErrorBody("CANCELLED", "cut off before it was answered"))
        raise
    record(request, response.status, request.get(ERROR))
    return response


def record(request: web.Request, status: int | None, error: ErrorBody | None) -> None:
    """Log the audit record of `request`, answered with `status` (None: never answered) and
    `error` (None: accepted), if it is one to audit."""
    action = action_of(request)
    code = None if error is None else error.code
    forbidden = code == Forbidden.code
    if action is None or (action is Action.READ and not forbidden):
        return
    # A client without a certificate (enrolling) has nothing but its address to go by.
    sender = certificate_name(request) or (
        "(no name)" if has_certificate(request) else f"(no certificate, {request.remote})"
    )
    match = request.match_info
    received = request.content.total_bytes
    result = "accepted" if code is None else "refused"
    log.log(
        logging.WARNING if forbidden else logging.INFO,
        "%s %s %s from %s: %s, %d bytes received%s",
        action.value,
        request.method,
        request.path,
        sender,
        result if error is None else f"{result} {status or ''} {error.code}".replace("  ", " "),
        received,
        "" if error is None else f": {error.message}",
        extra=log_fields(
            audit=1,
            action=action.value,
            sender=sender,
            disk=match.get("disk"),
            group=match.get("group"),
            seq=match.get("seq"),
            bytes=received,
            result=result,
            code=code,
            status=status,
            remote=request.remote,
        ),
    )
