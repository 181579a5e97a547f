"""`mtagent targets create`: every missing file target of the config is created at its
source_size (sparse, mode 0600), the targets that are there are left alone, block devices are
never created or touched, and when any target is wrong nothing is created at all."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LoopDeviceFactory
from tests.support.agent_harness import cli, run_mtagent

MiB = 1 << 20
SCSI_UUID = "36000c29a1b2c3d4e5f60718293a4b5c6"

HEAD = """
[server]
listen = "127.0.0.1:9443"
state_dir = "state"

[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"

[retention]
path = "retention"
"""


def disk(disk_id: str, path: str | Path, source_size: str | None = None) -> str:
    """One [[disks]] entry naming its target by path."""
    size = f'source_size = "{source_size}"\n' if source_size is not None else ""
    return f'\n[[disks]]\nid = "{disk_id}"\ngroup = "g1"\npath = "{path}"\n{size}'


def write_config(directory: Path, *disks: str) -> Path:
    config = directory / "agent.toml"
    config.write_text(HEAD + "".join(disks))
    return config


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "targets").mkdir()
    return tmp_path


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave a new file readable by everyone."""
    old = os.umask(0o000)
    yield
    os.umask(old)


def created_json(config: Path) -> list[dict[str, object]]:
    code, out, err = cli("targets", "create", "--config", config, "--json")
    assert (code, err) == (0, ""), err
    document = json.loads(out)
    assert document["schema"] == 1
    return list(document["targets"])


def refusal(config: Path) -> str:
    """Run `targets create`; assert it exits 1 with one line on stderr; return the line."""
    code, out, err = cli("targets", "create", "--config", config)
    assert code == 1, out
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mtagent: "), err
    return err


def test_missing_file_targets_are_created_sparse_at_their_source_size_mode_0600(
    workdir: Path, open_umask: None
) -> None:
    config = write_config(
        workdir,
        disk("vm1-disk0", "targets/vm1-disk0.img", "32MiB"),
        disk("vm1-disk1", "targets/vm1-disk1.img", "16MiB"),
    )

    done = run_mtagent("targets", "create", "--config", config)

    assert (done.returncode, done.stderr) == (0, "")
    for name, size in (("vm1-disk0", 32 * MiB), ("vm1-disk1", 16 * MiB)):
        target = workdir / "targets" / f"{name}.img"
        found = target.stat()
        assert found.st_size == size
        assert stat.S_IMODE(found.st_mode) == 0o600
        assert found.st_blocks == 0, "the target was written, not left a hole"
        assert f"{name}  {target}  {size // MiB}.0 MiB  created" in done.stdout


def test_targets_that_exist_are_left_alone_so_a_second_run_changes_nothing(
    workdir: Path,
) -> None:
    kept = workdir / "targets" / "kept.img"
    content = os.urandom(MiB)
    kept.write_bytes(content)
    kept.chmod(0o640)
    before = kept.stat()
    config = write_config(
        workdir,
        disk("kept", kept, "1MiB"),
        disk("no-size-stated", kept.with_name("other.img")),
        disk("new", "targets/new.img", "1MiB"),
    )
    (workdir / "targets" / "other.img").write_bytes(b"x" * 4096)

    first = created_json(config)
    second = created_json(config)

    assert [(t["disk"], t["result"], t["size_bytes"]) for t in first] == [
        ("kept", "exists", MiB),
        ("no-size-stated", "exists", 4096),
        ("new", "created", MiB),
    ]
    assert [t["result"] for t in second] == ["exists", "exists", "exists"]
    assert kept.read_bytes() == content
    after = kept.stat()
    assert (after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (before.st_mtime_ns, 0o640)
    assert (workdir / "targets" / "other.img").read_bytes() == b"x" * 4096


def test_a_file_of_another_size_is_refused_and_nothing_is_created(workdir: Path) -> None:
    short = workdir / "targets" / "short.img"
    short.write_bytes(b"s" * MiB)
    config = write_config(
        workdir,
        disk("new", "targets/new.img", "2MiB"),
        disk("short", short, "2MiB"),
    )

    line = refusal(config)

    assert f"short: {short} exists with {MiB} bytes, but source_size is {2 * MiB} bytes" in line
    assert "nothing was created" in line
    assert short.read_bytes() == b"s" * MiB
    assert not (workdir / "targets" / "new.img").exists()


def test_a_target_whose_directory_is_missing_is_refused_naming_the_directory(
    workdir: Path,
) -> None:
    config = write_config(
        workdir,
        disk("new", "targets/new.img", "1MiB"),
        disk("lost", "unmounted/lost.img", "1MiB"),
    )

    line = refusal(config)

    assert f"lost: {workdir}/unmounted/lost.img cannot be created" in line
    assert f"its directory {workdir}/unmounted does not exist" in line
    assert not (workdir / "unmounted").exists()
    assert not (workdir / "targets" / "new.img").exists()


def test_a_missing_target_without_source_size_is_refused(workdir: Path) -> None:
    config = write_config(workdir, disk("unsized", "targets/unsized.img"))

    line = refusal(config)

    assert "unsized:" in line and "has no source_size" in line
    assert list((workdir / "targets").iterdir()) == []


def test_a_missing_block_device_is_an_error_never_a_file_made_in_its_place(
    workdir: Path,
) -> None:
    device = Path("/dev/mtagent-test-not-attached")
    assert not device.exists()
    config = write_config(
        workdir,
        disk("new", "targets/new.img", "1MiB"),
        disk("vm9-disk0", device, "1MiB"),
    )

    line = refusal(config)

    assert f"vm9-disk0: {device} does not exist: a block device is attached" in line
    assert not device.exists()
    assert not (workdir / "targets" / "new.img").exists()


def test_block_devices_are_left_alone_by_path_and_by_scsi_uuid(
    workdir: Path, loop_device: LoopDeviceFactory
) -> None:
    device = loop_device(MiB)
    content = os.urandom(MiB)
    device.write_bytes(content)
    by_scsi_id = f'\n[[disks]]\nid = "by-id"\ngroup = "g1"\nscsi_uuid = "{SCSI_UUID}"\n'
    config = write_config(workdir, disk("by-path", device, "2MiB"), by_scsi_id)

    targets = created_json(config)
    code, table, _ = cli("targets", "create", "--config", config)

    assert targets == [
        {
            "disk": "by-path",
            "path": str(device),
            "scsi_uuid": None,
            "size_bytes": None,
            "result": "block_device",
        },
        {
            "disk": "by-id",
            "path": None,
            "scsi_uuid": SCSI_UUID[1:],
            "size_bytes": None,
            "result": "block_device",
        },
    ]
    assert code == 0
    assert f"by-id    scsi_uuid {SCSI_UUID[1:]}  -     block device, left alone" in table
    assert device.read_bytes() == content
