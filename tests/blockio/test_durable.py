"""blockio.durable: a file written atomically is whole or absent, has the mode asked for, and
leaves nothing behind when the write fails."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blockio import durable
from blockio.durable import (
    DirectoryNotSynced,
    fsync_directory,
    replace_durably,
    write_atomically,
)
from blockio.errors import BlockIOError


def _failing_after(calls: int, real: Callable[..., Any], exc: Exception) -> Callable[..., Any]:
    """`real`, except that every call after the first `calls` raises `exc`."""
    seen = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        seen += 1
        if seen > calls:
            raise exc
        return real(*args, **kwargs)

    return call


def test_a_new_file_holds_exactly_the_data(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomically(path, b'{"a": 1}')
    assert path.read_bytes() == b'{"a": 1}'
    assert os.listdir(tmp_path) == ["state.json"]


def test_an_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old and longer than the new one")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("durable_write", [True, False])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable_write: bool
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    monkeypatch.setattr(os, "write", _failing_after(0, os.write, OSError(28, "No space left")))
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new" * 1000, durable=durable_write)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_sync_leaves_no_file_where_there_was_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", _failing_after(0, os.fsync, OSError(5, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        write_atomically(tmp_path / "key.pem", b"secret")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_the_file_has_the_mode_asked_for_whatever_the_umask(
    tmp_path: Path, umask: int, mode: int
) -> None:
    path = tmp_path / "file"
    previous = os.umask(umask)
    try:
        write_atomically(path, b"data", mode=mode)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_the_mode_defaults_to_owner_only(tmp_path: Path) -> None:
    write_atomically(tmp_path / "file", b"data")
    assert (tmp_path / "file").stat().st_mode & 0o777 == 0o600


def test_a_planted_temporary_name_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    monkeypatch.setattr(secrets, "token_hex", lambda n: "fixed")
    (tmp_path / ".file.fixed.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomically(tmp_path / "file", b"data")
    assert victim.read_bytes() == b"untouched"
    assert not (tmp_path / "file").exists()


def test_a_durable_write_syncs_the_file_and_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomically(tmp_path / "file", b"data")
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".file.")
    assert synced[1] == str(tmp_path)


def test_a_cache_write_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", _failing_after(0, os.fsync, AssertionError("synced")))
    write_atomically(tmp_path / "index.json", b"{}", durable=False)
    assert (tmp_path / "index.json").read_bytes() == b"{}"


def test_a_failed_directory_sync_says_the_file_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file"
    monkeypatch.setattr(os, "fsync", _failing_after(1, os.fsync, OSError(5, "I/O error")))
    with pytest.raises(DirectoryNotSynced) as caught:
        write_atomically(path, b"data")
    assert path.read_bytes() == b"data"
    assert isinstance(caught.value, OSError) and isinstance(caught.value, BlockIOError)
    assert caught.value.strerror == "I/O error"
    assert caught.value.filename == str(tmp_path)


def test_replace_durably_renames_and_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "disk.img.partial").write_bytes(b"image")
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_directory", synced.append)
    replace_durably(tmp_path / "disk.img.partial", tmp_path / "disk.img")
    assert os.listdir(tmp_path) == ["disk.img"]
    assert synced == [tmp_path]


def test_the_directory_descriptor_is_not_inherited_by_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags: list[int] = []
    real_open = os.open

    def spy(path: Path, flag: int, *args: int) -> int:
        flags.append(flag)
        return real_open(path, flag, *args)

    monkeypatch.setattr(os, "open", spy)
    fsync_directory(tmp_path)
    assert flags and all(flag & os.O_CLOEXEC for flag in flags)


def test_syncing_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")
