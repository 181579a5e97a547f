"""Reading images and disks in order: the extents a push sends, chunk digests for resync.

May import: only blockio's shared roots (`errors`, `durable`).
"""
