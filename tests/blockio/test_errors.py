"""blockio's errors: one base for all of them, and names found nowhere else in the code base."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import blockio
from blockio.durable import DirectoryNotSynced
from blockio.errors import BlockIOError

REPO = Path(__file__).resolve().parents[2]


def _blockio_errors() -> dict[str, type[BaseException]]:
    errors: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(blockio.__path__, "blockio."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                errors[f"{info.name}.{name}"] = value
    return errors


def test_every_error_blockio_defines_derives_from_blockioerror() -> None:
    errors = _blockio_errors()
    assert "blockio.disks.target.TargetError" in errors
    assert sorted(name for name, cls in errors.items() if not issubclass(cls, BlockIOError)) == []


def test_a_directory_not_synced_is_caught_as_an_oserror_too() -> None:
    assert issubclass(DirectoryNotSynced, OSError)


def test_no_class_of_blockio_shares_its_name_with_another_class_of_the_code_base() -> None:
    places: dict[str, list[str]] = {}
    for package in ("agent", "blockio", "protocol", "scripts"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    places.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    clashes = {
        name: where
        for name, where in places.items()
        if len(where) > 1 and any(place.startswith("blockio/") for place in where)
    }
    assert clashes == {}
