"""The process server's side: pushing a source image as numbered batches (full or delta),
resync and verify by hash comparison, the retry budget and the thread-to-loop pipe.

May import: `protocol`, `blockio.scan` (reading sources) and the shared roots of agent/ (errors,
units). Nothing of the daemon.
"""
