"""Who may do what on the data port: every request checked against `[[senders]]` before its
handler runs, so before any byte of its body is read or any disk is touched.

A sender is the name of its client certificate (its CN, what `mtagent certs issue --name` gave).
The rule is structural: REPLICATION_ROUTES lists the routes a sender with role "replicate" may
call (batches, hashes, the listings and info); every other route of the application, present or
added later (failover, reprotect, ...), is administrative: role "admin" only. Both are limited
to the sender's consistency groups: a disk is in its `group`, a `{group}` of the path is that
group, and an administrative route whose path names neither acts on the whole agent, so it
needs an admin of every group ("*"). A disk that is not configured is outside every group but
"*", so that a sender learns nothing of disks it may not reach.

A request without a client certificate is refused (401 CLIENT_CERTIFICATE_REQUIRED) before its
handler runs, whatever its route, except the enrollment routes (ENROLLMENT_ROUTES), which are
the way to get a certificate and check their callers themselves (agent.server.enrollment_api).
Senders enrolled by passphrase (`<state_dir>/enrolled-senders.json`, agent.enrollment) join the
`[[senders]]` table; an entry of the configuration file wins over one of the same name there.

Without a `[[senders]]` table every certificate of the CA is an admin of every group, as before
authorization existed: existing configurations keep starting, loudly (a warning at start,
`mtagent_authorization_open` 1).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.config import ALL_GROUPS, AgentConfig, SenderConfig
from agent.enrollment import read_enrolled_senders
from agent.log_fields import log_fields
from agent.metrics import NO_CLIENT_CERTIFICATE
from agent.server import keys
from protocol.errors import ClientCertificateRequired, Forbidden

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# (method, route path as registered): what role "replicate" may call. HEAD goes with GET.
REPLICATION_ROUTES = frozenset(
    {
        ("GET", "/v1/info"),
        ("GET", "/v1/disks"),
        ("GET", "/v1/disks/{disk}"),
        ("PUT", "/v1/disks/{disk}/batches/{seq}"),
        ("POST", "/v1/disks/{disk}/hashes"),
        ("GET", "/v1/groups/{group}/recovery-points"),
    }
)


# The routes a client without a certificate may call: enrollment by passphrase.
ENROLLMENT_ROUTES = frozenset({("POST", "/v1/enroll/challenge"), ("POST", "/v1/enroll")})


class Refusal(StrEnum):
    """Why a request was refused (the `reason` label of mtagent_forbidden_requests_total)."""

    UNKNOWN_SENDER = "unknown_sender"  # a certificate of the CA, but no [[senders]] entry
    ROLE = "role"  # an administrative route, and the sender's role is "replicate"
    GROUP = "group"  # a disk or group outside the sender's groups


@dataclass(frozen=True, slots=True)
class Target:
    """What a request acts on, from its route: a disk (and its group, None when no such disk is
    configured), a group, or the whole agent (both None)."""

    disk: str | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused request: why, and the one line that says so to the sender."""

    reason: Refusal
    message: str


def is_replication_route(method: str, path: str) -> bool:
    """Whether the route `(method, path)` (its path as registered, `{disk}` and all) is open to
    role "replicate"; every other route is administrative."""
    return ("GET" if method == "HEAD" else method, path) in REPLICATION_ROUTES


def judge(
    sender: SenderConfig | None, identity: str, *, replication: bool, target: Target
) -> Denial | None:
    """Whether `sender` (None: no [[senders]] entry for certificate `identity`) may call a route
    (`replication`: one of REPLICATION_ROUTES) acting on `target`; None when it may."""
    if sender is None:
        return Denial(
            Refusal.UNKNOWN_SENDER,
            f"the client certificate {identity!r} has no [[senders]] entry on this agent",
        )
    if not replication and sender.role != "admin":
        return Denial(
            Refusal.ROLE, f"sender {sender.name!r} has role {sender.role!r}; this needs admin"
        )
    groups = ", ".join(sorted(sender.groups)) or "none"
    if target.disk is not None:
        if target.group is None and ALL_GROUPS in sender.groups:
            return None  # the handler answers UNKNOWN_DISK
        if target.group is None or not sender.reaches(target.group):
            return Denial(
                Refusal.GROUP,
                f"disk {target.disk!r} is outside the groups of sender {sender.name!r} ({groups})",
            )
    elif target.group is not None:
        if not sender.reaches(target.group):
            return Denial(
                Refusal.GROUP,
                f"group {target.group!r} is outside the groups of sender {sender.name!r} "
                f"({groups})",
            )
    elif not replication and ALL_GROUPS not in sender.groups:
        return Denial(
            Refusal.GROUP,
            f"this acts on every group; sender {sender.name!r} has only {groups}",
        )
    return None


