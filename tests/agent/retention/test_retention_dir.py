"""The retention directory at start-up: created only when its parent exists, refused when it is a
file, and with `require_mount = true` refused on the root file system; every refusal one line,
exit 1, before any disk is opened (no state store yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import RetentionConfig
from agent.retention.drive import RetentionDirRefused, mount_point_of, prepare_retention_dir
from blockio.disks.safety import Mount, parse_mountinfo
from tests.support.agent_harness import AgentProcess, run_mtagent


def serve_refused(agent: AgentProcess) -> str:
    """Run `mtagent serve` on the agent's config; assert it refused to start, as one line with
    exit 1 and before opening any disk; return that line."""
    result = run_mtagent("serve", "--config", agent.config_path, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mtagent: ")
    assert "Traceback" not in result.stderr
    assert not (agent.workdir / "state" / "state.db").exists()
    return result.stderr


def test_a_retention_path_whose_parent_is_missing_is_refused_and_not_created(
    tmp_path: Path,
) -> None:
    drive = tmp_path / "mnt" / "retention"
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 1 << 20}, retention_path=drive)
    line = serve_refused(agent)
    assert f"retention path {drive} does not exist" in line
    assert "mount the retention drive" in line
    assert not (tmp_path / "mnt").exists()


def test_a_retention_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    drive = tmp_path / "retention"
    drive.write_text("not a directory")
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 1 << 20}, retention_path=drive)
    assert f"retention path {drive} is not a directory" in serve_refused(agent)
    assert drive.read_text() == "not a directory"


def test_a_missing_retention_directory_is_created_when_its_parent_exists(
    tmp_path: Path,
) -> None:
    drive = tmp_path / "retention"
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 1 << 20}, retention_path=drive)
    agent.start()
    try:
        assert drive.is_dir()
    finally:
        agent.stop()


def on_root_file_system(path: Path) -> bool:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return mount_point_of(path.resolve(), mounts) == "/"


def test_require_mount_refuses_a_retention_directory_on_the_root_file_system(
    tmp_path: Path,
) -> None:
    if not on_root_file_system(tmp_path):
        pytest.skip("the temporary directory is on a file system of its own here")
    drive = tmp_path / "retention"
    agent = AgentProcess.create(tmp_path / "agent", {"d0": 1 << 20}, retention_path=drive)
    agent.retention_options = {"require_mount": True}
    agent.write_config()
    line = serve_refused(agent)
    assert f"retention path {drive} is on the root file system" in line
    assert "require_mount = false" in line
    assert not drive.exists()


def fake_proc(tmp_path: Path, *mount_points: Path) -> Path:
    """A /proc whose self/mountinfo holds / and `mount_points`."""
    lines = ["1 0 8:1 / / rw - ext4 /dev/sda1 rw"]
    lines += [f"{n} 1 8:{n} / {p} rw - xfs /dev/sdb{n} rw" for n, p in enumerate(mount_points, 2)]
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    return tmp_path / "proc"


def test_require_mount_accepts_a_retention_directory_on_a_mounted_drive(tmp_path: Path) -> None:
    drive = tmp_path / "mnt" / "retention"
    drive.parent.mkdir()
    proc = fake_proc(tmp_path, (tmp_path / "mnt").resolve())
    prepare_retention_dir(RetentionConfig(drive, require_mount=True), proc=proc)
    assert drive.is_dir()


def test_require_mount_looks_at_the_mount_not_at_a_name_that_starts_like_it(
    tmp_path: Path,
) -> None:
    drive = tmp_path / "mnt2" / "retention"
    drive.mkdir(parents=True)
    proc = fake_proc(tmp_path, (tmp_path / "mnt").resolve())
    with pytest.raises(RetentionDirRefused, match="is on the root file system"):
        prepare_retention_dir(RetentionConfig(drive, require_mount=True), proc=proc)


def test_the_mount_point_of_a_path_is_the_innermost_mount_that_holds_it() -> None:
    mounts = [
        Mount(1, "/", "/dev/sda1"),
        Mount(2, "/srv", "/dev/sdb1"),
        Mount(3, "/srv/retention", "/dev/sdc1"),
    ]
    assert mount_point_of(Path("/srv/retention/d0"), mounts) == "/srv/retention"
    assert mount_point_of(Path("/srv/other"), mounts) == "/srv"
    assert mount_point_of(Path("/var/lib"), mounts) == "/"
