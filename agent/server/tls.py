"""The data port's TLS: 1.3 preferred, 1.2 only with ECDHE and AEAD suites, and a client
certificate from our CA, always; a private key others can read is refused."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from agent.config import TlsConfig
from agent.errors import AgentError

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only (AES-GCM, ChaCha20-Poly1305), no CBC,
# no static RSA key exchange. TLS 1.3's suites are all AEAD with forward secrecy already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!PSK:!SRP"


class ServerTlsError(AgentError):
    """The server's certificate, key or client CA cannot be loaded; the message names the file."""


def key_readable_by_others(path: Path) -> int:
    """The permission bits of `path` that let its group or others read it (0 when none).
    Raises OSError when it cannot be examined."""
    return os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for mutual TLS (docs/protocol.md section 1).

    Raises ServerTlsError naming the file when a certificate or key cannot be loaded, or when
    the key's mode lets its group or others read it.
    """
    _refuse_exposed_key(tls.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_ciphers(TLS12_CIPHERS)
    # The server's order of suites, and no renegotiation (a client could start one at will).
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
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


def _refuse_exposed_key(key: Path) -> None:
    try:
        exposed = key_readable_by_others(key)
    except OSError:
        return  # loading it says why, naming it
    if exposed:
        raise ServerTlsError(
            f"server key {key} has mode {stat.S_IMODE(os.stat(key).st_mode):04o}: its group or "
            f"others may read it; run `chmod 600 {key}` (owned by the user the agent runs as)"
        )
