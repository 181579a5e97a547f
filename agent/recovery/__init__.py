"""Recovery points of a consistency group and restoring them (export or in place).

May import: `agent.replication`, the shared roots of agent/, `protocol`, `blockio`.
"""
