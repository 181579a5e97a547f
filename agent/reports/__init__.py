"""What the CLI tells about each configured disk and the host's other disks, read from the
config, the devices, the state store and the journals, with no agent running or beside one.

May import: `agent.recovery`, `agent.replication`, the shared roots of agent/, `blockio`,
`protocol`.
"""
