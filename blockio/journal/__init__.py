"""The undo journal of each disk on the retention drive.

- `records`: the record format (UNDO and COMMIT records) and its encoding;
- `reader`: walking a segment's records and reading them back, verified;
- `segments`: the segment files, their names, the I/O on them, the journal lock;
- `writer`: appending records to the newest segment and syncing them;
- `rollback`: rolling back the open batch, and at start-up the batch a crash cut off;
- `index`: what a segment holds (its summary) and how far back the journal reaches;
- `catalog`: the summaries kept as the journal goes, and their cache, `index.json`;
- `undo_journal`: `UndoJournal`, the one object joining the above for the agent;
- `check`, `pruning`: checking a journal, deciding what to prune;
- `restore_plan`, `restore`: restoring a disk to a recovery point (export or in place).

May import: `blockio.disks` (a rollback writes into a target) and blockio's shared roots
(`errors`, `durable`).
"""
