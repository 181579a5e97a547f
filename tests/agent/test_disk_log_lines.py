"""Every message the daemon logs about one disk carries the DISK field, so that
`journalctl -u mtagent DISK=vm1-disk0` finds all of them (docs/cli.md): read from the code, as
tests/test_layering.py reads imports."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# The sender is the command line's, not the daemon's: its lines go to a terminal.
NOT_THE_DAEMON = ("agent/sender/", "agent/commands/")


def disk_messages(path: Path) -> list[tuple[int, ast.Call]]:
    """The logging calls in `path` whose message starts with `disk %s`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("disk %s")
        ):
            found.append((node.lineno, node))
    return found


def names_the_disk(call: ast.Call) -> bool:
    """`extra=log_fields(disk=..., ...)`, or `extra=` a value built elsewhere (a variable or a
    helper's call), which the tests of that message check."""
    extra = next((k.value for k in call.keywords if k.arg == "extra"), None)
    if extra is None:
        return False
    if isinstance(extra, ast.Call) and getattr(extra.func, "id", None) == "log_fields":
        return any(k.arg == "disk" for k in extra.keywords)
    return True


def daemon_modules() -> list[Path]:
    return sorted(
        path
        for path in (REPO / "agent").rglob("*.py")
        if not str(path.relative_to(REPO)).startswith(NOT_THE_DAEMON)
    )


def test_every_message_about_a_disk_carries_the_disk_field() -> None:
    unnamed = [
        f"{path.relative_to(REPO)}:{line}"
        for path in daemon_modules()
        for line, call in disk_messages(path)
        if not names_the_disk(call)
    ]
    assert unnamed == []


def test_the_rule_finds_the_messages_it_is_about() -> None:
    replica = REPO / "agent" / "replication" / "replica.py"
    assert len(disk_messages(replica)) >= 5
    bare = ast.parse('log.info("disk %s: gone", disk)').body[0]
    assert isinstance(bare, ast.Expr) and isinstance(bare.value, ast.Call)
    assert not names_the_disk(bare.value)
