"""The journal's catalog of its segments: a summary of each, kept current as the journal appends,
seals, prunes and recovers, published whole for other threads, and cached in a sidecar.

The sidecar, `<journal>/index.json`, spares start-up and the CLI from reading every segment
again. A cached summary is trusted only while its segment's size and modification time are
those recorded; any other segment is walked again (`blockio.journal.index.walk_segment`),
payloads verified against their XXH3 digests, and a damaged one is summarized as damaged (the
points that need it are not listed). The sidecar is a cache: lost or unreadable, it is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from blockio.durable import write_atomically
from blockio.journal.index import SegmentSummary, walk_segment
from blockio.journal.segments import segment_numbers, segment_path

log = logging.getLogger(__name__)

SIDECAR_NAME = "index.json"
SIDECAR_VERSION = 1


def read_sidecar(directory: Path) -> dict[int, SegmentSummary]:
    """The cached summaries of `directory`'s segments by number; {} when there is no usable
    sidecar (missing, unreadable, another version: it is only a cache)."""
    try:
        document = json.loads((directory / SIDECAR_NAME).read_bytes())
        if document.get("version") != SIDECAR_VERSION:
            return {}
        summaries = [SegmentSummary.from_json(entry) for entry in document["segments"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
    return {summary.number: summary for summary in summaries}


def write_sidecar(directory: Path, disk: str, summaries: Sequence[SegmentSummary]) -> None:
    """Replace the sidecar atomically (`write_atomically`). Not synced: lost or torn by a
    power loss, it is rebuilt, and an old one is trusted only where it still matches.

    Raises OSError when it cannot be written (callers log it: the sidecar is only a cache).
    """
    document = {
        "version": SIDECAR_VERSION,
        "disk": disk,
        "segments": [summary.to_json() for summary in summaries],
    }
    data = json.dumps(document, separators=(",", ":")).encode()
    write_atomically(directory / SIDECAR_NAME, data, durable=False)


def load_summaries(directory: Path, disk: str) -> tuple[list[SegmentSummary], bool]:
    """A summary of every segment in `directory`, oldest first: from the sidecar where it still
    matches the file, by walking the segment otherwise. Returns (summaries, walked): `walked` is
    True when a segment had to be walked (the caller may then refresh the sidecar). Reads only.

    A segment pruned while this runs is left out. Raises OSError for other read failures.
    """
    numbers = segment_numbers(directory)
    cached = read_sidecar(directory)
    summaries: list[SegmentSummary] = []
    walked = False
    for number in numbers:
        path = segment_path(directory, number)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        summary = cached.get(number)
        if (
            summary is None
            or summary.size_bytes != stat.st_size
            or summary.mtime_ns != stat.st_mtime_ns
        ):
            try:
                walk = walk_segment(path, disk, last=number == numbers[-1])
            except FileNotFoundError:
                continue
            summary = walk.tally.summary(number, walk.size_bytes, walk.mtime_ns)
            walked = True
        summaries.append(summary)
    return summaries, walked


class SegmentCatalog:
    """The summaries of one journal's sealed segments, and what was last published of all of
    them (the current segment's summary comes from the journal's writer)."""

    def __init__(self, directory: Path, disk_id: str, sealed: Sequence[SegmentSummary]) -> None:
        self.directory = directory
        self.disk_id = disk_id
        self.sealed = list(sealed)
        self.published: tuple[SegmentSummary, ...] = ()

    def publish(self, current: SegmentSummary) -> None:
        """Replace what `published` holds (whole: readers on other threads never see it change
        in place) by the sealed summaries and `current`."""
        self.published = (*self.sealed, current)

    @property
    def last_commit_seq(self) -> int:
        """The newest batch with a commit record in what was published (0: none)."""
        return max((s.last_commit_seq for s in self.published), default=0)

    def pending_undo(self, seq: int) -> tuple[int, int]:
        """(records, bytes of old data) of batch `seq` found without its commit record in what
        was published. (0, 0) if none."""
        for summary in self.published:
            for pending_seq, records, undo_bytes in summary.pending:
                if pending_seq == seq:
                    return records, undo_bytes
        return 0, 0

    def mark_damaged(self, number: int, damage: str) -> bool:
        """Note `damage` on sealed segment `number` if it had none; returns whether it changed
        (False for a segment pruned meanwhile)."""
        for i, summary in enumerate(self.sealed):
            if summary.number == number and summary.damage is None:
                self.sealed[i] = replace(summary, damage=damage)
                self.log_damage(self.sealed[i])
                return True
        return False

    def refresh(self, number: int) -> None:
        """Summarize sealed segment `number` again after it was truncated."""
        walk = walk_segment(segment_path(self.directory, number), self.disk_id, last=False)
        summary = walk.tally.summary(number, walk.size_bytes, walk.mtime_ns)
        self.sealed = [summary if s.number == number else s for s in self.sealed]

    def save(self, current: SegmentSummary) -> None:
        """Write the sealed summaries and `current` to the sidecar. Raises OSError."""
        write_sidecar(self.directory, self.disk_id, [*self.sealed, current])

    def save_quietly(self, current: SegmentSummary) -> None:
        """`save`, logging a failure instead of raising it."""
        try:
            self.save(current)
        except OSError as exc:
            # Only a cache: the next start walks the segments instead.
            log.warning("undo journal %s: index not saved: %s", self.directory, exc)

    def log_damage(self, summary: SegmentSummary) -> None:
        """Say, as an error, that the points needing the damaged segment of `summary` are gone."""
        log.error(
            "undo journal %s: DAMAGED: %s; recovery points of disk %s that need this segment "
            "(older than batch %d) cannot be restored and are not listed (see mtagent check)",
            segment_path(self.directory, summary.number),
            summary.damage,
            self.disk_id,
            summary.last_seq,
        )
