"""One replicated disk at run time: its replica (target, journal, I/O thread), applying a batch,
the durable state store, in-flight writes, the retention gate, the state-dir lock and the disk
watch.

May import: the shared roots of agent/, `protocol`, `blockio`. Never aiohttp: the server hands it
plain byte readers.
"""