class Authorization:
    """The `[[senders]]` table of the running agent and its metrics."""

    def __init__(self, config: AgentConfig, registry: CollectorRegistry) -> None:
        self.forbidden = Counter(
            "mtagent_forbidden_requests",
            "Requests on the data port refused by authorization ([[senders]]), by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in Refusal:
            self.forbidden.labels(reason.value)  # from zero, so that increase() sees the first
        self.open = Gauge(
            "mtagent_authorization_open",
            "1 while the configuration has no [[senders]] table: every client certificate of "
            "the CA may write every disk and call every administrative endpoint.",
            registry=registry,
        )
        # Said once the start can no longer be refused (a refused start says one line), then at
        # every reload.
        self._announced = False
        self.apply(config)

    def apply(self, config: AgentConfig) -> None:
        """Take the `[[senders]]` table of `config` (at start, and at every reload)."""
        self._config = config
        senders = config.senders
        self._senders = None if senders is None else {s.name.lower(): s for s in senders}
        self.configured = frozenset(self._senders or ())
        if self._senders is not None:
            for enrolled in read_enrolled_senders(config.server.state_dir):
                self._senders.setdefault(enrolled.name.lower(), enrolled)
        self.open.set(1 if senders is None else 0)
        if self._announced:
            self.announce()

    def announce(self) -> None:
        """Warn about what the table leaves open: no table at all, or groups no disk is in."""
        self._announced = True
        config, senders = self._config, self._config.senders
        if senders is None:
            log.warning(
                "%s has no [[senders]]: every client certificate of the CA may write every "
                "disk and call every administrative endpoint (README, Security)",
                config.file,
                extra=log_fields(authorization="open"),
            )
            return
        known = {disk.group for disk in config.disks}
        for sender in senders:
            for group in sorted(sender.groups - known - {ALL_GROUPS}):
                log.warning(
                    "sender %s names group %s, which no [[disks]] entry is in",
                    sender.name,
                    group,
                    extra=log_fields(sender=sender.name, group=group),
                )

    def enrolled(self, sender: SenderConfig) -> None:
        """Let `sender` in, just enrolled by passphrase (and written down by agent.enrollment)."""
        if self._senders is not None:
            self._senders.setdefault(sender.name.lower(), sender)

    @property
    def is_open(self) -> bool:
        """Whether there is no `[[senders]]` table (every certificate may do everything)."""
        return self._senders is None

    def knows(self, name: str) -> bool:
        """Whether a `[[senders]]` entry or an enrolled sender has the name `name`."""
        return self._senders is not None and name.lower() in self._senders

    def sender(self, identity: str) -> SenderConfig | None:
        """The entry of the certificate named `identity`: None when it has none. Without a
        [[senders]] table, an admin of every group."""
        if self._senders is None:
            return SenderConfig(identity, frozenset({ALL_GROUPS}), "admin")
        return self._senders.get(identity.lower())

    def target(self, request: web.Request) -> Target:
        """What `request` acts on, from its route's `{disk}` and `{group}`."""
        match = request.match_info
        if "disk" in match:
            disk = self._config.disk(match["disk"])
            return Target(disk=match["disk"], group=None if disk is None else disk.group)
        return Target(group=match.get("group"))


AUTHORIZATION = web.AppKey("authorization", Authorization)
# The [[senders]] entry a request was let in as (set by `middleware`).
SENDER = web.RequestKey("sender", SenderConfig)


def has_certificate(request: web.Request) -> bool:
    """Whether the client presented a certificate (the handshake verified it, or failed)."""
    transport = request.transport
    return bool(transport is not None and transport.get_extra_info("peercert"))


def certificate_name(request: web.Request) -> str:
    """The CN of the request's client certificate ("" when it has none: the CA signed a
    certificate without one)."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse with 403 FORBIDDEN what the sender may not do, before the handler runs. Place
    inside the error middleware, so that the refusal is answered as JSON."""
    resource = request.match_info.route.resource
    if resource is not None and (request.method, resource.canonical) in ENROLLMENT_ROUTES:
        return await handler(request)
    if not has_certificate(request):
        # Counted with the handshakes that lacked one, as before certificates became optional.
        request.app[keys.METRICS].count_handshake_failure(NO_CLIENT_CERTIFICATE)
        raise ClientCertificateRequired(
            "this endpoint needs a client certificate of the agent's CA; a process server "
            "without one enrolls first (mtagent enroll)"
        )
    authorization = request.app[AUTHORIZATION]
    identity = certificate_name(request)
    sender = authorization.sender(identity)
    denial = None
    if sender is None or resource is not None:  # no route: 404 or 405, the same for everyone
        denial = judge(
            sender,
            identity,
            replication=resource is not None
            and is_replication_route(request.method, resource.canonical),
            target=authorization.target(request),
        )
    if denial is not None:
        # Logged, with the sender's name, by the audit trail (agent.server.audit).
        authorization.forbidden.labels(denial.reason.value).inc()
        raise Forbidden(denial.message, reason=denial.reason.value)
    assert sender is not None
    request[SENDER] = sender
    return await handler(request)
