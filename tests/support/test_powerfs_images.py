"""Crash images of the power-loss file system (no FUSE needed: its state alone): an image is what
a cut at that moment would leave, and taking one changes nothing in the running file system."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support.powerfs import PAGE, Node, PowerLossState


def _file(state: PowerLossState, name: str, data: bytes = b"") -> Node:
    node = Node(stat.S_IFREG | 0o644, bytearray(data))
    node.pending.append(("w", 0, data))
    state.root.entries[name] = node
    return node


def _write(node: Node, offset: int, data: bytes) -> None:
    node.data[offset : offset + len(data)] = data
    node.pending.append(("w", offset, data))


def test_an_image_keeps_what_was_synced_and_drops_the_pending_writes(tmp_path: Path) -> None:
    state = PowerLossState("strict")
    node = _file(state, "f", b"a" * PAGE)
    state.sync_all()
    _write(node, 0, b"b" * PAGE)

    state.crash_image(tmp_path / "image", seed=1, keep=0.0)

    assert (tmp_path / "image" / "f").read_bytes() == b"a" * PAGE
    assert node.data == b"b" * PAGE and node.pending, "the file system goes on as before"


def test_an_image_under_the_strict_model_lacks_a_file_whose_directory_was_not_synced(
    tmp_path: Path,
) -> None:
    state = PowerLossState("strict")
    node = _file(state, "new", b"x" * 10)
    state.sync_file(node)  # its data, not its name

    state.crash_image(tmp_path / "image", seed=1, keep=0.0)

    assert os.listdir(tmp_path / "image") == []


def test_an_image_under_the_lenient_model_keeps_a_name_any_fsync_committed(
    tmp_path: Path,
) -> None:
    state = PowerLossState("lenient")
    node = _file(state, "new", b"x" * 10)
    state.sync_file(node)

    state.crash_image(tmp_path / "image", seed=1, keep=0.0)

    assert (tmp_path / "image" / "new").read_bytes() == b"x" * 10


def test_an_image_keeps_each_pending_page_by_its_own_draw(tmp_path: Path) -> None:
    state = PowerLossState("strict")
    node = _file(state, "f", bytes(8 * PAGE))
    state.sync_all()
    _write(node, 0, b"\xff" * (8 * PAGE))

    state.crash_image(tmp_path / "image", seed=3, keep=0.5)

    pages = (tmp_path / "image" / "f").read_bytes()
    kept = {pages[i : i + PAGE] for i in range(0, len(pages), PAGE)}
    assert kept == {bytes(PAGE), b"\xff" * PAGE}, "some pages kept, some lost, none torn"


def test_an_unchanged_file_keeps_its_modification_time_and_a_changed_one_gets_a_new_one(
    tmp_path: Path,
) -> None:
    # The journal's index trusts a segment summary while size and time match: an image must not
    # make every file look touched, nor a lost write look untouched.
    state = PowerLossState("strict")
    same, changed = _file(state, "same", b"s"), _file(state, "changed", b"c")
    state.sync_all()
    same.mtime_ns = changed.mtime_ns = 1_000_000_000
    _write(changed, 0, b"C")

    state.crash_image(tmp_path / "image", seed=1, keep=0.0)

    assert (tmp_path / "image" / "same").stat().st_mtime_ns == 1_000_000_000
    assert (tmp_path / "image" / "changed").stat().st_mtime_ns > 1_000_000_000


def test_an_armed_image_is_written_before_the_operation_that_follows_that_count(
    tmp_path: Path,
) -> None:
    state = PowerLossState("strict")
    node = _file(state, "f", b"1")
    state.sync_all()
    state.images_dir = tmp_path
    state.image_at = {state.mutations + 1}

    state.mutated("/f")  # operation 1: counted, nothing armed before it
    _write(node, 0, b"2")
    state.sync_file(node)
    state.mutated("/f")  # the image comes before operation 2, after the synced write

    [image] = os.listdir(tmp_path)
    assert image == f"{1:09d}" and (tmp_path / image / "f").read_bytes() == b"2"
    assert state.images == 1 and state.image_at == set()
