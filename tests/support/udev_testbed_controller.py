"""The umockdev side of tests/support/udev_testbed.py, run by the system Python (python3-gi) under
umockdev-wrapper.

It owns a UMockdev.Testbed: a fake /sys and udev database that processes started with
LD_PRELOAD=libumockdev-preload.so.0 and UMOCKDEV_DIR=<root> see instead of the real ones, and a
fake netlink socket on which it sends uevents. It reads one JSON command per line on stdin and
answers one JSON line on stdout:

    {"op": "add_disk", "name": "sdb", "attributes": {...}, "properties": {...},
     "passthrough": "/dev/loop3"}      -> {"sys_path": "/sys/devices/sdb"}  (and an "add" uevent)
    {"op": "remove_disk", "sys_path": "/sys/devices/sdb"}  -> {}  (a "remove" uevent first)
    {"op": "link", "path": "/dev/disk/by-id/scsi-3...", "target": "../../loop3"} -> {}
    {"op": "quit"}

`passthrough` names a real device node: libumockdev-preload sends every ioctl on a /dev node to
the testbed, so a handler runs each one on the real device (BLKGETSIZE64 and BLKSSZGET then
answer for the real loop device behind the fake SCSI disk).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402


class PassThrough(UMockdev.IoctlBase):  # type: ignore[misc]
    """Runs the client's ioctl on the real device it opened."""

    def do_handle_ioctl(self, client: UMockdev.IoctlClient) -> bool:
        result, errno_ = client.execute()
        client.complete(result, errno_)
        return True


def flat(mapping: dict[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]


def main() -> None:
    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    handlers: dict[str, PassThrough] = {}
    print(json.dumps({"root": root}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            answer: dict[str, object] = {}
            if op == "add_disk":
                node = command.get("passthrough")
                if node and node not in handlers:
                    handlers[node] = PassThrough()
                    testbed.attach_ioctl(node, handlers[node])
                sys_path = testbed.add_device(
                    "block",
                    command["name"],
                    None,
                    flat(command["attributes"]),
                    flat(command["properties"]),
                )
                answer = {"sys_path": sys_path}
            elif op == "remove_disk":
                testbed.uevent(command["sys_path"], "remove")
                testbed.remove_device(command["sys_path"])
            elif op == "link":
                path = root + command["path"]
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.symlink(command["target"], path)
            elif op == "quit":
                break
            print(json.dumps(answer), flush=True)
    finally:
        # Finalizing the testbed removes its directory; the rmtree is for when it does not.
        del testbed, handlers
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
