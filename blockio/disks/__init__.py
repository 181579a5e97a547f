"""Target disks: a block device or file (`target`), its SCSI identity, discovery with pyudev,
udev events, and whether the host uses it (`safety`).

May import: only blockio's shared roots (`errors`, `durable`).
"""
