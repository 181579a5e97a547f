#!/usr/bin/env python3
"""The man page and the bash completion of `mtagent`, generated from its argparse definitions
(`agent.commands.cli.build_parser`), so that neither can drift from the options.

    scripts/cli_reference.py            # (re)write docs/mtagent.1 and docs/mtagent.bash-completion
    scripts/cli_reference.py --check    # exit 1, naming them, when the committed files are stale

The completion comes from shtab, the man page from argparse-manpage (both in the `[test]` extra,
neither needed at run time: the files are committed and the bootstrap installs them). Options
that take a path complete file names, or directory names for a directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

# Run from a checkout: the parser is the one in this tree.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import shtab  # noqa: E402
from argparse_manpage.manpage import Manpage  # type: ignore[import-untyped]  # noqa: E402

from agent.commands.cli import build_parser  # noqa: E402

MAN_PAGE = REPO / "docs" / "mtagent.1"
COMPLETION = REPO / "docs" / "mtagent.bash-completion"
# Options naming a directory, not a file (by their dest).
DIRECTORY_OPTIONS = frozenset({"dir", "output"})

# What the options do not say: exit codes, files, where the rest is documented (roff).
MAN_TAIL = r"""
.SH EXIT STATUS
.TP
.B 0
done; for \fBstatus\fR: the agent serves and every disk is \fBok\fR; for
\fBpush \-\-mode verify\fR: identical
.TP
.B 1
failed, with one line on stderr saying why; for \fBpush \-\-mode verify\fR: the images differ
.TP
.B 2
usage error
.TP
.B 3
\fBstatus\fR: the agent is not serving; \fBpush \-\-mode verify\fR: could not compare
.TP
.B 4
\fBstatus\fR: the agent serves, but a disk is not \fBok\fR
.SH FILES
.TP
.I /etc/mtagent/agent.toml
the configuration (\fB\-\-config\fR)
.TP
.I /var/lib/mtagent
the state directory: \fIstate.db\fR, \fIagent.lock\fR
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1).
The documents shipped with mtagent: \fIdocs/cli.md\fR (exit codes, \fB\-\-json\fR documents,
what the agent logs), \fIdocs/protocol.md\fR (the wire contract), \fIREADME.md\fR (the
configuration reference).
"""


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every action of `parser` and of its subcommands' parsers, at any depth."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                yield from _actions(subparser)


def reference_parser() -> argparse.ArgumentParser:
    """The full parser, with what each path option completes to."""
    parser = build_parser()
    for action in _actions(parser):
        if action.type is Path or action.dest == "config":
            directory = action.dest in DIRECTORY_OPTIONS
            action.complete = shtab.DIRECTORY if directory else shtab.FILE  # type: ignore[attr-defined]
    return parser


def bash_completion(parser: argparse.ArgumentParser) -> str:
    return str(shtab.complete(parser, shell="bash"))


def man_page(parser: argparse.ArgumentParser) -> str:
    from agent.version import agent_version

    page = Manpage(
        parser,
        _data={
            "project_name": "mtagent",
            # A fixed date would lie and today's would make the page stale every day.
            "date": f"mtagent {agent_version()}",
            "manual_title": "mtagent manual",
            "manual_section": 1,
            "description": "master target for block-level disaster recovery",
        },
    )
    return str(page).rstrip("\n") + "\n" + MAN_TAIL.lstrip("\n")


def expected_files() -> dict[Path, str]:
    parser = reference_parser()
    return {MAN_PAGE: man_page(parser), COMPLETION: bash_completion(parser)}


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cli.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = cli.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(
            f"cli_reference.py: {path.relative_to(REPO)} is stale: run scripts/cli_reference.py",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
