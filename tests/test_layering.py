"""The import rules of the layout (docs/design.md "Layout"): data flows one way, no room reaches
back up, and each package's docstring says what it owns and may import.

A module belongs to the deepest room listed in ROOMS that contains it; it may import its own room
and the rooms ALLOWED names for it (a room allowed is allowed with everything below it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

AGENT_ROOTS = {
    "agent.config",
    "agent.units",
    "agent.errors",
    "agent.metrics",
    "agent.certs",
    "agent.version",
    "agent.log_fields",
    "agent.enrollment",
}
LOWER = {"protocol", "blockio"}
# blockio's shared roots: every room of blockio may import them.
BLOCKIO_ROOTS = {"blockio.errors", "blockio.durable"}

ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "blockio": {"blockio"},  # the root modules (batch_writer) join the rooms below
    "blockio.disks": BLOCKIO_ROOTS,
    "blockio.journal": BLOCKIO_ROOTS | {"blockio.disks"},
    "blockio.scan": BLOCKIO_ROOTS,
    "agent": AGENT_ROOTS | LOWER,  # the shared roots, and __main__ (which reaches commands)
    "agent.sender": {"agent.errors", "agent.units", "protocol", "blockio.scan"},
    "agent.replication": AGENT_ROOTS | LOWER,
    "agent.recovery": AGENT_ROOTS | LOWER | {"agent.replication"},
    "agent.retention": AGENT_ROOTS | LOWER | {"agent.replication", "agent.recovery"},
    "agent.reports": AGENT_ROOTS | LOWER | {"agent.replication", "agent.recovery"},
    "agent.server": AGENT_ROOTS
    | LOWER
    | {"agent.replication", "agent.recovery", "agent.retention"},
    "agent.commands": {"agent", "protocol", "blockio"},
}
ROOMS = sorted(ALLOWED, key=len, reverse=True)
FIRST_PARTY = ("agent", "blockio", "protocol")
# Modules that only one room may import (the third-party side of a boundary).
ONLY_IN = {"aiohttp": ("agent.server",)}
EXCEPTIONS = {"agent.__main__": {"agent.commands"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    return next(room for room in ROOMS if module == room or module.startswith(room + "."))


def inside(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from agent.server import keys` imports agent.server.keys
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules() -> list[Path]:
    return sorted(p for package in FIRST_PARTY for p in (REPO / package).rglob("*.py"))


def allowed(module: str, target: str) -> bool:
    room = room_of(module)
    if inside(target, room) and not (room == "agent" and target not in AGENT_ROOTS):
        return True
    grants = ALLOWED[room] | EXCEPTIONS.get(module, set())
    return any(inside(target, grant) for grant in grants)


def first_party_violations(path: Path) -> list[str]:
    module = module_name(path)
    bad = []
    for target in sorted(imported_modules(path)):
        if target.split(".")[0] not in FIRST_PARTY or target in FIRST_PARTY:
            continue
        known = any(inside(target, room) for room in ALLOWED) or target in AGENT_ROOTS
        if known and not allowed(module, target):
            bad.append(target)
    return bad


@pytest.mark.parametrize("package", FIRST_PARTY)
def test_every_module_imports_only_what_its_room_allows(package: str) -> None:
    offenders = {
        module_name(path): bad
        for path in modules()
        if path.relative_to(REPO).parts[0] == package
        if (bad := first_party_violations(path))
    }
    assert offenders == {}


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_a_library_is_imported_only_in_its_room(library: str) -> None:
    offenders = sorted(
        module_name(path)
        for path in modules()
        if any(inside(name, library) for name in imported_modules(path))
        if not any(inside(module_name(path), room) for room in ONLY_IN[library])
    )
    assert offenders == []


def test_every_package_says_what_it_owns_and_may_import() -> None:
    silent = sorted(
        module_name(init)
        for init in modules()
        if init.name == "__init__.py"
        if "may import" not in (ast.get_docstring(ast.parse(init.read_text())) or "").lower()
    )
    assert silent == []


def test_the_rules_reject_a_reach_back_up() -> None:
    assert not allowed("agent.replication.replica", "agent.server.keys")
    assert not allowed("agent.sender.push", "blockio.journal.records")
    assert not allowed("blockio.disks.target", "blockio.journal.records")
    assert not allowed("protocol.encoder", "blockio.disks.target")
    assert not allowed("agent.config", "agent.replication.state")
    assert allowed("agent.recovery.restore", "agent.replication.state")
    assert allowed("agent.commands.serve", "agent.server.daemon")
    assert allowed("blockio.disks.target", "blockio.durable")
