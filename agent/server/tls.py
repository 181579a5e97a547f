"""The data port's TLS: 1.2 or newer, and a client certificate from our CA, always."""

from __future__ import annotations

import ssl

from agent.config import TlsConfig
from agent.errors import AgentError


class ServerTlsError(AgentError):
    """The server's certificate, key or client CA cannot be loaded; the message names the file."""


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for mutual TLS (docs/protocol.md section 1).

    Raises ServerTlsError naming the file when a certificate or key cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ServerTlsError(
            f"cannot load server certificate {tls.cert} / key {tls.key}: {exc}"
        ) from exc
    try:
        context.load_verify_locations(cafile=tls.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ServerTlsError(f"cannot load client CA {tls.client_ca}: {exc}") from exc
    return context
