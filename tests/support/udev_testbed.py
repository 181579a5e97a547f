"""Fake SCSI disks for tests: a umockdev testbed that the real pyudev code reads.

    with UdevTestbed.start() as bed:
        sdb = bed.add_disk("sdb", node=loop, scsi_id=UUID)   # VMware-style udev record, "add" event
        bed.run_python("from blockio.disks.discovery import ...")  # a child sees the fake disks
        bed.remove_disk(sdb)                                 # "remove" event, then gone

Each fake disk is a udev record and sysfs entry whose device node (DEVNAME) is a real loop
device, so what a test resolves through udev is then really opened, written and read back. The
testbed lives in a controller process run by the system Python under umockdev-wrapper
(tests/support/udev_testbed_controller.py, it needs python3-gi); children see it through
LD_PRELOAD=libumockdev-preload.so.0 and UMOCKDEV_DIR. Skipped only where umockdev is not installed
(scripts/test.sh installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.agent_harness import REPO, run_mtagent

SYSTEM_PYTHON = "/usr/bin/python3"
CONTROLLER = Path(__file__).with_name("udev_testbed_controller.py")
PRELOAD = "libumockdev-preload.so.0"
MISSING = (
    "umockdev is not installed (Debian packages umockdev, gir1.2-umockdev-1.0, python3-gi; "
    "scripts/test.sh installs them)"
)


def umockdev_available() -> bool:
    """Whether a testbed can be made here: the GI binding for the controller, the preload
    library for the children."""
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("umockdev-wrapper") is None:
        return False
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import ctypes, gi; gi.require_version('UMockdev', '1.0'); "
            f"from gi.repository import UMockdev; ctypes.CDLL('{PRELOAD}')",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def vmware_disk_properties(scsi_id: str | None) -> dict[str, str]:
    """The udev properties of a VMware virtual disk; without an id, what a VM without
    disk.EnableUUID = TRUE shows (vendor and model, no serial, no WWN)."""
    props = {
        "ID_BUS": "scsi",
        "ID_TYPE": "disk",
        "ID_VENDOR": "VMware",
        "ID_MODEL": "Virtual_disk",
        "ID_REVISION": "2.0",
        "ID_SCSI": "1",
    }
    if scsi_id is not None:
        props |= {
            "ID_SERIAL": f"3{scsi_id}",
            "ID_SERIAL_SHORT": scsi_id,
            "ID_SCSI_SERIAL": scsi_id,
            "ID_WWN": f"0x{scsi_id[:16]}",
            "ID_WWN_VENDOR_EXTENSION": f"0x{scsi_id[16:]}",
            "ID_WWN_WITH_EXTENSION": f"0x{scsi_id}",
        }
    return props


class UdevTestbed:
    """A running controller and the environment its children need."""

    def __init__(self, process: subprocess.Popen[str], root: str) -> None:
        self._process = process
        self.root = root

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[UdevTestbed]:
        """A fresh testbed (no disks) for the `with` block; skips the test without umockdev."""
        if not umockdev_available():
            pytest.skip(MISSING)
        # Under umockdev-wrapper (the preload library) the testbed also sends uevents; without
        # it, it only builds the fake sysfs.
        process = subprocess.Popen(
            ["umockdev-wrapper", SYSTEM_PYTHON, str(CONTROLLER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        root = None
        try:
            assert process.stdout is not None
            root = json.loads(process.stdout.readline())["root"]
            yield cls(process, root)
        finally:
            try:
                if process.poll() is None and process.stdin is not None:
                    process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    process.stdin.flush()
                process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            if root is not None:
                # The controller removes it, unless umockdev aborted it.
                shutil.rmtree(root, ignore_errors=True)

    def _ask(self, **command: object) -> dict[str, object]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"umockdev controller died ({self._process.wait()})")
        return dict(json.loads(line))

    @property
    def env(self) -> dict[str, str]:
        """The environment of a child that sees this testbed instead of the host's devices."""
        preload = os.environ.get("LD_PRELOAD")
        return {
            **os.environ,
            "UMOCKDEV_DIR": self.root,
            "LD_PRELOAD": f"{PRELOAD}:{preload}" if preload else PRELOAD,
            "PYTHONPATH": str(REPO),
        }

    def add_disk(
        self,
        name: str,
        *,
        node: Path,
        scsi_id: str | None = None,
        properties: dict[str, str] | None = None,
        attributes: dict[str, str] | None = None,
        holders: tuple[str, ...] = (),
    ) -> str:
        """Attach a fake VMware SCSI disk whose device node is the real block device `node`
        (its size, sector size and number are the real ones); udev sends "add". Returns the
        fake sysfs path. `properties` and `attributes` replace or extend the VMware ones."""
        st = os.stat(node)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        size = int(Path(f"/sys/dev/block/{major}:{minor}/size").read_text())
        sector = Path(f"/sys/dev/block/{major}:{minor}/queue/logical_block_size").read_text()
        props = {
            "DEVNAME": str(node),
            "DEVTYPE": "disk",
            "MAJOR": str(major),
            "MINOR": str(minor),
            **vmware_disk_properties(scsi_id),
        }
        if scsi_id is not None:
            props["DEVLINKS"] = (
                f"/dev/disk/by-id/scsi-3{scsi_id} /dev/disk/by-id/wwn-0x{scsi_id} "
                f"/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:{minor}:0"
            )
        attrs = {
            "dev": f"{major}:{minor}",
            "size": str(size),
            "queue/logical_block_size": sector.strip(),
            "device/vendor": "VMware  ",
            "device/model": "Virtual disk    ",
        }
        if scsi_id is not None:
            attrs["device/wwid"] = f"naa.{scsi_id}"
        for holder in holders:
            attrs[f"holders/{holder}"] = ""
        answer = self._ask(
            op="add_disk",
            name=name,
            attributes=attrs | (attributes or {}),
            properties=props | (properties or {}),
            passthrough=str(node),
        )
        return str(answer["sys_path"])

    def remove_disk(self, sys_path: str) -> None:
        """udev sends "remove" for the disk, and it is gone from udev and sysfs."""
        self._ask(op="remove_disk", sys_path=sys_path)

    def link(self, path: str, target: str) -> None:
        """A symlink in the fake /dev (e.g. a /dev/disk/by-id link)."""
        self._ask(op="link", path=path, target=target)

    def run_python(self, code: str) -> subprocess.CompletedProcess[str]:
        """Run `code` in a child that sees this testbed; fails the test if it fails."""
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def mtagent(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """`mtagent ARGS` in a child that sees this testbed."""
        return run_mtagent(*args, env=self.env, timeout=60)
