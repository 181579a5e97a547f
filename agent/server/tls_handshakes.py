"""Counting failed TLS handshakes on the data port, by a reason an operator can act on.

asyncio does the server side of TLS with `SSLContext.wrap_bio()` (for the data port, through
`loop.start_tls()`: agent.server.handshake_gate) and logs a failed handshake only in debug mode. The
context's `sslobject_class` is the one hook on that path: a subclass of
`ssl.SSLObject` sees every `do_handshake()` call and the error OpenSSL reports,
at the moment it does.

Not counted here: a connection that closes or times out before the handshake is over
(a port probe, a load balancer's TCP check; the gate counts those it closes itself).
OpenSSL reports nothing for it and asyncio drops it without a call into the SSL object,
so the only trace would be the object's garbage collection, whose timing would make the
counter lie. That is also
what a client on asyncio looks like when it refuses our certificate: asyncio drops a
connection whose handshake failed without sending the TLS alert, so no reason code ever
reaches us (OpenSSL's `TLSV1_ALERT_UNKNOWN_CA` and the like only come with an alert).
The project's own client therefore tells us with a handshake of a blocking socket,
which sends the alert (`protocol.client.certificate_refusal`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from agent.metrics import (
    CLIENT_CERTIFICATE_REJECTED,
    NO_CLIENT_CERTIFICATE,
    PROTOCOL,
    REJECTED_BY_CLIENT,
)


def failure_reason(error: ssl.SSLError) -> str:
    """The reason of a failed server-side handshake, from OpenSSL's reason code."""
    code = (error.reason or "").upper()
    if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return NO_CLIENT_CERTIFICATE
    if isinstance(error, ssl.SSLCertVerificationError) or code == "CERTIFICATE_VERIFY_FAILED":
        return CLIENT_CERTIFICATE_REJECTED
    if code.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
        return REJECTED_BY_CLIENT
    return PROTOCOL


def count_handshake_failures(context: ssl.SSLContext, on_failure: Callable[[str], None]) -> None:
    """Make every handshake of server `context` that fails with a TLS error call
    `on_failure(reason)`, `reason` one of agent.metrics.HANDSHAKE_FAILURE_REASONS.

    `on_failure` runs on the thread doing the handshake (the event loop) and must not
    raise. Connections that close before their handshake ends are not counted (see
    the module docstring).
    """

    class CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # more bytes needed: the handshake goes on
            except ssl.SSLError as exc:
                on_failure(failure_reason(exc))
                raise

    context.sslobject_class = CountingSSLObject
