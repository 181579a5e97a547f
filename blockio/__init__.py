"""Everything that touches a disk or a file of one, knowing nothing of the wire or the daemon.

Rooms (tests/test_layering.py enforces them):
- `disks/`: target devices, SCSI identity, discovery, udev monitoring, the in-use checks;
- `journal/`: the undo journal on the retention drive (records, reader, segments, writer,
  rollback, index, catalog, check, pruning, restore); it writes into targets, so it may import
  `disks`;
- `scan/`: reading source images and disks as extents and chunk digests; imports no other room;
- `batch_writer`: one batch applied with its undo made durable first (joins `disks` and `journal`);
- the shared roots every room may import: `errors` (`BlockIOError`, the base of every error
  blockio raises) and `durable` (directory syncs, atomic file writes).

May import: nothing of `agent` or `protocol`.
"""
