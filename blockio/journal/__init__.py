"""The undo journal of each disk on the retention drive: records, segment files, the index they
make, checking, pruning policy, rollback, and recovery to a point.

May import: `blockio.disks` (a rollback writes into a target) and blockio's shared roots
(`errors`, `durable`).
"""
