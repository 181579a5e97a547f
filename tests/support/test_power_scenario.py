"""The end-to-end power cuts' own batches: what the harness sends must be what an agent takes."""

from __future__ import annotations

from protocol.wire import DEFAULT_MAX_FRAME_BYTES
from tests.support.batches import apply_in_memory
from tests.support.power_scenario import DISK_BYTES, resync_writes


def test_the_resync_after_a_gap_sends_the_whole_disk_in_frames_under_the_frame_limit() -> None:
    # It once sent the disk as one 12 MiB frame, refused with 413 FRAME_TOO_LARGE, which only
    # a run that met `resync_required` would have shown.
    image = bytes(range(256)) * (DISK_BYTES // 256)

    writes = resync_writes(image)

    assert all(
        isinstance(data, bytes) and len(data) <= DEFAULT_MAX_FRAME_BYTES for _, data in writes
    )
    rebuilt = bytearray(DISK_BYTES)
    apply_in_memory(rebuilt, writes)
    assert rebuilt == image
