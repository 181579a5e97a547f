"""The daemon: the aiohttp application of the data port (batches, hashes, points), its typed
keys and cleanup contexts, the metrics listener, TLS, draining, health, systemd notify,
and where the daemon's log records go (`log_handlers`: journald's native socket or stderr).

The only room of mtagent that imports aiohttp. May import every room of agent/ except `sender`,
`reports` and `commands`, and `protocol`, `blockio`.
"""
