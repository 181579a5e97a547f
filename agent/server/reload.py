"""`SIGHUP` (and `systemctl reload mtagent`): re-read what can change without a restart.

A reload re-reads the configuration file and takes from it the TLS files (server certificate
and key, client CA, revocation list, each read again even if its path is unchanged) and the
`[[senders]]` table. Everything is loaded and checked before anything is applied: a reload that
would fail (a file that does not parse, a certificate that does not load) changes nothing, and
says why in one line. Connections and batches in flight go on under the settings they started
with; new handshakes and new requests get the new ones. Other changes to the file (listeners,
disks, retention) wait for a restart, and the log says so.
"""

from __future__ import annotations

import dataclasses
import logging

from prometheus_client import CollectorRegistry, Counter

from agent.config import AgentConfig, ConfigError, load_config
from agent.log_fields import log_fields
from agent.server.authorization import Authorization
from agent.server.tls import ReloadableTls, ServerTlsError

log = logging.getLogger(__name__)


class Reloader:
    """Applies reloads of `running`'s file to the data port's TLS and authorization."""

    def __init__(
        self,
        running: AgentConfig,
        tls: ReloadableTls,
        authorization: Authorization,
        registry: CollectorRegistry,
    ) -> None:
        self._running = running
        self._tls = tls
        self._authorization = authorization
        self.reloads = Counter(
            "mtagent_config_reloads",
            "Reloads asked for (SIGHUP), by result: applied, or refused (the old settings stay).",
            ["result"],
            registry=registry,
        )
        for result in ("applied", "refused"):
            self.reloads.labels(result)

    def reload(self) -> bool:
        """Re-read the configuration file and apply what a reload can change; returns whether it
        did. Never raises for a bad file: it logs why and keeps the running settings."""
        file = self._running.file
        try:
            fresh = load_config(file)
            context = self._tls.prepare(fresh.tls)
        except (ConfigError, ServerTlsError) as exc:
            self.reloads.labels("refused").inc()
            log.error(
                "reload refused, the running settings stay: %s",
                exc,
                extra=log_fields(reload="refused"),
            )
            return False
        self._tls.use(context)
        # The disks stay those the agent runs with: only the table is new.
        self._authorization.apply(dataclasses.replace(self._running, senders=fresh.senders))
        self.reloads.labels("applied").inc()
        waiting = [
            name
            for name in ("server", "retention", "disks")
            if getattr(fresh, name) != getattr(self._running, name)
        ]
        if fresh.tls.enrollment_ca_key != self._running.tls.enrollment_ca_key:
            waiting.append("tls.enrollment_ca_key")
        log.info(
            "reloaded %s: server certificate and key, client CA, revocation list, [[senders]]%s",
            file,
            f"; changes to {', '.join(waiting)} take a restart" if waiting else "",
            extra=log_fields(reload="applied"),
        )
        return True
