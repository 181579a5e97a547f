"""A file system that can lose power: FUSE (mfusepy over libfuse3), all in memory, keeping per file
what was made durable apart from what was only written, so that a test can cut the power at an
exact operation and start the agent again on what a real disk would have kept.

Durability, as POSIX promises it and no more:

- A file's data is durable once `fsync`/`fdatasync` of it returns. Writes and truncations after
  that are pending.
- Directory entries (create, mkdir, unlink, rename) under the `strict` model are durable only
  once the directory is fsynced; under the `lenient` model (ext4-like: one metadata journal,
  committed by any fsync) every fsync of anything makes the whole namespace durable.
- At a power cut every file goes back to its durable data, each directory to its durable
  entries; with `keep` > 0 each pending write, page by page, and each pending truncation
  survives with that probability, as a disk with a volatile cache (or delayed allocation) may
  have written some of them: zeros where a page was lost, the size as the kept operations left
  it. A file whose data changed gets a new modification time.

A cut that keeps everything (`keep` 1.0) is a SIGKILL at that exact operation instead: the files
stay as the killed process left them in the page cache.

Disk faults: operations (reads included) on the paths under a prefix fail with a given errno
(EIO, ENOSPC) after a given number of them, until cleared.

The power is cut either now or after a given number of further mutating operations (a write,
truncation, sync, create, unlink, rename, ...), which makes the moment reproducible. From the
cut until power comes back, every operation fails with EIO, as a vanished disk does; the test
then kills the agent, turns the power on and starts it again.

Run as a process: `python -m tests.support.powerfs MOUNTPOINT CONTROL_SOCKET --model strict`;
`PowerFS` below starts it and speaks its control protocol (one JSON object a line over a Unix
socket). Test infrastructure only: it is not shipped with mtagent.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096
MODELS = ("strict", "lenient")


@dataclass(eq=False)
class Node:
    """A file or a directory. `data`/`entries` are what processes see; `durable`/`durable_entries`
    what survives a power cut; `pending` the file operations since its last sync, in order."""

    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)
    entries: dict[str, Node] = field(default_factory=dict)
    durable_entries: dict[str, Node] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _write_into(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _truncate(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(bytes(size - len(buf)))


class PowerLossState:
    """The file tree and its durable shadow; every method is called under one lock."""

    def __init__(self, model: str) -> None:
        if model not in MODELS:
            raise ValueError(f"model {model!r} is not one of {MODELS}")
        self.model = model
        self.root = Node(stat.S_IFDIR | 0o755)
        self.powered = True
        self.cut_after: int | None = None
        self.cut_seed = 0
        self.cut_keep = 0.0
        self.mutations = 0
        self.cuts = 0
        self.fault_prefix: str | None = None
        self.fault_errno = errno.EIO
        self.fault_after = 0
        self.faults_hit = 0
        # Crash images to write (`crash_image`) before the operation that follows these many
        # mutating ones, into `images_dir`, each named by that count.
        self.image_at: set[int] = set()
        self.images_dir: Path | None = None
        self.image_seed = 0
        self.image_keep = 0.0
        self.images = 0
        self.handles: dict[int, Node] = {}
        self._next_handle = 1

    # -- what a cut keeps ------------------------------------------------------------------

    def mutated(self, path: str) -> None:
        """Count one mutating operation on `path`; cut the power when the armed count is
        reached. Raises OSError: EIO without power, an injected fault (`check_fault`)."""
        self.check_power()
        self.check_fault(path)
        if self.mutations in self.image_at and self.images_dir is not None:
            self.image_at.discard(self.mutations)
            self.write_image(self.images_dir, self.mutations)
        self.mutations += 1
        if self.cut_after is not None:
            self.cut_after -= 1
            if self.cut_after <= 0:
                self.cut(self.cut_seed, self.cut_keep)
                raise OSError(errno.EIO, "power cut")

    def write_image(self, directory: Path, label: int) -> None:
        """The crash image of now as `directory/<label>` (complete once it has that name), its
        pending writes kept by a seed of its own, so that the same operations give the same
        image."""
        part = directory / f"{label:09d}.part"
        self.crash_image(part, self.image_seed * 1_000_003 + label, self.image_keep)
        part.rename(directory / f"{label:09d}")
        self.images += 1

    def check_fault(self, path: str) -> None:
        """Fail an operation on a path under the armed prefix once the armed count of them has
        passed, with the armed errno, until the fault is cleared (a failing disk, a full one)."""
        if self.fault_prefix is None or not (path or "").startswith(self.fault_prefix):
            return
        if self.fault_after > 0:
            self.fault_after -= 1
            return
        self.faults_hit += 1
        raise OSError(self.fault_errno, os.strerror(self.fault_errno))

    def check_power(self) -> None:
        if not self.powered:
            raise OSError(errno.EIO, "no power")

    def cut(self, seed: int, keep: float) -> None:
        """Lose power now: what was not durable is gone (but for what `keep` keeps). `keep` 1.0
        is a process killed at this operation rather than a power cut: every write and every
        directory entry stays, as the kernel keeps them for a process that dies."""
        if keep >= 1.0:
            self.sync_all()
        now = time.time_ns()
        for node, survived in self._survivors(seed, keep).items():
            if node.is_dir:
                node.entries = dict(node.durable_entries)
                continue
            if survived != node.data:
                node.mtime_ns = now
            node.data = survived
            node.durable = bytearray(survived)
            node.pending = []
        self.powered = False
        self.cut_after = None
        self.cuts += 1
        self.handles.clear()

    def _survivors(self, seed: int, keep: float) -> dict[Node, bytearray]:
        """What a cut now would leave of every node reachable through durable entries: a
        file's data (its durable bytes and, with probability `keep` each, its pending pages and
        truncations), an empty bytearray for a directory (its durable entries are what stays).
        Changes nothing: `cut` applies it, `crash_image` copies it out."""
        rng = random.Random(seed)
        result: dict[Node, bytearray] = {}

        def settle(node: Node) -> None:
            if node in result:
                return
            if node.is_dir:
                result[node] = bytearray()
                for child in node.durable_entries.values():
                    settle(child)
                return
            survived = bytearray(node.durable)
            for kind, offset, data in node.pending:
                if kind == "t":
                    if rng.random() < keep:
                        _truncate(survived, offset)
                    continue
                # Page by page, on the file's own page grid.
                position = offset
                while position < offset + len(data):
                    end = min((position // PAGE + 1) * PAGE, offset + len(data))
                    if rng.random() < keep:
                        _write_into(survived, position, data[position - offset : end - offset])
                    position = end
            result[node] = survived

        settle(self.root)
        return result

    def crash_image(self, destination: Path, seed: int, keep: float) -> int:
        """Write into the new directory `destination` the tree a cut now (`seed`, `keep`) would
        leave, each file with the modification time it would have, without cutting: the files
        system goes on as if nothing happened. Returns the bytes written.

        This is what makes crash states cheap (docs/design.md, "Choices"): one run of the agent
        yields a state at every operation picked, each checked offline by start-up recovery."""
        survivors = self._survivors(seed, keep)
        now = time.time_ns()
        written = 0

        def copy(node: Node, path: Path) -> None:
            nonlocal written
            if node.is_dir:
                path.mkdir(mode=0o755)
                for name, child in node.durable_entries.items():
                    copy(child, path / name)
                os.chmod(path, stat.S_IMODE(node.mode))
                return
            data = survivors[node]
            path.write_bytes(data)
            written += len(data)
            os.chmod(path, stat.S_IMODE(node.mode))
            mtime = node.mtime_ns if data == node.data else now
            os.utime(path, ns=(mtime, mtime))

        copy(self.root, destination)
        return written

    def sync_file(self, node: Node) -> None:
        if node.is_dir:
            node.durable_entries = dict(node.entries)
        else:
            for kind, offset, data in node.pending:
                if kind == "t":
                    _truncate(node.durable, offset)
                else:
                    _write_into(node.durable, offset, data)
            node.pending = []
        if self.model == "lenient":
            self._commit_namespace(self.root, set())

    def _commit_namespace(self, node: Node, seen: set[int]) -> None:
        if id(node) in seen or not node.is_dir:
            return
        seen.add(id(node))
        node.durable_entries = dict(node.entries)
        for child in node.entries.values():
            self._commit_namespace(child, seen)

    def sync_all(self) -> None:
        """Make everything durable (a test's setup, before the first cut)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.is_dir:
                node.durable_entries = dict(node.entries)
                stack.extend(node.entries.values())
            else:
                node.durable = bytearray(node.data)
                node.pending = []

    # -- the tree --------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir or part not in node.entries:
                raise OSError(errno.ENOENT, path)
            node = node.entries[part]
        return node

    def parent_of(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.lookup(head or "/")
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, path)
        return parent, name

    def add_handle(self, node: Node) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self.handles[handle] = node
        return handle

    def node(self, path: str, fh: int | None) -> Node:
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        return self.lookup(path)

    def used_bytes(self) -> int:
        total, stack, seen = 0, [self.root], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            total += len(node.data)
            stack.extend(node.entries.values())
        return total


def serve(mountpoint: str, control: str, model: str, capacity: int) -> None:
    """Mount the file system at `mountpoint` and answer control requests on `control` until it
    is unmounted."""
    import mfusepy

    state = PowerLossState(model)
    lock = threading.Lock()

    def locked(fn: Any) -> Any:
        def call(*args: Any) -> Any:
            with lock:
                return fn(*args)

        return call

    class Operations(mfusepy.Operations):  # mfusepy is untyped: its base is Any
        use_ns = True

        @locked
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            state.check_power()
            node = state.node(path, fh)
            size = len(node.data)
            return {
                "st_mode": node.mode,
                "st_nlink": 2 if node.is_dir else 1,
                "st_size": size,
                "st_blocks": (size + 511) // 512,
                "st_blksize": PAGE,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_mtime": node.mtime_ns,
                "st_ctime": node.mtime_ns,
                "st_atime": node.mtime_ns,
            }

        @locked
        def readdir(self, path: str, fh: int) -> list[str]:
            state.check_power()
            return [".", "..", *state.lookup(path).entries]

        @locked
        def mkdir(self, path: str, mode: int) -> int:
            state.mutated(path)
            parent, name = state.parent_of(path)
            if name in parent.entries:
                raise OSError(errno.EEXIST, path)
            parent.entries[name] = Node(stat.S_IFDIR | (mode & 0o7777))
            return 0

        @locked
        def create(self, path: str, mode: int, fi: Any = None) -> int:
            state.mutated(path)
            parent, name = state.parent_of(path)
            node = parent.entries.get(name)
            if node is None:
                node = Node(stat.S_IFREG | (mode & 0o7777))
                parent.entries[name] = node
            return state.add_handle(node)

        @locked
        def open(self, path: str, flags: int) -> int:
            state.check_power()
            node = state.lookup(path)
            if flags & os.O_TRUNC and node.data:
                state.mutated(path)
                node.data = bytearray()
                node.pending.append(("t", 0, b""))
            return state.add_handle(node)

        @locked
        def release(self, path: str, fh: int) -> int:
            state.handles.pop(fh, None)
            return 0

        @locked
        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            state.check_power()
            state.check_fault(path)
            return bytes(state.node(path, fh).data[offset : offset + size])

        @locked
        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            state.mutated(path)
            node = state.node(path, fh)
            _write_into(node.data, offset, data)
            node.pending.append(("w", offset, bytes(data)))
            node.mtime_ns = time.time_ns()
            return len(data)

        @locked
        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            state.mutated(path)
            node = state.node(path, fh)
            _truncate(node.data, length)
            node.pending.append(("t", length, b""))
            node.mtime_ns = time.time_ns()
            return 0

        @locked
        def fsync(self, path: str, datasync: int, fh: int) -> int:
            state.mutated(path)
            state.sync_file(state.node(path, fh))
            return 0

        @locked
        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            state.mutated(path)
            state.sync_file(state.lookup(path))
            return 0

        @locked
        def unlink(self, path: str) -> int:
            state.mutated(path)
            parent, name = state.parent_of(path)
            if name not in parent.entries:
                raise OSError(errno.ENOENT, path)
            del parent.entries[name]
            return 0

        @locked
        def rmdir(self, path: str) -> int:
            state.mutated(path)
            parent, name = state.parent_of(path)
            node = parent.entries.get(name)
            if node is None:
                raise OSError(errno.ENOENT, path)
            if node.entries:
                raise OSError(errno.ENOTEMPTY, path)
            del parent.entries[name]
            return 0

        @locked
        def rename(self, old: str, new: str) -> int:
            state.mutated(old)
            old_parent, old_name = state.parent_of(old)
            new_parent, new_name = state.parent_of(new)
            node = old_parent.entries.get(old_name)
            if node is None:
                raise OSError(errno.ENOENT, old)
            del old_parent.entries[old_name]
            new_parent.entries[new_name] = node
            return 0

        @locked
        def chmod(self, path: str, mode: int) -> int:
            state.mutated(path)
            node = state.lookup(path)
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            return 0

        @locked
        def chown(self, path: str, uid: int, gid: int) -> int:
            state.check_power()
            return 0

        @locked
        def utimens(self, path: str, times: Any = None) -> int:
            state.mutated(path)
            node = state.lookup(path)
            node.mtime_ns = times[1] if times else time.time_ns()
            return 0

        @locked
        def statfs(self, path: str) -> dict[str, int]:
            state.check_power()
            blocks = capacity // PAGE
            free = max(blocks - state.used_bytes() // PAGE, 0)
            return {
                "f_bsize": PAGE,
                "f_frsize": PAGE,
                "f_blocks": blocks,
                "f_bfree": free,
                "f_bavail": free,
                "f_namemax": 255,
            }

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        with lock:
            command = request["cmd"]
            if command == "arm":
                state.cut_after = int(request["after"])
                state.cut_seed = int(request["seed"])
                state.cut_keep = float(request["keep"])
            elif command == "cut":
                state.cut(int(request["seed"]), float(request["keep"]))
            elif command == "on":
                state.powered = True
            elif command == "disarm":
                state.cut_after = None
            elif command == "fault":
                state.fault_prefix = str(request["prefix"])
                state.fault_errno = int(request["errno"])
                state.fault_after = int(request["after"])
            elif command == "clear":
                state.fault_prefix = None
            elif command == "images":
                state.images_dir = Path(request["dir"])
                state.image_seed = int(request["seed"])
                state.image_keep = float(request["keep"])
                state.image_at = {state.mutations + int(o) for o in request["offsets"]}
            elif command == "sync_all":
                state.sync_all()
            return {
                "powered": state.powered,
                "armed": state.cut_after,
                "mutations": state.mutations,
                "cuts": state.cuts,
                "faults_hit": state.faults_hit,
                "images": state.images,
            }

    def control_loop(server: socket.socket) -> None:
        while True:
            connection, _ = server.accept()
            with connection, connection.makefile("rwb") as stream:
                for line in stream:
                    try:
                        reply = answer(json.loads(line))
                    except (KeyError, ValueError, TypeError) as exc:
                        reply = {"error": str(exc)}
                    stream.write(json.dumps(reply).encode() + b"\n")
                    stream.flush()

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen()
    threading.Thread(target=control_loop, args=(server,), daemon=True).start()
    mfusepy.FUSE(
        Operations(),
        mountpoint,
        foreground=True,
        nothreads=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


class PowerFS:
    """A mounted power-loss file system, run by its own process (see the module docstring)."""

    def __init__(self, mountpoint: Path, control: Path, process: subprocess.Popen[bytes]) -> None:
        self.mountpoint = mountpoint
        self.control = control
        self.process = process

    @classmethod
    @contextlib.contextmanager
    def mounted(cls, mountpoint: Path, *, model: str, capacity: int = 1 << 30) -> Iterator[PowerFS]:
        """Mount one at `mountpoint` (created) for the duration; unmounted and stopped after."""
        from tests.support.waiting import wait_until

        mountpoint.mkdir(parents=True, exist_ok=True)
        control = mountpoint.parent / f".{mountpoint.name}.control"
        repo = Path(__file__).resolve().parents[2]
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.powerfs", str(mountpoint), str(control),
             "--model", model, "--capacity", str(capacity)],
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )  # fmt: skip
        fs = cls(mountpoint, control, process)
        try:
            wait_until(
                fs._is_mounted, timeout=20, what=f"the power-loss file system at {mountpoint}"
            )
            yield fs
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            control.unlink(missing_ok=True)

    def _is_mounted(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the power-loss file system exited with {self.process.returncode}")
        return os.path.ismount(self.mountpoint) and self.control.exists()

    def request(self, cmd: str, **fields: object) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.control))
            sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            reply = json.loads(sock.makefile("rb").readline())
        if "error" in reply:
            raise RuntimeError(f"powerfs {cmd}: {reply['error']}")
        return dict(reply)

    def sync_all(self) -> None:
        """Make everything written so far durable."""
        self.request("sync_all")

    def arm(self, after: int, *, seed: int, keep: float) -> None:
        """Cut the power after `after` more mutating operations."""
        self.request("arm", after=after, seed=seed, keep=keep)

    def cut(self, *, seed: int, keep: float) -> None:
        """Cut the power now."""
        self.request("cut", seed=seed, keep=keep)

    def images_at(self, offsets: list[int], directory: Path, *, seed: int, keep: float) -> int:
        """Write a crash image (`PowerLossState.crash_image`) into `directory` before each of
        the mutating operations `offsets` from now (1: the next one), named by the count of
        mutating operations before it, instead of any still armed. Returns that count now: an
        operation that completed before this call is below it."""
        reply = self.request("images", offsets=offsets, dir=str(directory), seed=seed, keep=keep)
        return int(reply["mutations"])

    def fail(self, prefix: str, error: int, *, after: int) -> None:
        """Fail every operation on paths under `prefix` (from the mount's root, `/targets/d0.img`)
        with `error` once `after` more of them have passed, until `clear()`."""
        self.request("fault", prefix=prefix, errno=error, after=after)

    def clear(self) -> None:
        """The injected fault is gone."""
        self.request("clear")

    def power_on(self) -> None:
        """Power back: the files are what the cut kept."""
        self.request("on")

    def status(self) -> dict[str, Any]:
        return self.request("status")

    @property
    def powered(self) -> bool:
        return bool(self.status()["powered"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint")
    parser.add_argument("control")
    parser.add_argument("--model", choices=MODELS, default="strict")
    parser.add_argument("--capacity", type=int, default=1 << 30)
    args = parser.parse_args()
    serve(args.mountpoint, args.control, args.model, args.capacity)


if __name__ == "__main__":
    main()
