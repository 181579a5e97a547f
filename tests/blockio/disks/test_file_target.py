"""File targets made ready: what the plan says for what is at the path, and a creation that
never touches a file that appeared after the plan was made."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockio.disks.file_target import (
    FileTargetAction,
    FileTargetRefused,
    create_file_target,
    plan_file_target,
)


def test_a_file_that_appears_after_the_plan_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    target = tmp_path / "d0.img"
    plan = plan_file_target("d0", target, 1 << 20)
    assert plan.action is FileTargetAction.CREATE
    target.write_bytes(b"written meanwhile")

    with pytest.raises(FileTargetRefused, match="cannot be created: File exists"):
        create_file_target(plan)

    assert target.read_bytes() == b"written meanwhile"


def test_a_directory_at_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d0.img").mkdir()

    with pytest.raises(FileTargetRefused, match="is neither a regular file nor a block device"):
        plan_file_target("d0", tmp_path / "d0.img", 1 << 20)


def test_a_plan_to_leave_a_target_alone_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "d0.img"
    target.write_bytes(b"kept")
    plan = plan_file_target("d0", target, None)

    create_file_target(plan)

    assert (plan.action, plan.size_bytes, target.read_bytes()) == (
        FileTargetAction.EXISTS,
        4,
        b"kept",
    )


def test_a_link_to_nothing_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    (tmp_path / "d0.img").symlink_to(tmp_path / "gone.img")

    with pytest.raises(FileTargetRefused, match=r"is a link to .*gone\.img, which does not exist"):
        plan_file_target("d0", tmp_path / "d0.img", 1 << 20)

    assert not (tmp_path / "gone.img").exists()
