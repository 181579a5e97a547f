"""The data port's TLS: 1.3 preferred, 1.2 only with ECDHE and AEAD suites, and a client
certificate from our CA that its revocation list (when there is one) does not name whenever one
is presented; a private key others can read is refused.

A client may connect without a certificate: a process server enrolling by passphrase has none
yet. Every request such a connection sends is refused before it is read, but enrollment's
(agent.server.authorization); a certificate that is presented and does not verify still fails
the handshake."""

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
    # Verified when presented; its absence is refused per request (see the module docstring).
    context.verify_mode = ssl.CERT_OPTIONAL
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
    if tls.crl is not None:
        try:
            context.load_verify_locations(cafile=tls.crl)
        except (OSError, ssl.SSLError) as exc:
            raise ServerTlsError(f"cannot load revocation list {tls.crl}: {exc}") from exc
        # The leaf only: the CA is our own, and it is the one that signs the list.
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
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


class ReloadableTls:
    """The data port's TLS settings, which a reload replaces for new handshakes while the
    connections made under the old ones go on.

    asyncio fixes a listener's SSLContext when it starts serving; the one place a handshake can
    still change it is the SNI callback, which OpenSSL calls for every ClientHello (with or
    without a server name) before the server's certificate is sent or the client's verified:
    there each connection is moved to the current context, whose certificate, key, client CA and
    revocation list it then uses. The verification flags stay those of the first context (OpenSSL
    copies them into each connection before the callback), so whether a revocation list is
    checked at all is fixed until a restart.
    """

    def __init__(self, tls: TlsConfig) -> None:
        """Raises ServerTlsError as `server_ssl_context` does."""
        self.context = server_ssl_context(tls)  # what the listener is given
        self._current = self.context
        self._checks_crl = tls.crl is not None
        self.context.sni_callback = self._choose

    def prepare(self, tls: TlsConfig) -> ssl.SSLContext:
        """A context for `tls`, to `use` once everything else of a reload is ready too.

        Raises ServerTlsError when a file cannot be loaded, or when `tls` adds or removes the
        revocation list (that takes a restart: see the class docstring).
        """
        if (tls.crl is not None) != self._checks_crl:
            change = "adding" if tls.crl is not None else "removing"
            raise ServerTlsError(f"{change} [tls] crl takes a restart, not a reload")
        return server_ssl_context(tls)

    def use(self, context: ssl.SSLContext) -> None:
        """Make new handshakes use `context` (from `prepare`)."""
        self._current = context

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        connection.context = self._current
