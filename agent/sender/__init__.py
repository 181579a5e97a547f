"""The process server's side: pushing a source image as numbered batches (full or delta),
resync and verify by hash comparison, the retry budget and the thread-to-loop pipe.

One pipeline sends every batch: `batch_sender` (retrying and resuming) streams the bodies
that a producer thread encodes (`bodies`, from `protocol.batching`'s events) through `pipe`.
`push` sends an image or a delta that way; `resync` sends the batches that `compare` (over
the two digest streams of `digests`) finds and `protocol.resync_plan` cuts into batches;
`verify` compares only. `retry` holds the retry budget, `source_fit` the checks before
anything is sent, `errors` the sender's errors (all `agent.errors.AgentError`).

May import: `protocol`, `blockio.scan` (reading sources) and the shared roots of agent/ (errors,
units). Nothing of the daemon.
"""
