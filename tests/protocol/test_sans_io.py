"""protocol/ is sans-I/O: bytes and events only, no sockets, no event loop, no files.

protocol/client.py is the one exception: it is the I/O adapter for senders.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "protocol"
IO_ADAPTERS = {PROTOCOL / "client.py"}

# Modules whose import means a protocol module talks to the outside world.
# importlib/__import__ would let a module reach them without naming them in an import.
FORBIDDEN_MODULES = frozenset(
    {
        "aiohttp",
        "asyncio",
        "importlib",
        "io",
        "os",
        "pathlib",
        "selectors",
        "shutil",
        "socket",
        "ssl",
        "subprocess",
        "tempfile",
    }
)
FORBIDDEN_CALLS = frozenset({"open", "__import__"})


def io_uses(source: str) -> list[str]:
    """Each forbidden import or call in `source`, as 'line N: what'."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_MODULES:
                found.append((node.lineno, f"import {name}"))
        if isinstance(node, ast.Call):
            func = node.func
            called = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "builtins"
                else None
            )
            if called in FORBIDDEN_CALLS:
                found.append((node.lineno, f"{called}()"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def sans_io_modules() -> list[Path]:
    return sorted(p for p in PROTOCOL.rglob("*.py") if p not in IO_ADAPTERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_sans_io_modules_include_the_codec_and_its_vocabulary() -> None:
    names = {module_name(p) for p in sans_io_modules()}
    expected = {"protocol", "protocol.wire", "protocol.events", "protocol.errors"}
    assert expected | {"protocol.decoder", "protocol.encoder"} <= names
    assert "protocol.client" not in names


@pytest.mark.parametrize("path", sans_io_modules(), ids=module_name)
def test_protocol_module_imports_no_io(path: Path) -> None:
    assert io_uses(path.read_text(encoding="utf-8")) == [], path


def test_io_check_finds_imports_and_open_calls() -> None:
    source = (
        "import os.path\n"
        "from asyncio import sleep\n"
        "import socket as s\n"
        "from . import wire\n"
        "import json\n"
        "with open('x') as f: pass\n"
        "builtins.open('y')\n"
        "__import__('ssl')\n"
    )
    assert io_uses(source) == [
        "line 1: import os.path",
        "line 2: import asyncio",
        "line 3: import socket",
        "line 6: open()",
        "line 7: open()",
        "line 8: __import__()",
    ]


def test_importing_the_protocol_pulls_in_no_event_loop_or_network() -> None:
    # Run in a fresh interpreter: this test process has imported everything already.
    names = [module_name(p) for p in sans_io_modules()]
    probe = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    added = json.loads(result.stdout)
    assert "protocol.decoder" in added
    pulled = {name.split(".")[0] for name in added} & {"asyncio", "socket", "ssl", "aiohttp"}
    assert pulled == set()
