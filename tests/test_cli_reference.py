"""The man page and the bash completion are generated from the argparse definitions
(scripts/cli_reference.py) and the committed files are current; the completion completes in a
real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cli_reference.py"
COMPLETION = REPO / "docs" / "mtagent.bash-completion"
MAN_PAGE = REPO / "docs" / "mtagent.1"


def reference(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
    )


def test_the_committed_man_page_and_completion_are_current() -> None:
    result = reference(SCRIPT, "--check")
    assert result.returncode == 0, result.stderr


def test_a_stale_file_fails_the_check_by_name_until_regenerated(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for part in ("agent", "blockio", "protocol", "scripts", "docs"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    man_page = tree / "docs" / "mtagent.1"
    man_page.write_text(man_page.read_text().replace("run the agent daemon", "run it"))
    script = tree / "scripts" / "cli_reference.py"

    stale = reference(script, "--check")
    assert stale.returncode == 1
    assert stale.stderr == (
        "cli_reference.py: docs/mtagent.1 is stale: run scripts/cli_reference.py\n"
    )
    assert "run it" in man_page.read_text()  # --check writes nothing

    written = reference(script)
    assert written.returncode == 0 and written.stdout == "wrote docs/mtagent.1\n"
    assert man_page.read_bytes() == MAN_PAGE.read_bytes()
    assert reference(script, "--check").returncode == 0


def test_the_man_page_documents_every_command_and_option() -> None:
    page = MAN_PAGE.read_text()
    assert page.startswith('.TH MTAGENT "1" ')
    for command in ("serve", "certs init", "certs issue", "push", "disks", "status", "points"):
        assert f"'mtagent {command}'" in page
    for option in ("log\\-level", "tag\\-group", "in\\-place", "json"):
        assert f"\\-\\-{option}" in page
    assert ".SH EXIT STATUS" in page


def complete(line: str) -> list[str]:
    """What bash offers for `line` (the cursor at its end) with the committed completion."""
    words = line.split(" ")
    script = "\n".join(
        [
            f"source {COMPLETION}",
            f"COMP_WORDS=({' '.join(repr(word) for word in words)})",
            f"COMP_CWORD={len(words) - 1}",
            f"COMP_LINE={line!r}",
            f"COMP_POINT={len(line)}",
            f"_shtab_mtagent mtagent {words[-1]!r} {words[-2]!r}",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return sorted(result.stdout.split())


@pytest.mark.parametrize(
    ("line", "offered"),
    [
        ("mtagent pu", ["push"]),
        ("mtagent serve --log-level ", ["debug", "info", "warning"]),
        ("mtagent push --mode ", ["delta", "full", "resync", "verify"]),
        ("mtagent recover --in", ["--in-place"]),
    ],
)
def test_bash_completes_commands_options_and_choices(line: str, offered: list[str]) -> None:
    assert complete(line) == offered


def test_bash_completes_a_path_option_with_file_names(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("")
    (tmp_path / "agent.old").mkdir()
    assert complete(f"mtagent status --config {tmp_path}/agent.t") == [f"{tmp_path}/agent.toml"]
