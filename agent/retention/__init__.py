"""The retention policy at run time (pruning, scrubbing, the 507 gate) and its metrics.

May import: `agent.recovery`, `agent.replication`, the shared roots of agent/, `protocol`,
`blockio`.
"""
