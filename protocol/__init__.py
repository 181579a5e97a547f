"""The mtagent wire protocol v1 (docs/protocol.md), sans-I/O.

Everything here but `protocol.client` is pure: bytes in, events out, and
events in, bytes out. No sockets, no asyncio, no files.

May import: nothing of `agent` or `blockio`.
"""
